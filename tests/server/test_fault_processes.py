"""Failures, measured, on real processes: `automl serve` (worker and local
agent) on a private Redis broker and a private PostgreSQL, both started for
this test on free ports (never the machine's shared ones), and one job's
life through the faults a service meets: the server restarted with a job
queued, the agent killed mid-profile, the broker and the database restarted
mid-search (a job queued then loses its message, and the recovery sweep
sends it again), the agent killed mid-verify. Each fault ends with the job
finished or failed with a reason that says what to do, never stuck
``running``, and what was stored before it kept. Recovery times are printed
(``FAULT ... s``) for the README's failure table."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests

from automl_server.jobs.tasks import LOST_MESSAGE
from tests.server.processes import CLI, Process, child_env, free_port, serving, wait_for
from tests.server.test_faults import report

pytestmark = pytest.mark.slow

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


class PrivateRedis:
    def __init__(self, tmp_path: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed: the broker fault needs a Redis of its own")
        self.port, self.tmp_path = free_port(), tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self._start()

    def _start(self) -> Process:
        process = Process(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"], dict(os.environ), self.tmp_path / f"redis-{time.monotonic_ns()}.log")
        wait_for(self._ping, 30, "the private Redis", interval_s=0.05)
        return process

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.exceptions.ConnectionError:
            return False

    def restart(self) -> None:
        """Killed without a word and started again empty (no persistence): queued messages are lost."""
        self.process.popen.kill()
        self.process.stop()
        self.process = self._start()

    def stop(self) -> None:
        self.process.stop()
        self.process.kill_group()


class PrivatePostgres:
    def __init__(self) -> None:
        if PG_BIN is None or not (PG_BIN / "initdb").exists():
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql: the database fault needs its own")
        if os.geteuid() != 0:
            pytest.skip("the private PostgreSQL runs as user postgres, which needs root to switch to")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="automl-pg-"))
        shutil.chown(self.dir, "postgres")
        self._pg("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync")
        self._ctl("start")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args], check=True,
                       capture_output=True, timeout=120)

    def _ctl(self, action: str, *args: str) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   "-c fsync=off")
        self._pg("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", action,
                 *args)

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_services(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivatePostgres]]:
    broker = PrivateRedis(tmp_path)
    try:
        database = PrivatePostgres()
        try:
            yield broker, database
        finally:
            database.stop()
    finally:
        broker.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _kill_tree(pid: int) -> None:
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _serve_agent_pid(port: int) -> int:
    from tests.server.test_job_processes import _serve_pid

    for pid in _children(_serve_pid(port)):
        if b"agent" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return pid
    raise AssertionError("no local agent under `automl serve`")


class Api:
    def __init__(self, base: str) -> None:
        self.base = base + "/api/v1"

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(self.base + path, params=params, timeout=30)
        response.raise_for_status()  # a 500 while the database restarts: wait_for tries again
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def done(self, job_id: str, timeout_s: float, what: str) -> dict[str, Any]:
        return wait_for(lambda: (j := self.job(job_id))["done"] and j, timeout_s, what, interval_s=0.2)

    def ops_measured(self, job_id: str) -> int | None:
        """Ops measured so far by the job's profile stage (None before it sent them to the device)."""
        events = self.get(f"/jobs/{job_id}/events", page_size=500)["events"]
        return max([e["data"]["measured"] for e in events if e["stage"] == "profile" and "measured" in e["data"]],
                   default=None)

    def lost_message_resent(self, job_id: str) -> bool:
        events = self.get(f"/jobs/{job_id}/events", page_size=500)["events"]
        return any(e["kind"] == "warning" and e["message"] == LOST_MESSAGE for e in events)

    def search_epochs(self, job_id: str) -> list[int]:
        events = self.get(f"/jobs/{job_id}/events", page_size=500)["events"]
        return [e["data"]["epoch"] for e in events if e["kind"] == "metric" and e["stage"] == "search"
                and "epoch" in e["data"]]


def _small_npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8), y=np.arange(48) % 2)
    return buffer.getvalue()


JOB = {"dataset": "small", "device": "local-cpu", "runtime": "onnxruntime", "latency_target_ms": 10.0,
       "space": "tiny", "tune": False, "stop_after": "verify",
       # On 48 images the search runs at least 10 warm-up epochs: the restarts fall in them.
       "budget": {"warmup_epochs": 1, "search_epochs": 1, "train_epochs": 1},
       # A device that went away fails the job after 2 s instead of the default 10 minutes.
       "params": {"calibration_networks": 0, "device_wait_s": 2, "schedule": False}}


@pytest.mark.timeout(900)
def test_a_job_through_a_server_restart_a_killed_agent_and_restarted_broker_and_database(tmp_path):
    with private_services(tmp_path) as (broker, database):
        services = {"database_url": database.url, "broker_url": broker.url, "result_backend": broker.url,
                    "heartbeat_timeout_s": 3.0, "heartbeat_interval_s": 0.5,
                    # Whole-network measurements (verify) take 3 s, so the agent is killed while it measures.
                    "network_measure_s": 3.0,
                    # The recovery sweep looks every 2 s (30 s by default) for stages to send again.
                    "recovery_sweep_s": 2.0}
        # 1. The server stops with a job queued (no worker yet); the next start runs it.
        with serving(tmp_path, "--no-worker", **services) as (settings, env):
            api = Api(settings.resolved_server_url)
            wait_for(lambda: api.get("/devices/local-cpu")["status"] == "online", 90, "the local agent")
            uploaded = requests.post(api.base + "/datasets", files={"file": ("small.npz", _small_npz())}, timeout=60)
            assert uploaded.status_code == 201, uploaded.text
            # A space of many ops (the tiny one's 20 take the agent about a second: a kill would race their end).
            first = requests.post(api.base + "/jobs", json={**JOB, "space": "proxyless-mobile",
                                                             "stop_after": "profile"}, timeout=30).json()
        with serving(tmp_path, **services) as (settings, env):
            api = Api(settings.resolved_server_url)
            restarted = time.monotonic()
            wait_for(lambda: api.job(first["id"])["state"] != "queued", 120, "the queued job to start")
            report("server restarted with a job queued: job started", time.monotonic() - restarted)

            # 2. The agent is killed mid-profile: the job fails saying the device is offline.
            wait_for(lambda: (api.ops_measured(first["id"]) or 0) >= 3, 120, "some ops measured", interval_s=0.1)
            killed = time.monotonic()
            _kill_tree(_serve_agent_pid(settings.port))
            a = api.done(first["id"], 60, "the job to end after its agent was killed")
            report("agent killed mid-profile: job failed with the reason", time.monotonic() - killed)

            # An agent started again re-registers the device (with the agent token kept in the data directory).
            agent = Process([*CLI, "agent", "--device", "local-cpu", "--kind", "cpu"], child_env(settings),
                            tmp_path / "agent.log")
            try:
                wait_for(lambda: api.get("/devices/local-cpu")["status"] == "online", 60, "the agent again")
                # Three warm-up budget epochs (30 epochs on 48 images): the broker's and the database's
                # restarts and the sweep's resend must all fall in its search, however the machine's load
                # (the suite runs on two xdist workers) speeds or slows it; one (10 epochs) once left the
                # search finished before the database restart, and the job past verify.
                second = requests.post(f"{api.base}/jobs", json={**JOB, "budget": {**JOB["budget"],
                                                                             "warmup_epochs": 3}}, timeout=30).json()

                # 3. The broker, then the database, restarted mid-search. A third job, submitted while
                # the search holds the only worker, waits queued: its first stage's message is on the
                # broker, and the empty restart loses it. The recovery sweep sends it again.
                wait_for(lambda: api.search_epochs(second["id"]), 180, "the first search epoch", interval_s=0.2)
                third = requests.post(f"{api.base}/jobs", json={**JOB, "stop_after": "validate"}, timeout=30).json()
                at_restart = len(api.search_epochs(second["id"]))
                assert api.job(third["id"])["state"] == "queued", api.job(third["id"])
                restart = time.monotonic()
                broker.restart()
                wait_for(lambda: len(api.search_epochs(second["id"])) > at_restart, 120,
                         "a search epoch after the broker restart", interval_s=0.2)
                report("broker restarted mid-search: next search epoch recorded", time.monotonic() - restart)
                wait_for(lambda: api.lost_message_resent(third["id"]), 60,
                         "the queued job's lost stage to be sent again", interval_s=0.1)
                report("broker restarted empty with a job queued: its stage sent again", time.monotonic() - restart)
                at_restart = len(api.search_epochs(second["id"]))
                restart = time.monotonic()
                database.restart()
                wait_for(lambda: len(api.search_epochs(second["id"])) > at_restart
                         or api.job(second["id"])["done"], 120, "a search epoch after the database restart",
                         interval_s=0.2)
                report("database restarted mid-search: next search epoch recorded", time.monotonic() - restart)

                # 4. The agent killed mid-verify.
                wait_for(lambda: (j := api.job(second["id"]))["stage"] == "verify" or j["done"], 300,
                         "the verify stage", interval_s=0.1)
                killed = time.monotonic()
                agent.popen.kill()
                agent.kill_group()
                b = api.done(second["id"], 60, "the job to end after its agent was killed mid-verify")
                report("agent killed mid-verify: job failed with the reason", time.monotonic() - killed)
                c = api.done(third["id"], 120, "the job whose queued stage the broker lost to end")
                report("broker restarted empty with a job queued: job succeeded", time.monotonic() - restart)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log()}") from None
            finally:
                agent.stop()
                agent.kill_group()
            epochs = api.search_epochs(second["id"])
            third_timeline = [e["message"] for e in api.get(f"/jobs/{third['id']}/events", page_size=500)["events"]]
            datasets = {d["name"] for d in api.get("/datasets")["datasets"]}
            jobs = {j["id"]: j["state"] for j in api.get("/jobs")["jobs"]}

    assert a["state"] == "failed" and a["stage"] == "profile", a
    assert "device 'local-cpu' is offline" in a["error"] and "ops still need measuring" in a["error"]
    assert "start its agent (automl agent --device local-cpu), then re-run this job" in a["error"]
    # Through the broker's and the database's restarts, the search ran every epoch once and finished.
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 3, epochs
    assert {"search", "train", "export"} <= set(b["result"]["stages_done"]), b["result"]["stages_done"]
    assert b["state"] == "failed" and b["stage"] == "verify", b
    assert "device 'local-cpu' is offline" in b["error"] and "exported model needs measuring" in b["error"]
    assert "small" in datasets and jobs == {first["id"]: "failed", second["id"]: "failed", third["id"]: "succeeded"}
    # The job whose queued stage the broker lost ran it once, and its timeline says why it was sent again.
    assert c["state"] == "succeeded" and c["result"]["stages_done"] == ["validate"], c
    assert third_timeline.count(LOST_MESSAGE) == 1, third_timeline
    assert third_timeline.count("stage validate started") == 1, third_timeline
