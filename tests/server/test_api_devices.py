"""/api/v1/devices: registration, heartbeats and online/offline status."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from automl_server.db.engine import get_database
from automl_server.db.models import Device, utcnow

PHONE = {"name": "pixel-7", "kind": "android", "description": "over adb",
         "runtimes": [{"name": "litert", "version": "2.3.0"}], "info": {"abi": "arm64-v8a"}, "agent_version": "0.1.0"}


def test_register_makes_device_online_with_its_queue(client):
    response = client.post("/api/v1/devices", json=PHONE)

    assert response.status_code == 201
    device = response.json
    assert device["status"] == "online" and device["queue"] == "device.pixel-7"
    assert device["runtimes"] == [{"name": "litert", "version": "2.3.0"}]
    assert client.get("/api/v1/devices/pixel-7").json == device


def test_re_register_updates_runtimes_in_place(client):
    first = client.post("/api/v1/devices", json=PHONE).json

    again = client.post("/api/v1/devices", json={**PHONE, "runtimes": [
        {"name": "litert", "version": "2.4.0"}, {"name": "onnxruntime", "version": "1.31.1"}]})

    assert again.status_code == 200 and again.json["id"] == first["id"]
    assert [r["version"] for r in again.json["runtimes"]] == ["2.4.0", "1.31.1"]
    assert len(client.get("/api/v1/devices").json["devices"]) == 1


def test_device_goes_offline_after_missed_heartbeats_and_back_online(client, settings):
    client.post("/api/v1/devices", json=PHONE)
    stale = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 1)
    with get_database(settings.resolved_database_url).session() as session:
        session.execute(update(Device).where(Device.name == "pixel-7").values(last_heartbeat_at=stale))

    offline = client.get("/api/v1/devices/pixel-7").json
    beat = client.post("/api/v1/devices/pixel-7/heartbeat", json={"info": {"temperature_c": 41.5}})

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
        client.post("/api/v1/devices", json={**PHONE, "name": name})

    first = client.get("/api/v1/devices", query_string={"page_size": 2}).json
    second = client.get("/api/v1/devices", query_string={"page_size": 2, "page_token": first["next_page_token"]}).json

    assert [d["name"] for d in first["devices"] + second["devices"]] == ["a", "b", "c"]
    assert second["next_page_token"] is None
