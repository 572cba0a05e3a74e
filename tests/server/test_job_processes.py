"""Whole push-button jobs through real processes: `automl serve` with its
worker and local CPU agent, the CLI, PostgreSQL + Redis, and a search whose
server is stopped and started again, then whose worker is killed."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from device_agents.ort_training_runner import training_python
from tests.conftest import (
    POSTGRES_URL, REDIS_URL, _forget_database, create_postgres_database, drop_postgres_database, need_service,
)
from tests.server.processes import cli, cli_json, is_running, processes_mentioning, serving, wait_for

pytestmark = pytest.mark.slow

SMALL_JOB = ("--dataset", "digits", "--device", "local-cpu", "--runtime", "onnxruntime", "--space", "tiny",
             "--warmup-epochs", "1", "--search-epochs", "2", "--tune-trials", "1", "--tune-epochs", "1",
             "--train-epochs", "2", "--param", "calibration_networks=5")


def agent_online(env: dict[str, str]) -> None:
    wait_for(lambda: [d for d in cli_json(env, "devices", "list") if d["status"] == "online"], 90,
             "the local CPU agent")


@pytest.mark.redis
@pytest.mark.postgres
def test_push_button_job_from_the_cli_on_postgres_and_redis(tmp_path):
    redis_url = need_service(REDIS_URL, "AUTOML_TEST_REDIS_URL")
    server = need_service(POSTGRES_URL, "AUTOML_TEST_POSTGRES_URL")
    redis.Redis.from_url(redis_url).flushdb()
    database_url = create_postgres_database(server, "automl_job")
    try:
        with serving(tmp_path, database_url=database_url, broker_url=redis_url, result_backend=redis_url) as (
                _settings, env):
            agent_online(env)
            waited = cli(env, "jobs", "submit", *SMALL_JOB, "--target-ms", "10", "--wait", timeout_s=600)
            job_id = re.search(r"job (\w+) succeeded", waited.stdout).group(1)  # type: ignore[union-attr]
            report = cli_json(env, "jobs", "report", job_id)
    finally:
        _forget_database(database_url)
        drop_postgres_database(server, database_url)

    assert "test accuracy" in waited.stdout and "latency measured" in waited.stdout
    # One progress bar per stage, each line naming its stage.
    for stage in ("validate", "profile", "search", "tune", "fit", "train", "export", "schedule", "verify", "report"):
        assert stage in waited.stderr
    assert report["job_id"] == job_id and report["latency"]["measured_ms"] > 0
    assert report["downloads"]["onnx"].endswith("/artifacts/onnx")


def _pool_children(worker_pid: int) -> list[int]:
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _worker_pid(serve_pid: int) -> int:
    for pid in _pool_children(serve_pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"worker" in cmdline:
            return pid
    raise AssertionError("no embedded worker process under `automl serve`")


@pytest.mark.timeout(600)  # a search killed and resumed, stopped and resumed, then trained, on a shared CI machine
def test_a_search_killed_or_stopped_with_its_server_resumes_from_its_checkpoint(tmp_path):
    # A 10 s lease (default 120 s) and a sweep every 2 s: a stage is sent again soon after its
    # worker is gone instead of after two idle minutes; the search renews its lease every second.
    short_lease: dict[str, Any] = {"stage_lease_s": 10.0, "recovery_sweep_s": 2.0}
    with serving(tmp_path, **short_lease) as (settings, env):
        agent_online(env)
        url = f"{settings.resolved_server_url}/api/v1"
        submitted = requests.post(f"{url}/jobs", timeout=30, json={
            "dataset": "digits", "device": "local-cpu", "runtime": "onnxruntime", "space": "tiny",
            "latency_target_ms": 10.0, "tune": False, "params": {"calibration_networks": 5, "schedule": False},
            # Long enough that the stop after epoch 3 and the kill an epoch after the resume land
            # mid-search; no schedule stage: not what is tested.
            "budget": {"warmup_epochs": 1, "search_epochs": 12, "train_epochs": 1}})
        # Says what the service answered when it was not a job (one CI run got a body without "id").
        assert submitted.status_code == 202, (submitted.status_code, submitted.text)
        job = submitted.json()

        wait_for(lambda: len(_search_epochs(url, job["id"])) >= 3, 300, "three search epochs")
        # 1. `automl serve` stopped mid-search (SIGTERM, as `docker stop` sends): its worker's warm
        # shutdown would wait for the search to end; the server ends it, and all they started, and exits.
        before_stop = _search_epochs(url, job["id"])
        serve_pid = _serve_pid(settings.port)
        os.kill(serve_pid, signal.SIGTERM)
        stopping = time.monotonic()
        wait_for(lambda: not is_running(serve_pid), 60, "automl serve to exit after SIGTERM", interval_s=0.1)
        stop_s = time.monotonic() - stopping
        leftovers = processes_mentioning(str(tmp_path))
    first_log = (tmp_path / "serve.log").read_text(errors="replace")
    print(f"FAULT automl serve stopped (SIGTERM) mid-search: exited, nothing left {stop_s:.1f} s")
    assert leftovers == {}, leftovers
    # It said what it had to end: the worker (in its warm shutdown) and the pool process running the search.
    assert "SIGTERM: stopping" in first_log and re.search(r"ended [2-9] process\(es\) still running", first_log), \
        first_log[-3000:]

    # 2. `automl serve` started again on the same data: the stage's lease runs out, the sweep
    # sends it again, and the search resumes from its checkpoint.
    with serving(tmp_path, log_name="serve-again.log", **short_lease) as (settings, env):
        restarted = time.monotonic()
        url = f"{settings.resolved_server_url}/api/v1"
        at_restart = _search_epochs(url, job["id"])  # the search ran on during the grace period
        wait_for(lambda: len(_search_epochs(url, job["id"])) > len(at_restart), 300,
                 "a search epoch after the restart")
        print(f"FAULT automl serve started again: the stopped search resumed {time.monotonic() - restarted:.1f} s")
        # 3. The process running the search dies without a word.
        for pid in _pool_children(_worker_pid(_serve_pid(settings.port))):
            os.kill(pid, signal.SIGKILL)
        before_kill = _search_epochs(url, job["id"])
        done = wait_for(lambda: (j := requests.get(f"{url}/jobs/{job['id']}", timeout=30).json())["done"] and j, 600,
                        "the job to finish after the kill")
        after = _search_epochs(url, job["id"])
        log = [e["message"] for e in requests.get(f"{url}/jobs/{job['id']}/events", params={"page_size": 500},
                                                   timeout=30).json()["events"] if e["kind"] == "log"]

    assert done["state"] == "succeeded", done["error"]
    assert done["recoveries"] >= 2 and sum("resumed: its worker was lost" in m for m in log) >= 2, log
    # Resumed from the checkpoint each time: no epoch ran twice except, at most, the one cut short.
    after_restart, after_kill = after[len(at_restart):len(before_kill)], after[len(before_kill):]
    assert after_restart and after_restart[0] >= at_restart[-1], after
    assert after_kill and after_kill[0] >= before_kill[-1] and after_kill[-1] == 13, after
    assert after.count(1) == 1
    assert json.dumps(done["result"]["report"]["arch"])


def _search_epochs(url: str, job_id: str) -> list[int]:
    events = requests.get(f"{url}/jobs/{job_id}/events", params={"page_size": 500}, timeout=30).json()
    return [e["data"]["epoch"] for e in events["events"]
            if e["kind"] == "metric" and e["stage"] == "search" and "block_probs" in e["data"]]


def _serve_pid(port: int) -> int:
    """The `automl serve` process listening on ``port``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and any(b"automl" in part for part in cmdline):
            environ = (entry / "environ").read_bytes()
            if f"AUTOML_PORT={port}".encode() in environ:
                return int(entry.name)
    raise AssertionError(f"no `automl serve` on port {port}")


@pytest.mark.timeout(1200)  # three searches and trainings on one server (one start, one profile) on a shared CI machine
def test_the_pipelines_that_start_processes_run_under_automl_serves_prefork_worker(tmp_path):
    """torchrun workers and Flower's SuperLink/SuperNodes are started from a
    Celery prefork child (which may not fork children of its own through
    multiprocessing): both pipelines end, and no process of theirs is left.
    The sparse update's on-device steps go through the broker to the local
    agent, which runs them with ONNX Runtime training in its own environment
    (``make ort-training-venv``, which ``make test`` builds)."""
    assert training_python().exists(), "run `make ort-training-venv` (make test builds it)"
    with serving(tmp_path) as (settings, env):
        agent_online(env)
        tiny = (*SMALL_JOB, "--no-tune", "--stop-after", "train", "--target-ms", "10")
        dsgd = cli(env, "jobs", "submit", *tiny, "--pipeline", "delayed-sgd", "--param", "distributed.epochs=1",
                   "--param", "distributed.delay=1", "--param", "distributed.period=1", "--wait", timeout_s=600)
        fedgkt = cli(env, "jobs", "submit", *tiny, "--pipeline", "fedgkt", "--param", "fedgkt.clients=2",
                     "--param", "fedgkt.rounds=1", "--param", "fedgkt.baselines=false", "--wait", timeout_s=600)
        sparse = cli(env, "jobs", "submit", *SMALL_JOB, "--no-tune", "--target-ms", "10", "--stop-after",
                     "device-finetune", "--pipeline", "sparse-update",
                     "--param", "sparse_update.epochs=1", "--param", "sparse_update.scheme=bias-only",
                     "--param", "sparse_update.compare_baselines=false", "--param",
                     "sparse_update.measure_peak_rss=false", "--param", "sparse_update.on_device=true",
                     "--param", "sparse_update.on_device_steps=4", "--wait", timeout_s=600)
        sparse_id = re.search(r"job (\w+) succeeded", sparse.stdout)
        assert sparse_id, sparse.stdout + sparse.stderr
        sparse_result = requests.get(f"{settings.resolved_server_url}/api/v1/jobs/{sparse_id.group(1)}",
                                     timeout=30).json()["result"]
        leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _mentions(pid, str(tmp_path))
                     and any(name in _cmdline(pid) for name in ("torch.distributed.run", "flower-", "flwr"))]

    assert re.search(r"job \w+ succeeded", dsgd.stdout), dsgd.stdout + dsgd.stderr
    assert re.search(r"job \w+ succeeded", fedgkt.stdout), fedgkt.stdout + fedgkt.stderr
    assert leftovers == []
    assert sparse_result["train"]["sparse-update"]["scheme"]["kind"] == "bias-only"
    on_device = sparse_result["device-finetune"]
    assert on_device["device_name"] == "local-cpu" and len(on_device["device"]["losses"]) == 4
    assert on_device["comparison"]["within_tolerance"], on_device["comparison"]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _mentions(pid: str, text: str) -> bool:
    return text in _cmdline(pid)
