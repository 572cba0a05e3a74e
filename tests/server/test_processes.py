"""The real thing: `automl serve`, Celery workers on the embedded broker and on
Redis, device agents and the CLI, as separate processes talking over HTTP and
the broker, the way a user runs them."""
from __future__ import annotations

import uuid

import pytest
import redis
import requests

from automl_server.app import create_app
from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from automl_server.settings import settings_from_env
from tests.conftest import (
    POSTGRES_URL, REDIS_URL, _forget_database, create_postgres_database, drop_postgres_database, need_service,
)
from tests.datasets import archives
from tests.server.processes import CLI, Process, child_env, cli, cli_json, free_port, serving, wait_for
from tests.server.test_api_datasets import upload

pytestmark = pytest.mark.slow

DEVICE = {"name": "bench-cpu", "kind": "cpu", "runtimes": [{"name": "pytorch", "version": "2.13"}]}


def run_job_through_worker(settings, tmp_path) -> dict:  # type: ignore[no-untyped-def]
    """Submit a job with the app, let a real worker process run it, return the job."""
    upgrade(get_database(settings.resolved_database_url))
    client = create_app(settings, celery=make_celery(settings)).test_client()
    upload(client, archives.good_zip(tmp_path, per_class=4), name="pets")
    client.post("/api/v1/devices", json=DEVICE)
    # The validate stage only: whole jobs need a device agent (test_job_processes.py).
    job_id = client.post("/api/v1/jobs", json={"dataset": "pets", "device": "bench-cpu", "latency_target_ms": 5,
                                               "stop_after": "validate"}).json["id"]
    worker = Process([*CLI, "worker", "--queues", "default", "--pool", "solo", "--hostname", f"t{uuid.uuid4().hex[:6]}@%h"],
                     child_env(settings), tmp_path / "worker.log")
    try:
        job = wait_for(lambda: (j := client.get(f"/api/v1/jobs/{job_id}").json)["done"] and j, 90,
                       "the worker to finish the job")
    except AssertionError:
        raise AssertionError(worker.log()) from None
    finally:
        worker.stop()
        worker.kill_group()
    return job


def test_worker_runs_job_on_the_embedded_sqlite_broker(tmp_path):
    settings = settings_from_env({}, data_dir=tmp_path / "data")
    assert settings.resolved_broker_url.startswith("sqla+sqlite")

    job = run_job_through_worker(settings, tmp_path)

    assert job["state"] == "succeeded", job
    assert job["result"]["validate"]["num_samples"] == 8
    _forget_database(settings.resolved_database_url)


@pytest.mark.redis
@pytest.mark.postgres
def test_worker_runs_job_on_redis_and_postgres(tmp_path):
    redis_url = need_service(REDIS_URL, "AUTOML_TEST_REDIS_URL")
    server = need_service(POSTGRES_URL, "AUTOML_TEST_POSTGRES_URL")
    redis.Redis.from_url(redis_url).flushdb()  # no stale messages from an earlier run
    database_url = create_postgres_database(server, "automl_worker")
    settings = settings_from_env({}, data_dir=tmp_path / "data", database_url=database_url,
                                 broker_url=redis_url, result_backend=redis_url)
    try:
        job = run_job_through_worker(settings, tmp_path)
    finally:
        drop_postgres_database(server, database_url)

    assert job["state"] == "succeeded", job
    assert job["result"]["validate"]["class_counts"] == {"cat": 4, "dog": 4}


@pytest.fixture
def served(tmp_path):  # type: ignore[no-untyped-def]
    with serving(tmp_path) as (settings, env):
        yield settings, env, settings.resolved_server_url
        _forget_database(settings.resolved_database_url)


def test_serve_takes_an_upload_and_runs_a_job_to_success(served, tmp_path):
    settings, env, url = served
    devices = wait_for(lambda: [d for d in cli_json(env, "devices", "list") if d["status"] == "online"], 60,
                       "the local CPU agent to come online")
    path = archives.good_zip(tmp_path, classes=("ant", "bee", "cow"), per_class=3)
    # The hijack: one POST naming the live local device with other runtimes.
    hijack = requests.post(f"{url}/api/v1/devices", timeout=10, json={
        "name": "local-cpu", "kind": "cpu", "runtimes": [{"name": "tensorrt", "version": "10"}]})

    with path.open("rb") as handle:
        uploaded = requests.post(f"{url}/api/v1/datasets", files={"file": ("insects.zip", handle)}, timeout=60)
    submitted = cli_json(env, "jobs", "submit", "--dataset", "insects", "--device", "local-cpu", "--target-ms", "10",
                         "--runtime", "onnxruntime", "--stop-after", "validate")
    waited = cli(env, "jobs", "wait", submitted["id"])
    listed = {d["name"] for d in cli_json(env, "datasets", "list")}
    after = requests.get(f"{url}/api/v1/devices/local-cpu", timeout=10).json()

    assert [d["name"] for d in devices] == [settings.local_device_name]
    assert {r["name"] for r in devices[0]["runtimes"]} >= {"pytorch", "onnxruntime", "litert"}
    assert hijack.status_code == 409 and "DELETE /api/v1/devices/local-cpu" in hijack.json()["detail"]
    assert after["status"] == "online" and after["runtimes"] == devices[0]["runtimes"]
    # The local agent keeps its device's token beside the data, for the next `automl serve`.
    assert (settings.data_dir / "agent" / "local-cpu.token").read_text().startswith("agt_")
    assert uploaded.status_code == 201, uploaded.text
    assert submitted["state"] == "queued"
    assert f"job {submitted['id']} succeeded" in waited.stdout
    assert {"digits", "mnist-5k", "insects"} <= listed


def test_cli_upload_rejection_is_clear_and_exits_non_zero(served, tmp_path):
    _, env, _ = served

    result = cli(env, "datasets", "upload", str(archives.zip_one_class(tmp_path)), check=False)

    assert result.returncode != 0
    assert "[classes]" in result.stderr and "at least 2" in result.stderr


def test_token_protected_server_with_a_remote_agent_going_offline(tmp_path):
    port = free_port()
    settings = settings_from_env({}, data_dir=tmp_path / "data", port=port, auth_mode="always",
                                 heartbeat_interval_s=0.3, heartbeat_timeout_s=2.0)
    env = child_env(settings)
    cli(env, "db", "upgrade")
    token = cli_json(env, "tokens", "create", "ci", "--scope", "read", "--scope", "agent:pi-sim")["token"]
    admin = cli_json(env, "tokens", "create", "ops", "--scope", "admin")["token"]
    server = Process([*CLI, "serve", "--no-worker", "--no-agent"], env, tmp_path / "serve.log")
    agent = Process([*CLI, "agent", "--name", "pi-sim", "--kind", "raspberry-pi", "--token", token], env,
                    tmp_path / "agent.log")
    try:
        wait_for(lambda: requests.get(f"{settings.resolved_server_url}/api/v1/health", timeout=2).ok, 60, "server")
        refused = cli(env, "devices", "list", check=False)
        online = wait_for(lambda: [d for d in cli_json(env, "devices", "list", "--token", token)
                                   if d["name"] == "pi-sim" and d["status"] == "online"], 60, "agent online")
        agent.stop()
        offline = wait_for(lambda: [d for d in cli_json(env, "devices", "list", "--token", token)
                                    if d["status"] == "offline"], 30, "agent offline")
        audit = cli_json(env, "audit-log", "--kind", "device", "--token", admin)
        not_admin = cli(env, "audit-log", "--token", token, check=False)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{server.log()}\n{agent.log()}") from None
    finally:
        agent.stop()
        agent.kill_group()
        server.stop()
        server.kill_group()
        _forget_database(settings.resolved_database_url)

    assert refused.returncode != 0 and "automl tokens create" in refused.stderr
    assert online[0]["kind"] == "raspberry-pi"
    assert offline[0]["name"] == "pi-sim"
    # The agent's token (read, agent:pi-sim) registered its device; the audit log, for admins, says so.
    assert [(e["action"], e["subject"], e["token_name"]) for e in audit] == [("register", "pi-sim", "ci")]
    assert not_admin.returncode != 0 and "needs the scope admin" in not_admin.stderr
