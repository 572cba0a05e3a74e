"""/api/v1/jobs: the operation resource, idempotent creation, cancellation,
the timeline (paged and streamed) and the first real stage (validation)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from automl_server.db.engine import get_database
from automl_server.db.models import Job
from automl_server.jobs import stages
from tests.datasets import archives
from tests.server.test_api_datasets import upload

DEVICE = {"name": "pi-4", "kind": "raspberry-pi", "runtimes": [{"name": "litert", "version": "2.3"},
                                                              {"name": "onnxruntime", "version": "1.31"}]}


@pytest.fixture
def dataset(client, tmp_path):  # type: ignore[no-untyped-def]
    path = archives.good_zip(tmp_path, classes=("cat", "dog", "fox"), per_class=5, size=(12, 12))
    return upload(client, path, name="pets").json


@pytest.fixture
def device(client):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/devices", json=DEVICE).json


def job_request(**overrides):  # type: ignore[no-untyped-def]
    # stop_after: these tests are about the job resource; whole jobs run in test_job_pipeline.py.
    return {"dataset": "pets", "device": "pi-4", "latency_target_ms": 25.0, "stop_after": "validate", **overrides}


def all_events(client, job_id: str, page_size: int = 100) -> list[dict]:
    events, token = [], None
    while True:
        query = {"page_size": page_size} | ({"page_token": token} if token else {})
        page = client.get(f"/api/v1/jobs/{job_id}/events", query_string=query).json
        events += page["events"]
        token = page["next_page_token"]
        if not token:
            return events


def test_job_runs_validation_stage_to_success(client, settings, dataset, device):
    response = client.post("/api/v1/jobs", json=job_request())

    assert response.status_code == 202
    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded" and job["done"] and job["progress"] == 1.0
    assert job["runtime"] == "litert"  # the device's first runtime by default
    stats = job["result"]["validate"]
    assert stats["num_samples"] == 15 and stats["class_counts"] == {"cat": 5, "dog": 5, "fox": 5}
    assert stats["image_shape"] == [12, 12, 3]
    assert stats["train_samples"] + stats["holdout_samples"] + stats["test_samples"] == 15
    assert stats["test_samples"] == 3 and stats["holdout_samples"] == 3
    arrays = np.load(settings.artifacts_dir / job["id"] / "dataset.npz")
    assert arrays["x"].shape == (15, 12, 12, 3) and sorted(arrays["y"].tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    splits = [set(arrays[name].tolist()) for name in ("train_idx", "holdout_idx", "test_idx")]
    assert sum(map(len, splits)) == len(set().union(*splits)) == 15  # disjoint, and every sample used


def test_timeline_records_states_progress_and_metrics_in_order(client, dataset, device):
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]

    events = all_events(client, job_id, page_size=2)

    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert events[0]["message"] == "job queued" and events[-1]["message"] == "job succeeded"
    progress = [e["data"]["progress"] for e in events if e["kind"] == "progress"]
    assert progress == sorted(progress) and len(progress) >= 3
    metric = next(e for e in events if e["kind"] == "metric")
    assert metric["stage"] == "validate" and metric["data"]["num_classes"] == 3


def test_event_stream_sends_every_event_then_ends(client, dataset, device):
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]
    expected = [e["id"] for e in all_events(client, job_id)]

    response = client.get(f"/api/v1/jobs/{job_id}/events/stream")
    text = response.get_data(as_text=True)
    resumed = client.get(f"/api/v1/jobs/{job_id}/events/stream", headers={"Last-Event-ID": str(expected[1])})

    assert response.mimetype == "text/event-stream"
    streamed = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert streamed == expected
    assert text.rstrip().endswith("event: end\ndata: {}")
    resumed_ids = [int(line[4:]) for line in resumed.get_data(as_text=True).splitlines() if line.startswith("id: ")]
    assert resumed_ids == expected[2:]


def test_idempotency_key_makes_retries_return_the_same_job(client, dataset, device):
    headers = {"Idempotency-Key": "pipeline-run-42"}

    first = client.post("/api/v1/jobs", json=job_request(), headers=headers)
    retry = client.post("/api/v1/jobs", json=job_request(), headers=headers)

    assert first.status_code == 202 and retry.status_code == 200
    assert retry.json["id"] == first.json["id"]
    assert len(client.get("/api/v1/jobs").json["jobs"]) == 1


def test_idempotency_key_reused_for_another_request_is_refused(client, dataset, device):
    headers = {"Idempotency-Key": "k1"}
    client.post("/api/v1/jobs", json=job_request(), headers=headers)

    response = client.post("/api/v1/jobs", json=job_request(latency_target_ms=99), headers=headers)

    assert response.status_code == 422
    assert response.json["field"] == "Idempotency-Key"
    assert len(client.get("/api/v1/jobs").json["jobs"]) == 1


@pytest.mark.parametrize(("overrides", "field", "named"), [
    ({"dataset": "missing"}, "dataset", "missing"),
    ({"device": "phone-9"}, "device", "phone-9"),
    ({"runtime": "tensorrt"}, "runtime", "litert, onnxruntime"),
    ({"latency_target_ms": -1}, "latency_target_ms", "greater than 0"),
    ({"pipeline": "magic"}, "pipeline", "'standard'"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"params": {"final_fit": "everything"}}, "params.final_fit", "'train+holdout'"),
])
def test_bad_job_request_names_the_field(client, dataset, device, overrides, field, named):
    response = client.post("/api/v1/jobs", json=job_request(**overrides))

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["field"] == field
    assert named in response.json["detail"]
    assert client.get("/api/v1/jobs").json["jobs"] == []


def test_non_json_body_is_refused(client):
    response = client.post("/api/v1/jobs", data="dataset=pets", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415
    assert "application/json" in response.json["detail"]


def test_cancel_queued_job_then_worker_leaves_it_cancelled(queued_app, settings, tmp_path):
    client = queued_app.test_client()
    upload(client, archives.good_npz(tmp_path), name="pets")
    client.post("/api/v1/devices", json=DEVICE)
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]
    assert client.get(f"/api/v1/jobs/{job_id}").json["state"] == "queued"

    cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel")
    # The message is still on the broker; a worker picking it up must not run it.
    stages.run_stage(get_database(settings.resolved_database_url), settings, job_id, "validate")

    assert cancelled.status_code == 202 and cancelled.json["state"] == "cancelled"
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "cancelled" and "validate" not in job["result"]


def job_in_stage(queued_app, settings, tmp_path, stage: str):  # type: ignore[no-untyped-def]
    """A job on a fresh upload with ``stage`` started (no worker runs it), and that stage's context."""
    client = queued_app.test_client()
    upload(client, archives.good_npz(tmp_path), name="pets")
    client.post("/api/v1/devices", json=DEVICE)
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]
    db = get_database(settings.resolved_database_url)
    with db.session() as session:
        stages.service.start_stage(session, session.get_one(Job, job_id), stage, 0.0)
    return client, job_id, stages.StageContext(db, settings, job_id, stage, 0, 1, lease_owner="worker-1")


def test_cancel_running_job_stops_it_at_the_next_checkpoint(queued_app, settings, tmp_path):
    client, job_id, ctx = job_in_stage(queued_app, settings, tmp_path, "validate")

    response = client.post(f"/api/v1/jobs/{job_id}/cancel")

    assert response.json["state"] == "running" and response.json["cancel_requested"]
    with pytest.raises(stages.service.JobCancelled):
        ctx.progress(0.5, "halfway")


def test_a_search_epoch_run_again_by_a_resumed_stage_is_on_the_timeline_once(queued_app, settings, tmp_path):
    # run_search reports an epoch, then checkpoints it: a stage lost between the two (its worker, or the
    # database's answer to the report's commit) runs that epoch again from the same checkpoint on resume.
    from automl_server.engine.search import EpochReport
    from automl_server.jobs.search_stage import epoch_event

    client, job_id, ctx = job_in_stage(queued_app, settings, tmp_path, "search")

    def report(epoch: int) -> EpochReport:
        return EpochReport(epoch=epoch, total_epochs=3, phase="warmup", weight_loss=1.0, arch_loss=None,
                           train_accuracy=0.5, holdout_accuracy=0.5, expected_latency_ms=1.0,
                           block_probs=[[0.5, 0.5]], derived_blocks=["mb3_k3"])

    for epoch in (1, 2, 2, 3):  # epoch 2 again after a resume
        epoch_event(ctx, report(epoch), time.monotonic())

    metrics = [e for e in all_events(client, job_id) if e["kind"] == "metric" and e["stage"] == "search"]
    assert [e["data"]["epoch"] for e in metrics] == [1, 2, 3]
    # The progress bar still moves on every report (its messages are not deduplicated).
    assert client.get(f"/api/v1/jobs/{job_id}").json["progress"] == 1.0


def test_cancel_finished_job_is_a_conflict(client, dataset, device):
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]

    response = client.post(f"/api/v1/jobs/{job_id}/cancel")

    assert response.status_code == 409
    assert "succeeded" in response.json["detail"]


def test_stage_delivered_twice_runs_once(client, settings, dataset, device):
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]
    before = all_events(client, job_id)

    stages.run_stage(get_database(settings.resolved_database_url), settings, job_id, "validate")

    assert all_events(client, job_id) == before


def test_dataset_changed_on_disk_fails_the_job_with_the_reason(queued_app, settings, tmp_path):
    client = queued_app.test_client()
    ds = upload(client, archives.good_npz(tmp_path), name="pets").json
    client.post("/api/v1/devices", json=DEVICE)
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]
    (settings.datasets_dir / ds["id"] / "data.npz").write_bytes(b"tampered")

    stages.run_stage(get_database(settings.resolved_database_url), settings, job_id, "validate")

    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "failed" and "SHA-256" in job["error"]


def test_dataset_in_use_cannot_be_deleted(queued_app, tmp_path):
    client = queued_app.test_client()
    upload(client, archives.good_npz(tmp_path), name="pets")
    client.post("/api/v1/devices", json=DEVICE)
    job_id = client.post("/api/v1/jobs", json=job_request()).json["id"]

    response = client.delete("/api/v1/datasets/pets")

    assert response.status_code == 409 and job_id in response.json["detail"]
    assert client.get("/api/v1/datasets/pets").status_code == 200


def test_list_filters_by_state_and_pages(client, dataset, device):
    ids = [client.post("/api/v1/jobs", json=job_request()).json["id"] for _ in range(3)]

    first = client.get("/api/v1/jobs", query_string={"page_size": 2, "state": "succeeded"}).json
    second = client.get("/api/v1/jobs", query_string={"page_size": 2, "page_token": first["next_page_token"],
                                                      "state": "succeeded"}).json
    failed = client.get("/api/v1/jobs", query_string={"state": "failed"}).json

    listed = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert sorted(listed) == sorted(ids) and second["next_page_token"] is None
    assert listed == [j["id"] for j in sorted(first["jobs"] + second["jobs"], key=lambda j: (j["created_at"], j["id"]),
                                              reverse=True)]
    assert failed["jobs"] == []


def test_the_list_writes_what_the_job_resources_say_and_follows_every_change(client, settings, dataset, device):
    from automl_server.api.jobs import to_out
    from automl_server.api.schemas import JobList

    ids = [client.post("/api/v1/jobs", json=job_request()).json["id"] for _ in range(3)]
    before = client.get("/api/v1/jobs", query_string={"page_size": 2})
    with get_database(settings.resolved_database_url).session() as session:
        job = session.get(Job, ids[-1])
        job.result = {**job.result, "note": "changed"}
        job.progress = 0.5
    after = client.get("/api/v1/jobs", query_string={"page_size": 2})
    with get_database(settings.resolved_database_url).session() as session:
        newest = sorted(session.query(Job).all(), key=lambda j: (j.created_at, j.id), reverse=True)
        expected = JobList(jobs=[to_out(j) for j in newest[:2]], next_page_token=after.json["next_page_token"])

    assert after.data.decode() == expected.model_dump_json()  # byte for byte what pydantic would write
    assert [j["id"] for j in after.json["jobs"]] == [ids[2], ids[1]] and after.json["next_page_token"]
    changed = after.json["jobs"][0]
    assert changed["result"]["note"] == "changed" and changed["progress"] == 0.5
    assert before.json["jobs"][0]["progress"] != 0.5 and "note" not in before.json["jobs"][0]["result"]
    assert after.json["jobs"][1] == before.json["jobs"][1]


def test_job_resource_links_resolve(client, dataset, device):
    job = client.post("/api/v1/jobs", json=job_request()).json

    for link in ("self", "events", "stream"):
        assert client.get(job["links"][link]).status_code == 200
    assert json.loads(json.dumps(job))["links"]["cancel"].endswith("/cancel")


def test_job_and_comparison_naming_a_runtime_the_device_lacks_are_refused_at_submission(client, dataset, device):
    # The case: runtime "l20" was accepted and failed later, in profile.
    job = client.post("/api/v1/jobs", json=job_request(runtime="l20"))
    comparison = client.post("/api/v1/comparisons", json={
        "dataset": "pets", "devices": ["pi-4:onnxruntime", "pi-4:l20"], "latency_target_ms": 25.0})

    assert job.status_code == 422 and job.json["field"] == "runtime"
    assert job.json["detail"] == "device 'pi-4' has no runtime 'l20'; accepted: litert, onnxruntime"
    assert comparison.status_code == 422 and comparison.json["field"] == "devices.1"
    assert "has no runtime 'l20'; accepted: litert, onnxruntime" in comparison.json["detail"]
    assert client.get("/api/v1/jobs").json["jobs"] == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data",
                                 "http://localhost:8000/api/v1/devices"])
def test_job_with_a_webhook_to_a_private_address_is_refused_and_nothing_is_stored(client, dataset, device, url):
    response = client.post("/api/v1/jobs", json=job_request(webhook_url=url))

    assert response.status_code == 422 and response.json["field"] == "webhook_url"
    assert "AUTOML_WEBHOOK_ALLOW_PRIVATE=1" in response.json["detail"]
    assert client.get("/api/v1/jobs").json["jobs"] == []


def test_a_job_on_the_devices_default_litert_runtime_is_planned_without_the_schedule(
        queued_app, dataset, device):  # type: ignore[no-untyped-def]
    """The device's first runtime (LiteRT) is a job's default; IOS does not run on it, so the
    plan leaves the schedule out (a job once failed there after hours of training). Queued,
    not run: the whole plan is kept."""
    client = queued_app.test_client()
    job = client.post("/api/v1/jobs", json=job_request(stop_after=None)).json
    assert job["runtime"] == "litert"
    plan = job["result"]["plan"]
    assert "export" in plan and "schedule" not in plan
    onnx_job = client.post("/api/v1/jobs", json=job_request(runtime="onnxruntime", stop_after=None)).json
    assert "schedule" in onnx_job["result"]["plan"]
