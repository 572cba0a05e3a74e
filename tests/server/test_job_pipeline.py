"""The push-button job, every stage for real (profiling on this CPU with
onnxruntime, search, Optuna, training, ONNX/TFLite export, measurement), on
an eager Celery so that a job runs inside the request; on SQLite and
PostgreSQL. Real worker processes run it in test_job_processes.py."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from automl_server.app import create_app
from automl_server.celery_app import make_celery
from automl_server.datasets.store import register_bundled_datasets
from automl_server.db.engine import get_database
from automl_server.db.models import Device, Job, JobEvent, utcnow
from automl_server.jobs import stages
from automl_server.jobs.lease import LeaseHeartbeat
from automl_server.db.migrate import upgrade
from tests.conftest import _forget_database, make_settings

# A small but complete job: the tiny space on 8x8 digits, a few epochs each.
SMALL_BUDGET = {"warmup_epochs": 1, "search_epochs": 2, "tune_trials": 1, "tune_epochs": 1, "train_epochs": 2}


def submit(client, **overrides: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/jobs", json=job_request(**overrides))
    assert response.status_code == 202, response.json
    return client.get(response.headers["Location"]).json


def job_request(**overrides: Any) -> dict[str, Any]:
    # 10 ms: every tiny network on 8x8 inputs meets it on any CPU (they run in
    # tens of microseconds), so no test outcome depends on this machine's speed.
    return {"dataset": "digits", "device": "cpu-1", "latency_target_ms": 10.0, "space": "tiny",
            "budget": SMALL_BUDGET, "params": {"calibration_networks": 5}, **overrides}


@pytest.fixture
def farm_app(tmp_path, database_url):  # type: ignore[no-untyped-def]
    return make_farm(tmp_path, database_url)


@pytest.fixture
def sqlite_farm_app(tmp_path):  # type: ignore[no-untyped-def]
    """For tests of the runner itself, which do not depend on the database kind."""
    url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
    upgrade(get_database(url))
    yield make_farm(tmp_path, url)
    _forget_database(url)


def sqlite_module_farm(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Any]:
    """A farm on its own SQLite database for a whole test module (``yield from`` it in a fixture)."""
    tmp = tmp_path_factory.mktemp(name)
    url = f"sqlite:///{tmp / 'automl.sqlite'}"
    upgrade(get_database(url))
    yield make_farm(tmp, url)
    _forget_database(url)


def make_farm(tmp_path, database_url):  # type: ignore[no-untyped-def]
    # Heartbeats are not what these tests are about: a device stays online for an hour.
    # The webhook receiver of these tests listens on loopback, which webhooks refuse unless allowed.
    settings = make_settings(tmp_path, database_url, heartbeat_timeout_s=3600.0, webhook_allow_private=True)
    app = create_app(settings, celery=make_celery(settings, eager=True))
    db = get_database(settings.resolved_database_url)
    with db.session() as session:
        register_bundled_datasets(session, settings)
    client = app.test_client()
    for name in ("cpu-1", "cpu-2"):
        assert client.post("/api/v1/devices", json={
            "name": name, "kind": "cpu", "runtimes": [{"name": "onnxruntime", "version": "test"}]}).status_code == 201
    return app, settings, db


def events(db, job_id: str, kind: str | None = None) -> list[JobEvent]:  # type: ignore[no-untyped-def]
    with db.session() as session:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        rows = list(session.scalars(stmt))
        session.expunge_all()
    return [e for e in rows if kind is None or e.kind == kind]


def test_push_button_job_runs_every_stage_and_reports(farm_app, tmp_path):
    import onnxruntime as ort
    import optuna

    app, settings, db = farm_app
    client = app.test_client()

    # A target inside the achievable range measured on this machine, so that
    # the latency loss takes part in the search.
    profiled = submit(client, stop_after="profile")
    low, high = profiled["result"]["profile"]["achievable_ms"]
    # No retry of a missed target: a target in the middle of the range can be missed on a loaded
    # machine, and a retry runs train..verify again (tests/server/test_promise.py covers retries).
    params = {**job_request()["params"], "target_retries": 0}
    response = client.post("/api/v1/jobs", json=job_request(latency_target_ms=(low + high) / 2, params=params))

    assert response.status_code == 202
    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    started = [e.stage for e in events(db, job["id"], "state") if e.message.endswith("started")]
    assert started == ["validate", "profile", "search", "tune", "fit", "train", "export", "schedule", "verify", "report"]
    report = client.get(job["links"]["report"]).json
    assert report == job["result"]["report"]
    assert 0.0 <= report["accuracy"]["test"] <= 1.0 and report["accuracy"]["test_samples"] == 359
    # The found network is trained on train + holdout (1078 + 360 of digits' 1797), tested on the rest.
    assert report["accuracy"]["trained_on"] == "train+holdout" and report["accuracy"]["train_samples"] == 1438
    assert report["accuracy"]["holdout"] is None
    assert report["latency"]["measured_ms"] > 0 and report["latency"]["predicted_ms"] > 0
    assert report["latency"]["measured_file"] is True  # the exported ONNX itself was timed
    assert report["latency"]["raw_measured_ms"] > 0  # the clock's figure beside the paced one
    # Timed three times, each a session of its own (settings.network_timings); the median reported.
    timings = report["latency"]["timings_ms"]
    assert len(timings) == 3 and report["latency"]["measured_ms"] == sorted(timings)[1]
    # Timed in rounds spanning the service's network_measure_s (0.2 s in the tests), with the yardstick.
    verify_method = job["result"]["verify"]["stats"]["method"]
    assert verify_method["min_seconds"] == 0.2 and verify_method["rounds"] >= verify_method["min_rounds"]
    assert verify_method["seconds"] >= 0.2 and verify_method["yardstick_ms"] > 0
    low, high = report["latency"]["achievable_ms"]
    assert 0 < low < high
    assert report["model"]["parameters"] > 0 and report["model"]["macs"] > 0
    assert len(report["arch"]["blocks"]) == 8 and report["arch"]["space"] == "tiny"
    # The supernet's holdout accuracy set against the network's own, the majority rate from the dataset.
    assert report["search_signal"]["network_test_accuracy"] == report["accuracy"]["test"]
    assert 0.0 < report["search_signal"]["majority_class_rate"] < 0.2
    assert set(report["downloads"]) >= {"onnx", "tflite", "arch", "weights", "report"}
    # The per-epoch events the UI draws: losses, accuracies, E[latency], block probabilities.
    epochs = [e.data for e in events(db, job["id"], "metric") if e.stage == "search" and "block_probs" in e.data]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]  # 1 warm-up + 2 search epochs
    assert all(len(e["block_probs"]) == 8 and abs(sum(e["block_probs"][0]) - 1) < 1e-3 for e in epochs)
    # The ONNX download runs and answers 10 classes.
    with client.get(report["downloads"]["onnx"]) as onnx:
        assert onnx.status_code == 200
        assert onnx.headers["Content-Disposition"].endswith(f'{job["id"]}-model.onnx')
        model_bytes = onnx.data
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)
    # ... and takes a batch of 4 (its batch dimension is dynamic; the latency above is at batch 1).
    assert session.run(None, {"input": np.zeros((4, 1, 8, 8), np.float32)})[0].shape == (4, 10)
    assert report["model"]["onnx_batch"] == "any"
    assert report["labels"] == [str(d) for d in range(10)]
    check_downloads_and_bundle(client, settings, job, report, profiled, tmp_path)
    # The Optuna study is in the service's database, linked to the job.
    storage = optuna.storages.RDBStorage(settings.resolved_database_url)
    study = optuna.load_study(study_name=report["tuning"]["study_name"], storage=storage)
    assert len(study.trials) == 1 and report["tuning"]["trial_number"] == study.best_trial.number
    storage.engine.dispose()


def check_downloads_and_bundle(client, settings, job, report, unexported, tmp_path):  # type: ignore[no-untyped-def]
    """Each file with its media type and a name saying what it is; the deployment bundle,
    whose example classifies a dataset image as the model does on the service's preprocessing."""
    import io
    import json
    import subprocess
    import sys
    import zipfile

    import onnxruntime as ort
    from PIL import Image

    from automl_server.engine.deploy.export import tflite_metadata

    expected = {"onnx": ("application/octet-stream", "model.onnx"), "tflite": ("application/octet-stream", "model.tflite"),
                "weights": ("application/octet-stream", "weights.pt"), "arch": ("application/json", "arch.json"),
                "report": ("application/json", "report.json")}
    for kind, (media, name) in expected.items():
        with client.get(f"/api/v1/jobs/{job['id']}/artifacts/{kind}") as response:
            assert response.status_code == 200 and response.mimetype == media, (kind, response.mimetype)
            assert response.headers["Content-Disposition"] == f"attachment; filename={job['id']}-{name}"

    response = client.get(report["downloads"]["bundle"])
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{job["id"]}-bundle.zip"'
    folder = tmp_path / "bundle"
    with zipfile.ZipFile(io.BytesIO(response.data)) as zf:
        assert set(zf.namelist()) == {"README.txt", "model.onnx", "model.tflite", "labels.json", "preprocessing.json",
                                      "report.json", "example_onnxruntime.py", "android/Classifier.kt"}
        zf.extractall(folder)
    labels = json.loads((folder / "labels.json").read_text())
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert labels == [str(d) for d in range(10)]  # digits' classes, in output order
    assert (pre["height"], pre["width"], pre["channels"], pre["channel_order"]) == (8, 8, 1, "grayscale")
    assert pre["mean"] == report["model"]["input"]["normalisation"]["mean"] and pre["scale"] == 1 / 255
    assert "labels.json" in (folder / "README.txt").read_text()
    # The same labels and preprocessing inside both model files.
    meta = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["labels"]) == labels
    assert json.loads(meta.custom_metadata_map["preprocessing"]) == pre
    assert json.loads(tflite_metadata(folder / "model.tflite")["labels"]) == labels

    # The example, run as a user would, on a test image of the dataset saved as a PNG.
    arrays = np.load(settings.artifacts_dir / job["id"] / "dataset.npz")
    pixels = arrays["x"][arrays["test_idx"][0]]  # uint8 8x8x1
    Image.fromarray(pixels[:, :, 0], "L").save(tmp_path / "digit.png")
    run = subprocess.run([sys.executable, str(folder / "example_onnxruntime.py"), str(tmp_path / "digit.png")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    label, probability = run.stdout.strip().split("\t")
    assert label in labels and 0.0 < float(probability) <= 1.0
    # It prints what the model says on the image prepared as the training prepared it.
    norm = report["model"]["input"]["normalisation"]
    x = ((pixels.astype(np.float32) / 255 - norm["mean"]) / norm["std"]).transpose(2, 0, 1)[None]
    (logits,) = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.astype(np.float32)})
    probabilities = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    assert label == labels[int(probabilities.argmax())]
    assert float(probability) == pytest.approx(float(probabilities.max()), abs=1e-3)

    # No model yet (a job that stopped after profiling): 409 saying why; no such job: 404.
    not_ready = client.get(f"/api/v1/jobs/{unexported['id']}/artifacts/bundle")
    assert not_ready.status_code == 409 and not_ready.mimetype == "application/problem+json"
    assert "export" in not_ready.json["detail"]
    assert client.get("/api/v1/jobs/no-such-job/artifacts/bundle").status_code == 404


def test_infeasible_target_fails_early_with_the_achievable_range(farm_app):
    app, _settings, db = farm_app
    client = app.test_client()

    job = submit(client, latency_target_ms=1e-6)

    assert job["state"] == "failed" and job["stage"] == "profile"
    assert "below the fastest network" in job["error"] and "achievable" in job["error"]
    assert "search" not in job["result"]  # said early: no search was run


@pytest.mark.parametrize("noisy_timings, usable", [(1, [False, True]), (3, [False, False, False])])
def test_a_range_end_timed_noisy_is_timed_again_before_the_range_is_said(sqlite_farm_app, monkeypatch,
                                                                         noisy_timings, usable):
    # The calibration's first network is the space's fastest (it anchors the fit at the range's
    # low end); its first timings come back flagged noisy, as a burst of load does.
    from automl_server.jobs.profile import ANCHOR_RETAKES
    from automl_server.profiling import repository
    from latency_db import MIN_CALIBRATION_NETWORKS
    from latency_db.repository import LatencyRepository

    app, _settings, db = sqlite_farm_app
    real_record, calls = LatencyRepository.record_network, []

    def record(self, target, arch, *args, method=None, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(arch["blocks"])
        # Only the test's flags: this machine's own noise must not flag (or retake) another network.
        noisy = arch["blocks"] == calls[0] and calls.count(calls[0]) <= noisy_timings
        method = {**(method or {}), "reliable": not noisy,
                  "unreliable_reason": "the yardstick moved 51% (test)" if noisy else None}
        return real_record(self, target, arch, *args, method=method, **kwargs)

    monkeypatch.setattr(LatencyRepository, "record_network", record)
    job = submit(app.test_client(), stop_after="profile")

    assert job["state"] == "succeeded", job["error"]
    fastest = calls[0]
    # Timed once more per noisy answer, at most ANCHOR_RETAKES more times, and nothing else again.
    assert calls.count(fastest) == len(usable) <= 1 + ANCHOR_RETAKES
    assert len(set(map(tuple, calls))) == len(calls) - len(usable) + 1
    repo = repository(db)
    timings = [n for t in repo.find_target("cpu-1") for n in repo.networks(t) if n.arch["blocks"] == fastest]
    assert [n.usable for n in timings] == usable
    said = [e.message for e in events(db, job["id"], "log")]
    assert sum("fastest network" in m and "flagged noisy" in m and "timing it again" in m
               for m in said) == len(usable) - 1, said
    # The calibration rests on every usable timing (the fastest's second one included); with the
    # fastest never usable, 4 of the 5 networks are too few to calibrate at all.
    calibration = job["result"]["profile"]["calibration"]
    usable_networks = len(calls) - usable.count(False)
    if usable_networks >= MIN_CALIBRATION_NETWORKS:
        assert calibration["n_networks"] + calibration["outliers"] == usable_networks
    else:
        assert calibration is None


def test_offline_device_fails_with_its_status_and_the_fix(farm_app):
    app, _settings, db = farm_app
    client = app.test_client()
    with db.session() as session:
        session.execute(update(Device).where(Device.name == "cpu-2").values(last_heartbeat_at=None))

    job = client.get(client.post("/api/v1/jobs", json=job_request(device="cpu-2", params={
        "device_wait_s": 0})).headers["Location"]).json

    assert job["state"] == "failed" and job["stage"] == "profile"
    assert "'cpu-2' is offline" in job["error"] and "automl agent --device cpu-2" in job["error"]


def test_stop_after_ends_the_job_after_that_stage(farm_app):
    app, _settings, _db = farm_app
    client = app.test_client()

    job = submit(client, stop_after="profile")

    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["stages_done"] == ["validate", "profile"]
    assert client.get(job["links"]["report"]).status_code == 409


def test_rerun_starts_a_new_job_with_the_same_settings(farm_app):
    app, _settings, _db = farm_app
    client = app.test_client()
    first = client.post("/api/v1/jobs", json=job_request(stop_after="validate")).json

    again = client.post(f"/api/v1/jobs/{first['id']}/rerun")

    assert again.status_code == 202
    rerun = client.get(again.headers["Location"]).json
    assert rerun["id"] != first["id"] and rerun["rerun_of"] == first["id"]
    assert {k: rerun[k] for k in ("dataset_name", "device_name", "space", "latency_target_ms", "params")} == \
        {k: first[k] for k in ("dataset_name", "device_name", "space", "latency_target_ms", "params")}


def test_a_second_delivery_leaves_a_stage_whose_lease_is_held(farm_app):
    app, settings, db = farm_app
    client = app.test_client()
    job_id = client.post("/api/v1/jobs", json=job_request(stop_after="validate")).json["id"]
    with db.session() as session:  # as if worker A were running "profile" right now
        job = session.get_one(Job, job_id)
        job.state, job.stage, job.result = "running", "profile", {**job.result, "stages_done": ["validate"]}
        job.lease_owner, job.lease_until = "task-A", utcnow().replace(year=2100)
    before = len(events(db, job_id))

    assert stages.run_stage(db, settings, job_id, "profile", owner="task-B") is None
    assert len(events(db, job_id)) == before  # nothing ran, nothing was recorded


def test_an_expired_lease_is_taken_over_and_recorded(farm_app):
    app, settings, db = farm_app
    client = app.test_client()
    job_id = client.post("/api/v1/jobs", json=job_request(stop_after="profile")).json["id"]
    with db.session() as session:  # worker A died during "profile": its lease ran out
        job = session.get_one(Job, job_id)
        job.state, job.stage = "running", "profile"
        job.result = {"validate": job.result["validate"], "stages_done": ["validate"]}
        job.lease_owner, job.lease_until = "task-A", utcnow().replace(year=2000)

    assert stages.orphaned_stages(db) == [(job_id, "profile", "cpu-1")]
    stages.run_stage(db, settings, job_id, "profile", owner="task-B", celery=app.extensions["automl"].celery)

    with db.session() as session:
        job = session.get_one(Job, job_id)
        assert job.state == "succeeded" and job.recoveries == 1 and job.lease_owner is None
    assert any("resumed: its worker was lost" in e.message for e in events(db, job_id, "log"))


def _running_validate(db: Any, client: Any, owner: str) -> str:
    """A job whose "validate" stage ``owner`` holds right now, its lease about to run out."""
    job_id = client.post("/api/v1/jobs", json=job_request(stop_after="validate")).json["id"]
    with db.session() as session:
        job = session.get_one(Job, job_id)
        job.state, job.stage = "running", "validate"
        job.lease_owner, job.lease_until = owner, utcnow()
    return job_id


def test_a_stage_busy_longer_than_its_lease_keeps_it_while_its_process_lives(farm_app):
    """A step longer than the lease (one L-BFGS step of the privacy audit) without any call into
    the job: the heartbeat keeps the lease, so the sweep does not start a second copy."""
    app, _settings, db = farm_app
    job_id = _running_validate(db, app.test_client(), "task-A")
    assert stages.orphaned_stages(db) == [(job_id, "validate", "cpu-1")]  # without the heartbeat: lost

    with LeaseHeartbeat(db, job_id, "task-A", lease_s=0.3) as heartbeat:
        deadline = time.monotonic() + 30
        while heartbeat.beats < 3 and time.monotonic() < deadline:  # the stage busy for a lease's length
            threading.Event().wait(0.05)
        assert heartbeat.beats >= 3
        assert stages.orphaned_stages(db) == []


def test_the_heartbeat_never_takes_back_a_lease_another_worker_took_over(farm_app):
    app, _settings, db = farm_app
    job_id = _running_validate(db, app.test_client(), "task-A")
    heartbeat = LeaseHeartbeat(db, job_id, "task-A", lease_s=60)
    with db.session() as session:
        session.get_one(Job, job_id).lease_owner = "task-B"

    assert heartbeat.renew() is False
    with db.session() as session:
        assert session.get_one(Job, job_id).lease_owner == "task-B"


def test_a_stage_that_lost_its_lease_midway_leaves_the_result_to_the_worker_that_took_over(farm_app, monkeypatch):
    app, settings, db = farm_app
    job_id = app.test_client().post("/api/v1/jobs", json=job_request(stop_after="validate")).json["id"]
    with db.session() as session:  # back to before its "validate" ran (the eager farm ran it at submission)
        job = session.get_one(Job, job_id)
        job.state, job.stage, job.lease_owner = "running", "validate", None
        job.result = {k: v for k, v in job.result.items() if k not in ("validate", "stages_done")}
    real = stages.get_stage("validate")

    def taken_over_while_running(ctx: Any) -> dict[str, Any]:
        output = real.run(ctx)
        with db.session() as session:  # meanwhile the sweep judged this worker lost and task-B took over
            session.get_one(Job, job_id).lease_owner = "task-B"
        return output

    monkeypatch.setattr(stages, "get_stage", lambda name: dataclasses.replace(real, run=taken_over_while_running))
    assert stages.run_stage(db, settings, job_id, "validate", owner="task-A") is None

    with db.session() as session:
        job = session.get_one(Job, job_id)
        assert job.state == "running" and job.lease_owner == "task-B"
        assert "validate" not in job.result.get("stages_done", [])  # task-B records it, once


@pytest.mark.parametrize("stage", ["profile", "search", "tune", "train", "verify"])
def test_cancel_during_a_stage_stops_it_and_keeps_earlier_work(sqlite_farm_app, stage):
    app, _settings, db = sqlite_farm_app
    client = app.test_client()

    def cancel_once_started() -> None:
        """The user presses cancel as soon as the timeline shows the stage running."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with db.session() as session:
                job_id = session.scalar(select(Job.id))
                started = job_id and session.scalar(select(JobEvent.id).where(
                    JobEvent.job_id == job_id, JobEvent.kind == "state", JobEvent.message == f"stage {stage} started"))
            if started:
                client.post(f"/api/v1/jobs/{job_id}/cancel")
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_once_started)
    watcher.start()
    # The stage under test made long enough that the cancellation lands inside it.
    longer = {"search": {"search_epochs": 40}, "tune": {"tune_epochs": 40}, "train": {"train_epochs": 40}}
    budget = {**SMALL_BUDGET, **longer.get(stage, {})}
    response = client.post("/api/v1/jobs", json=job_request(budget=budget))
    watcher.join(timeout=300)

    job = client.get(f"/api/v1/jobs/{response.json['id']}").json
    order = job["result"]["plan"]  # the stages this job was planned to run, in order
    assert job["state"] == "cancelled" and job["stage"] == stage
    # What was done before is kept; the cancelled stage recorded no output.
    assert job["result"]["stages_done"] == order[: order.index(stage)]
    assert stage not in job["result"]


def test_webhook_receives_every_state_change_signed_with_the_jobs_secret(farm_app):
    import http.server
    import json as jsonlib

    from automl_server.webhooks import verify

    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app, _settings, _db = farm_app
    client = app.test_client()
    try:
        response = client.post("/api/v1/jobs", json=job_request(
            stop_after="validate", webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hooks"))
    finally:
        server.shutdown()
        server.server_close()

    secret = response.json["webhook_secret"]
    assert secret.startswith("whsec_")
    assert client.get(response.headers["Location"]).json["webhook_secret"] is None  # shown once
    for headers, body in received:
        verify(secret, headers, body)  # raises if a signature does not match
    states = [jsonlib.loads(body)["data"]["state"] for _headers, body in received]
    assert states == ["queued", "running", "succeeded"]
    assert len({headers["webhook-id"] for headers, _body in received}) == 3


def test_bad_webhook_url_is_refused_and_nothing_is_stored(farm_app):
    app, _settings, _db = farm_app
    client = app.test_client()

    response = client.post("/api/v1/jobs", json=job_request(webhook_url="ftp://example.org/hook"))

    assert response.status_code == 422 and response.json["field"] == "webhook_url"
    assert "http" in response.json["detail"]
    assert client.get("/api/v1/jobs").json["jobs"] == []


def test_comparison_measures_each_specialised_network_on_every_device(sqlite_farm_app):
    app, _settings, _db = sqlite_farm_app
    client = app.test_client()

    response = client.post("/api/v1/comparisons", json={
        "dataset": "digits", "devices": ["cpu-1", "cpu-2"], "latency_target_ms": 10.0, "space": "tiny",
        "budget": {**SMALL_BUDGET, "tune_trials": 0}, "params": {"calibration_networks": 5}})

    assert response.status_code == 202, response.json
    comparison = client.get(response.headers["Location"]).json
    assert [j["state"] for j in comparison["jobs"]] == ["succeeded", "succeeded"], comparison["jobs"]
    assert comparison["done"] is True
    assert len(comparison["matrix"]) == 2 and all(v is not None and v > 0 for row in comparison["matrix"] for v in row)
    csv_text = client.get(f"{response.headers['Location']}/matrix.csv").data.decode()
    header, *rows = csv_text.strip().splitlines()
    assert header.startswith("specialised_for,latency_ms_on_cpu-1:onnxruntime,latency_ms_on_cpu-2:onnxruntime")
    assert [r.split(",")[0] for r in rows] == ["cpu-1:onnxruntime", "cpu-2:onnxruntime"]
