"""/api/v1/devices: registration, heartbeats and online/offline status; devices
owned by their agents (agent token) and retired with DELETE."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from automl_server.db.engine import get_database
from automl_server.db.models import Device, utcnow
from tests.datasets import archives
from tests.server.test_api_datasets import upload

AGENT = "Automl-Agent-Token"
PHONE = {"name": "pixel-7", "kind": "android", "description": "over adb",
         "runtimes": [{"name": "litert", "version": "2.3.0"}], "info": {"abi": "arm64-v8a"}, "agent_version": "0.1.0"}


def test_register_makes_device_online_with_its_queue(client):
    response = client.post("/api/v1/devices", json=PHONE)

    assert response.status_code == 201
    device = response.json
    assert device["status"] == "online" and device["queue"] == "device.pixel-7"
    assert device["runtimes"] == [{"name": "litert", "version": "2.3.0"}]
    assert device.pop("agent_token").startswith("agt_") and device.pop("latency_targets_reused") == 0
    assert client.get("/api/v1/devices/pixel-7").json == device
    assert "agent_token" not in client.get("/api/v1/devices").json["devices"][0]


def test_its_agent_re_registers_and_updates_runtimes_in_place(client):
    first = client.post("/api/v1/devices", json=PHONE).json

    again = client.post("/api/v1/devices", headers={AGENT: first["agent_token"]}, json={**PHONE, "runtimes": [
        {"name": "litert", "version": "2.4.0"}, {"name": "onnxruntime", "version": "1.31.1"}]})

    assert again.status_code == 200 and again.json["id"] == first["id"]
    assert again.json["agent_token"] is None  # issued once; the agent keeps the first
    assert [r["version"] for r in again.json["runtimes"]] == ["2.4.0", "1.31.1"]
    assert len(client.get("/api/v1/devices").json["devices"]) == 1


def test_device_goes_offline_after_missed_heartbeats_and_back_online(client, settings):
    token = client.post("/api/v1/devices", json=PHONE).json["agent_token"]
    stale = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 1)
    with get_database(settings.resolved_database_url).session() as session:
        session.execute(update(Device).where(Device.name == "pixel-7").values(last_heartbeat_at=stale))

    offline = client.get("/api/v1/devices/pixel-7").json
    beat = client.post("/api/v1/devices/pixel-7/heartbeat", headers={AGENT: token},
                       json={"info": {"temperature_c": 41.5}})

    assert offline["status"] == "offline"
    assert beat.status_code == 200 and beat.json["status"] == "online"
    assert beat.json["info"] == {"abi": "arm64-v8a", "temperature_c": 41.5}


def test_heartbeat_of_unknown_device_is_404(client):
    response = client.post("/api/v1/devices/ghost/heartbeat", json={})

    assert response.status_code == 404
    assert "ghost" in response.json["detail"]


def test_bad_kind_lists_accepted_kinds(client):
    response = client.post("/api/v1/devices", json={**PHONE, "kind": "toaster"})

    assert response.status_code == 422
    assert response.json["field"] == "kind"
    assert "'raspberry-pi'" in response.json["detail"]
    assert client.get("/api/v1/devices").json["devices"] == []


def test_device_without_runtime_is_refused(client):
    response = client.post("/api/v1/devices", json={**PHONE, "runtimes": []})

    assert response.status_code == 422
    assert response.json["field"] == "runtimes"


def test_device_list_pages_by_name(client):
    for name in ("c", "a", "b"):
        assert client.post("/api/v1/devices", json={**PHONE, "name": name}).status_code == 201

    first = client.get("/api/v1/devices", query_string={"page_size": 2}).json
    second = client.get("/api/v1/devices", query_string={"page_size": 2, "page_token": first["next_page_token"]}).json

    assert [d["name"] for d in first["devices"] + second["devices"]] == ["a", "b", "c"]
    assert second["next_page_token"] is None


# -- devices owned by their agents ---------------------------------------------
LOCAL = {"name": "local-cpu", "kind": "cpu", "runtimes": [{"name": "pytorch", "version": "2.9"},
                                                           {"name": "onnxruntime", "version": "1.23"}]}


@pytest.fixture
def pets(client, tmp_path):  # type: ignore[no-untyped-def]
    path = archives.good_zip(tmp_path, classes=("cat", "dog"), per_class=4, size=(8, 8))
    return upload(client, path, name="pets").json["name"]


def test_hijack_of_a_live_device_is_refused_and_the_device_keeps_working(client, pets):
    # The scenario: a live local-cpu, then one POST naming it with other runtimes.
    token = client.post("/api/v1/devices", json=LOCAL).json["agent_token"]
    assert client.post("/api/v1/devices/local-cpu/heartbeat", headers={AGENT: token}, json={}).status_code == 200

    hijack = client.post("/api/v1/devices", json={**LOCAL, "runtimes": [{"name": "litert"}]})
    forged = client.post("/api/v1/devices", headers={AGENT: "agt_guessed"}, json={**LOCAL, "kind": "gpu"})

    assert hijack.status_code == 409 and hijack.content_type == "application/problem+json"
    assert "is online" in hijack.json["detail"] and "runtimes (onnxruntime, pytorch -> litert)" in hijack.json["detail"]
    assert "DELETE /api/v1/devices/local-cpu" in hijack.json["detail"]
    assert forged.status_code == 409 and "kind (cpu -> gpu)" in forged.json["detail"]
    device = client.get("/api/v1/devices/local-cpu").json
    assert [r["name"] for r in device["runtimes"]] == ["onnxruntime", "pytorch"] and device["kind"] == "cpu"
    beat = client.post("/api/v1/devices/local-cpu/heartbeat", headers={AGENT: token}, json={})
    assert beat.status_code == 200 and beat.json["status"] == "online"
    job = client.post("/api/v1/jobs", json={"dataset": pets, "device": "local-cpu", "runtime": "onnxruntime",
                                            "latency_target_ms": 5, "space": "tiny", "stop_after": "validate"})
    assert job.status_code == 202, job.json


def test_heartbeat_needs_the_devices_agent_token(client):
    token = client.post("/api/v1/devices", json=PHONE).json["agent_token"]

    missing = client.post("/api/v1/devices/pixel-7/heartbeat", json={})
    wrong = client.post("/api/v1/devices/pixel-7/heartbeat", headers={AGENT: token + "x"}, json={})

    assert missing.status_code == 403 and "no agent token" in missing.json["detail"]
    assert wrong.status_code == 403 and "wrong agent token" in wrong.json["detail"]
    assert missing.json["field"] == AGENT


def test_an_offline_device_still_belongs_to_its_agent(client, settings):
    client.post("/api/v1/devices", json=PHONE)
    with get_database(settings.resolved_database_url).session() as session:
        session.execute(update(Device).values(last_heartbeat_at=utcnow() - timedelta(hours=1)))

    again = client.post("/api/v1/devices", json=PHONE)

    assert again.status_code == 409 and "is offline but still owned by its agent" in again.json["detail"]
    assert "would take it over" in again.json["detail"]


def test_device_registered_before_tokens_is_claimed_by_its_next_registration(client, settings):
    client.post("/api/v1/devices", json=PHONE)
    with get_database(settings.resolved_database_url).session() as session:
        session.execute(update(Device).values(agent_token_hash=None))  # as migrated from revision 0004

    refused = client.post("/api/v1/devices/pixel-7/heartbeat", json={})
    claimed = client.post("/api/v1/devices", json=PHONE)

    assert refused.status_code == 403 and "register it again" in refused.json["detail"]
    assert claimed.status_code == 200 and claimed.json["agent_token"].startswith("agt_")
    assert client.post("/api/v1/devices/pixel-7/heartbeat", headers={AGENT: claimed.json["agent_token"]},
                       json={}).status_code == 200


# -- retiring a device -----------------------------------------------------------
def test_retiring_a_device_with_queued_jobs_is_refused_unless_forced(queued_app, tmp_path):
    client = queued_app.test_client()
    upload(client, archives.good_zip(tmp_path, classes=("cat", "dog"), per_class=4, size=(8, 8)), name="pets")
    client.post("/api/v1/devices", json=PHONE)
    job_id = client.post("/api/v1/jobs", json={"dataset": "pets", "device": "pixel-7", "latency_target_ms": 5,
                                               "stop_after": "validate"}).json["id"]

    refused = client.delete("/api/v1/devices/pixel-7")
    still_there = client.get("/api/v1/devices/pixel-7")
    forced = client.delete("/api/v1/devices/pixel-7", query_string={"force": "true"})

    assert refused.status_code == 409 and refused.json["jobs"] == [job_id]
    assert job_id in refused.json["detail"] and "force=true" in refused.json["detail"]
    assert still_there.status_code == 200
    assert forced.status_code == 200 and forced.json["cancelled_jobs"] == [job_id]
    assert client.get("/api/v1/devices/pixel-7").status_code == 404
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "cancelled" and job["device_name"] == "pixel-7"  # the record stays


def test_retired_device_keeps_its_latency_tables_until_its_name_takes_them_back(client, settings):
    from automl_server.profiling import repository
    from latency_db import TargetSpec

    repo = repository(get_database(settings.resolved_database_url))
    client.post("/api/v1/devices", json=PHONE)
    repo.target(TargetSpec("pixel-7", "litert", "2.3.0"))

    retired = client.delete("/api/v1/devices/pixel-7").json
    other_phone = client.post("/api/v1/devices", json=PHONE).json  # a new phone under the old name
    tables_of_the_new_phone = repo.find_target("pixel-7")
    client.delete("/api/v1/devices/pixel-7")
    came_back = client.post("/api/v1/devices", json={**PHONE, "reuse_latency": True}).json

    assert retired["latency_archive"].startswith("pixel-7@retired-") and retired["latency_targets_kept"] == 1
    assert retired["cancelled_jobs"] == []
    assert other_phone["latency_targets_reused"] == 0 and tables_of_the_new_phone == []
    assert came_back["latency_targets_reused"] == 1
    assert [t.backend for t in repo.find_target("pixel-7")] == ["litert"]


def test_retiring_an_unknown_device_is_404(client):
    response = client.delete("/api/v1/devices/ghost")

    assert response.status_code == 404 and "ghost" in response.json["detail"]
