"""API tokens: required off loopback or when forced, never stored in clear."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from automl_server.app import create_app
from automl_server.auth import create_token
from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.models import ApiToken, utcnow
from tests.conftest import make_settings


def client_for(tmp_path, database_url, **overrides):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url, **overrides)
    return create_app(settings, celery=make_celery(settings, eager=True)).test_client(), settings


def new_token(settings, name="ci") -> str:  # type: ignore[no-untyped-def]
    with get_database(settings.resolved_database_url).session() as session:
        return create_token(session, name).secret


@pytest.mark.parametrize(("overrides", "required"), [
    ({}, False),                                   # default: local mode on 127.0.0.1
    ({"host": "0.0.0.0"}, True),                   # reachable from the network
    ({"host": "::1"}, False),
    ({"auth_mode": "always"}, True),
    ({"host": "0.0.0.0", "auth_mode": "never"}, False),
])
def test_token_required_unless_local(tmp_path, database_url, overrides, required):
    client, _ = client_for(tmp_path, database_url, **overrides)

    response = client.get("/api/v1/datasets")

    assert response.status_code == (401 if required else 200)


def test_missing_token_says_how_to_get_one(tmp_path, database_url):
    client, _ = client_for(tmp_path, database_url, auth_mode="always")

    response = client.get("/api/v1/jobs")

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "automl tokens create" in response.json["detail"]


def test_valid_token_is_accepted_and_stored_hashed(tmp_path, database_url):
    client, settings = client_for(tmp_path, database_url, auth_mode="always")
    secret = new_token(settings)

    response = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 200
    with get_database(settings.resolved_database_url).session() as session:
        row = session.scalar(select(ApiToken))
        assert row.token_hash != secret and secret not in row.token_hash
        assert row.last_used_at is not None


def test_wrong_and_revoked_tokens_are_refused(tmp_path, database_url):
    client, settings = client_for(tmp_path, database_url, auth_mode="always")
    secret = new_token(settings)
    with get_database(settings.resolved_database_url).session() as session:
        session.scalar(select(ApiToken)).revoked_at = utcnow()

    wrong = client.get("/api/v1/jobs", headers={"Authorization": "Bearer aml_nope"})
    revoked = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {secret}"})

    assert wrong.status_code == revoked.status_code == 401


def test_spec_docs_and_health_stay_open(tmp_path, database_url):
    client, _ = client_for(tmp_path, database_url, auth_mode="always")

    for path in ("/api/v1/openapi.json", "/api/v1/docs", "/api/v1/health"):
        assert client.get(path).status_code == 200, path


def test_scopes_limit_each_token_and_the_audit_log_records_it(tmp_path, database_url):
    client, settings = client_for(tmp_path, database_url, auth_mode="always")
    with get_database(settings.resolved_database_url).session() as session:
        reader, agent, admin = (create_token(session, name, scopes).secret for name, scopes in (
            ("dashboard", ["read"]), ("pi-agent", ["agent:pi"]), ("ops", ["admin"])))
        default = create_token(session, "pipeline")
    as_ = lambda secret: {"Authorization": f"Bearer {secret}"}  # noqa: E731
    pi = {"name": "pi", "kind": "raspberry-pi", "runtimes": [{"name": "onnxruntime"}]}

    read_ok = client.get("/api/v1/jobs", headers=as_(reader))
    submit_refused = client.post("/api/v1/jobs", headers=as_(reader), json={"dataset": "x"})
    registered = client.post("/api/v1/devices", headers=as_(agent), json=pi)
    other_device = client.post("/api/v1/devices", headers=as_(agent), json={**pi, "name": "other"})
    agent_reads = client.get("/api/v1/jobs", headers=as_(agent))
    hijack = client.post("/api/v1/devices", headers=as_(admin), json={**pi, "runtimes": [{"name": "litert"}]})
    retire_refused = client.delete("/api/v1/devices/pi", headers=as_(reader))
    audit_refused = client.get("/api/v1/audit", headers=as_(reader))
    retired = client.delete("/api/v1/devices/pi", headers=as_(admin))
    devices = client.get("/api/v1/audit?kind=device", headers=as_(admin)).json["events"]
    uses = client.get("/api/v1/audit?kind=token-use&page_size=3", headers=as_(admin)).json
    more = client.get(f"/api/v1/audit?kind=token-use&page_size=3&page_token={uses['next_page_token']}",
                      headers=as_(admin)).json

    assert default.scopes == ("read", "submit")
    assert read_ok.status_code == 200 and registered.status_code == 201
    assert submit_refused.status_code == 403 and submit_refused.mimetype == "application/problem+json"
    assert submit_refused.json["scope_needed"] == "submit" and submit_refused.json["token_scopes"] == ["read"]
    assert "'dashboard' has read" in submit_refused.json["detail"]
    assert "automl tokens create NAME --scope submit" in submit_refused.json["detail"]
    assert other_device.status_code == 403 and other_device.json["scope_needed"] == "agent:other"
    assert agent_reads.status_code == 403 and agent_reads.json["token_scopes"] == ["agent:pi"]
    assert hijack.status_code == 409  # admin may register any device, but not take one over without its agent token
    assert retire_refused.status_code == audit_refused.status_code == 403
    assert retire_refused.json["scope_needed"] == audit_refused.json["scope_needed"] == "admin"
    assert retired.status_code == 200
    # Device changes, newest first, with who made them.
    assert [(e["action"], e["subject"], e["token_name"]) for e in devices] == [
        ("retire", "pi", "ops"), ("register-refused", "pi", "ops"), ("register", "pi", "pi-agent")]
    assert "litert" in devices[1]["detail"] and devices[0]["status"] == 200 and devices[1]["status"] == 409
    # Token use: each request with a token, refused ones too; paged like the other lists.
    newest = uses["events"] + more["events"]
    assert [(e["method"], e["path"], e["status"]) for e in newest[:4]] == [
        ("GET", "/api/v1/audit", 200), ("DELETE", "/api/v1/devices/pi", 200), ("GET", "/api/v1/audit", 403),
        ("DELETE", "/api/v1/devices/pi", 403)]
    assert newest[1]["token_name"] == "ops" and newest[1]["token_prefix"] == admin[:10]
    assert newest[1]["address"] == "127.0.0.1" and len({e["id"] for e in newest}) == len(newest)


def test_unknown_scope_is_refused_with_the_accepted_ones(tmp_path, database_url):
    _, settings = client_for(tmp_path, database_url, auth_mode="always")
    with get_database(settings.resolved_database_url).session() as session:
        with pytest.raises(ValueError, match="accepted: read, submit, admin or agent:DEVICE"):
            create_token(session, "x", ["write"])


def test_repeated_reads_are_one_row_with_their_count_and_writes_and_refusals_each_their_own(tmp_path, database_url):
    client, settings = client_for(tmp_path, database_url, auth_mode="always")
    with get_database(settings.resolved_database_url).session() as session:
        admin = create_token(session, "ops", ["admin"]).secret
        reader = create_token(session, "dashboard", ["read"]).secret
    as_ = lambda secret: {"Authorization": f"Bearer {secret}"}  # noqa: E731

    for _ in range(4):
        assert client.get("/api/v1/jobs?page_size=5", headers=as_(reader)).status_code == 200
    assert client.delete("/api/v1/devices/none", headers=as_(reader)).status_code == 403
    assert client.delete("/api/v1/devices/none", headers=as_(reader)).status_code == 403
    events = client.get("/api/v1/audit?kind=token-use", headers=as_(admin)).json["events"]

    rows = [(e["token_name"], e["action"], e["method"], e["path"], e["status"]) for e in events]
    assert rows == [
        ("dashboard", "request", "DELETE", "/api/v1/devices/none", 403),
        ("dashboard", "request", "DELETE", "/api/v1/devices/none", 403),
        # The 3 after the first: written when the log was read, dated at the last of them.
        ("dashboard", "requests", "GET", "/api/v1/jobs", 200),
        ("dashboard", "request", "GET", "/api/v1/jobs", 200),  # the first, at once
    ]
    assert events[2]["detail"].startswith("3 more identical requests from ")
    assert events[2]["token_prefix"] == reader[:10] and events[2]["address"] == "127.0.0.1"


def test_last_use_is_kept_to_within_a_minute_and_a_revoked_token_stops_at_once(tmp_path, database_url):
    from datetime import timedelta

    client, settings = client_for(tmp_path, database_url, auth_mode="always")
    secret = new_token(settings)
    headers = {"Authorization": f"Bearer {secret}"}
    db = get_database(settings.resolved_database_url)

    def set_last_used(ago_s: float):  # type: ignore[no-untyped-def]
        with db.session() as session:
            when = utcnow() - timedelta(seconds=ago_s)
            session.scalar(select(ApiToken)).last_used_at = when
            return when

    recent = set_last_used(30)
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200
    with db.session() as session:
        assert session.scalar(select(ApiToken)).last_used_at == recent  # within the minute: not rewritten
    stale = set_last_used(120)
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200
    with db.session() as session:
        assert session.scalar(select(ApiToken)).last_used_at > stale + timedelta(seconds=100)
        session.scalar(select(ApiToken)).revoked_at = utcnow()
    assert client.get("/api/v1/jobs", headers=headers).status_code == 401


def test_listing_jobs_with_a_token_does_not_wait_for_a_writer(tmp_path, database_url):
    # SQLite: reads begin without a lock (Database.read_session), so a long write elsewhere
    # (a worker's transaction) does not hold them up to the 30 s busy timeout.
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's locking; PostgreSQL readers never wait for writers")
    import sqlite3

    client, settings = client_for(tmp_path, database_url, auth_mode="always")
    secret = new_token(settings)
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200  # last use written now
    writer = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the write lock, held until the request has been answered
        response = client.get("/api/v1/jobs", headers=headers)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    assert response.status_code == 200 and response.json["jobs"] == []
