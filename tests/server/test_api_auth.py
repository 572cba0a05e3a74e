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
