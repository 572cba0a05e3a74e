"""Failures, measured: a real part fails in the middle of a job, and the user
sees the job finish, or fail with a reason that says what to do; never stuck
``running``, nothing already stored lost. Each test prints the recovery time
it measured (``FAULT ... s``) for the README's failure table.

The disk faults run in-process (Flask's client, eager Celery) on a small
tmpfs mounted as the data directory (needs root, as CI has). The process
faults (tests/server/test_fault_processes.py) run `automl serve` on a
private Redis and PostgreSQL started for the test, never the machine's.
"""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from automl_server.app import create_app
from automl_server.celery_app import make_celery
from automl_server.datasets.store import register_bundled_datasets
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from tests.conftest import _forget_database, make_settings
from tests.server.test_api_datasets import stored_state, upload


def report(fault: str, seconds: float) -> None:
    print(f"\nFAULT {fault}: {seconds:.1f} s (at {time.strftime('%H:%M:%S')})")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs as the data directory (the database lives elsewhere, as with PostgreSQL)."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(data)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file until only about ``leave_bytes`` are free."""
    filler = disk / f"filler-{time.monotonic_ns()}"
    chunk = b"\0" * (64 * 1024)
    try:
        with filler.open("wb", buffering=0) as handle:
            while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > leave_bytes + len(chunk):
                handle.write(chunk)
            while not leave_bytes:
                handle.write(b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_data_disk_refuses_an_upload_and_fails_a_checkpoint_clearly(small_disk, tmp_path):
    url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
    upgrade(get_database(url))
    settings = make_settings(tmp_path, url, heartbeat_timeout_s=3600.0)
    app = create_app(settings, celery=make_celery(settings, eager=True))
    client = app.test_client()
    with get_database(url).session() as session:
        register_bundled_datasets(session, settings)
    assert client.post("/api/v1/devices", json={"name": "cpu-1", "kind": "cpu",
                                                "runtimes": [{"name": "onnxruntime"}]}).status_code == 201
    rng = np.random.default_rng(0)
    npz = tmp_path / "noise.npz"
    np.savez(npz, x=rng.integers(0, 255, (400, 32, 32, 3), dtype=np.uint8), y=np.arange(400) % 4)  # 1.2 MB
    small = tmp_path / "small.npz"  # 8x8, 48 images: a search epoch takes a moment
    np.savez(small, x=rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8), y=np.arange(48) % 2)
    assert upload(client, small, name="small").status_code == 201
    before = stored_state(settings)

    # An upload larger than the space left.
    filler = fill(small_disk, leave_bytes=256 * 1024)
    refused = upload(client, npz, name="noise")
    after_refusal = stored_state(settings)
    filler.unlink()
    freed = time.monotonic()
    accepted = upload(client, npz, name="noise")
    report("disk full during an upload: upload accepted after space was freed", time.monotonic() - freed)

    # A search whose disk fills up between two of its checkpoints.
    def fill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(settings.artifacts_dir.glob("*/search.ckpt")):
            time.sleep(0.05)
        fill(small_disk)

    filler_thread = threading.Thread(target=fill_after_first_checkpoint, daemon=True)
    filler_thread.start()
    started = time.monotonic()
    job = client.post("/api/v1/jobs", json={
        "dataset": "small", "device": "cpu-1", "latency_target_ms": 10.0, "space": "tiny", "stop_after": "search",
        "budget": {"warmup_epochs": 1, "search_epochs": 200}, "params": {"calibration_networks": 0}}).json
    filler_thread.join(timeout=60)
    job = client.get(f"/api/v1/jobs/{job['id']}").json
    report("disk full during a checkpoint: job failed with the reason", time.monotonic() - started)
    checkpoint = torch.load(next(settings.artifacts_dir.glob("*/search.ckpt")), weights_only=False)
    datasets = {d["name"] for d in client.get("/api/v1/datasets").json["datasets"]}
    _forget_database(url)

    assert refused.status_code == 507 and refused.mimetype == "application/problem+json", refused.json
    assert "data directory" in refused.json["detail"] and "is full" in refused.json["detail"]
    assert "nothing was stored" in refused.json["detail"]
    assert after_refusal == before  # no row, no file, no leftover in tmp/
    assert accepted.status_code == 201, accepted.json
    assert job["state"] == "failed" and job["stage"] == "search", job
    assert "is full" in job["error"] and "Re-run the job once there is space" in job["error"]
    assert job["result"]["validate"]["num_samples"] > 0 and "profile" in job["result"]  # earlier stages kept
    assert checkpoint  # the last checkpoint written before the disk filled is whole
    assert {"digits", "small", "noise"} <= datasets


def test_a_stage_that_loses_its_database_is_sent_again_and_resumes(tmp_path, monkeypatch):
    """What a PostgreSQL restart does to a stage writing its progress (the
    process test hits it only when a write falls in the restart's second):
    the stage is not failed; once the database answers it is sent again,
    its lease given up so that the next delivery resumes it at once."""
    import dataclasses

    from sqlalchemy.exc import OperationalError

    from automl_server.db.engine import StorageError
    from automl_server.db.models import Job
    from automl_server.jobs import stages

    url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
    upgrade(get_database(url))
    settings = make_settings(tmp_path, url)
    client = create_app(settings, celery=make_celery(settings)).test_client()  # nobody consumes: jobs stay queued
    db = get_database(url)
    with db.session() as session:
        register_bundled_datasets(session, settings)
    client.post("/api/v1/devices", json={"name": "cpu-1", "kind": "cpu", "runtimes": [{"name": "onnxruntime"}]})
    job_id = client.post("/api/v1/jobs", json={"dataset": "digits", "device": "cpu-1", "latency_target_ms": 10.0,
                                               "space": "tiny", "stop_after": "validate"}).json["id"]
    validate = stages.get_stage("validate")
    calls: list[int] = []

    def loses_its_database_once(ctx):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise StorageError("database error") from OperationalError("UPDATE jobs", {}, Exception("terminated"))
        return validate.run(ctx)

    monkeypatch.setattr(stages, "get_stage", lambda name: dataclasses.replace(validate, run=loses_its_database_once))
    first = stages.run_stage(db, settings, job_id, "validate", owner="task-A")
    between = client.get(f"/api/v1/jobs/{job_id}").json
    second = stages.run_stage(db, settings, job_id, "validate", owner="task-B")
    done = client.get(f"/api/v1/jobs/{job_id}").json
    with db.session() as session:
        recoveries = session.get_one(Job, job_id).recoveries
    _forget_database(url)

    assert first is not None and first.stage == "validate"  # sent again, not failed
    assert between["state"] == "running" and between["error"] is None
    assert second is None and done["state"] == "succeeded" and recoveries == 1
