"""Each built-in pipeline run by a job (eager Celery, every stage for real, on
SQLite): delayed-sgd through torchrun workers, fedgkt through Flower's
SuperLink and SuperNodes, and sparse-update fine-tuning a finished job's
network on another dataset (digits 0-4 -> 5-9). Tiny settings: what is
checked is that the job runs the pipeline and reports what it did; the
algorithms are tested in tests/engine/*."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from automl_server.engine.train.fedgkt.pipeline import auto_client_epochs
from tests.server.test_job_pipeline import SMALL_BUDGET, events, job_request, sqlite_module_farm


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from sqlite_module_farm(tmp_path_factory, "pipeline-jobs")


def run_job(client: Any, **overrides: Any) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", json=job_request(tune=False, **overrides))
    assert response.status_code == 202, response.json
    job: dict[str, Any] = client.get(response.headers["Location"]).json
    return job


@pytest.fixture(scope="module")
def parent(farm: Any) -> dict[str, Any]:
    """A finished job on digits 0-4: the network the sparse-update jobs fine-tune."""
    job = run_job(farm[0].test_client(), dataset="digits-0-4", stop_after="train")
    assert job["state"] == "succeeded", job["error"]
    return job


# The audit in the job, kept tiny: what is checked is that it attacks what the pipeline
# shares and reports it; the attacks themselves are tested in tests/engine/privacy.
TINY_AUDIT = {"samples": 2, "iterations": 1, "defense_samples": 1, "prune_sparsities": [0.9],
              "noise_variances": [0.01], "larger_batch": 2, "cost_steps": 2}


def assert_audited(job: dict[str, Any], farm: Any, *, traffic: str, defended: bool = True) -> None:
    """The audit ran after training, on what the pipeline sends, and left the trained model as it was."""
    from sqlalchemy import select

    from automl_server.db.models import Artifact
    from automl_server.files import sha256_of

    _app, settings, db = farm
    result = job["result"]
    assert result["plan"].index("audit") == result["plan"].index("train") + 1
    audit = result["audit"]
    assert audit["traffic"] == traffic and audit["complete"] and audit["not_run"] == []
    job_row = audit["rows"][0]
    assert job_row["kind"] == "job" and job_row["images"] >= 2
    assert job_row["psnr_db"] is not None and -1.0 <= job_row["ssim"] <= 1.0
    if defended:
        assert {r["kind"] for r in audit["rows"][1:]} >= {"prune", "gaussian"}
    assert all(r["accuracy_cost"] is not None for r in audit["rows"] if r["kind"] in ("prune", "gaussian"))
    with db.session() as session:
        artifacts = {a.kind: (a.path, a.sha256, a.size_bytes)
                     for a in session.scalars(select(Artifact).where(Artifact.job_id == job["id"]))}
    assert artifacts["privacy_grid"][2] > 0 and audit["grid"].endswith("/artifacts/privacy_grid")
    # model.pt still holds what the train stage stored (its checksum was taken then).
    weights_path, weights_sha, _ = artifacts["weights"]
    assert sha256_of(settings.data_dir / weights_path) == weights_sha


def test_a_sparse_update_job_fine_tunes_a_finished_jobs_network_on_other_classes(farm, parent):
    app, _settings, db = farm
    job = run_job(app.test_client(), dataset="digits-5-9", pipeline="sparse-update", params={
        "calibration_networks": 5,
        "sparse_update": {"parent_job": parent["id"], "epochs": 1, "scheme": "bias-only",
                          "compare_baselines": False, "measure_peak_rss": False}})

    assert job["state"] == "succeeded", job["error"]
    result = job["result"]
    assert result["plan"] == ["validate", "profile", "adopt", "train", "export", "schedule", "verify", "report"]
    assert result["adopt"]["parent_job"] == parent["id"] and result["adopt"]["arch"]["num_classes"] == 5
    report = result["train"]["sparse-update"]
    assert report["scheme"]  # which layers and channels were updated
    logs = [e.message for e in events(db, job["id"], "log")]
    assert any(f"starting from job {parent['id']}'s weights" in m for m in logs)
    assert result["verify"]["measured_ms"] > 0  # the fine-tuned network was exported and measured


@pytest.mark.parametrize(("settings", "named"), [
    ({"parent_job": "no-such-job"}, "no job 'no-such-job'"),
    ({"memory_budget_kb": -1}, "greater than 0"),
])
def test_a_bad_sparse_update_setting_is_refused_naming_the_field(farm, settings, named):
    client = farm[0].test_client()
    response = client.post("/api/v1/jobs", json=job_request(dataset="digits-5-9", pipeline="sparse-update",
                                                            params={"sparse_update": settings}))

    assert response.status_code == 422
    assert response.json["field"] == f"params.sparse_update.{next(iter(settings))}"
    assert named in response.json["detail"]


def test_a_parent_of_another_image_size_is_refused(farm, parent):
    client = farm[0].test_client()
    response = client.post("/api/v1/jobs", json=job_request(dataset="mnist-5k", pipeline="sparse-update",
                                                            params={"sparse_update": {"parent_job": parent["id"]}}))

    assert response.status_code == 422
    assert response.json["field"] == "params.sparse_update.parent_job"
    assert "8x8x1 images" in response.json["detail"]


def test_a_delayed_sgd_job_trains_with_torchrun_workers_and_reports_their_traffic(farm):
    app, _settings, db = farm
    job = run_job(app.test_client(), pipeline="delayed-sgd", stop_after="export", budget=SMALL_BUDGET, params={
        "calibration_networks": 5, "distributed": {"workers": 2, "epochs": 1, "delay": 1, "period": 1,
                                                   "batch_size": 16},  # the audit attacks a batch of 16
        "privacy_audit": {**TINY_AUDIT, "defenses": False}})  # defenses: in the fedgkt job and tests/engine

    assert job["state"] == "succeeded", job["error"]
    assert_audited(job, farm, traffic="gradients", defended=False)
    report = job["result"]["train"]["delayed-sgd"]
    assert report["workers"] == 2 and report["bytes_sent_per_step"] > 0
    epochs = [e.data for e in events(db, job["id"], "metric") if e.stage == "train"]
    assert len(epochs) == 1 and 0.0 <= epochs[0]["comm_wait_share"] <= 1.0
    assert job["result"]["export"]["onnx"]


def test_a_fedgkt_job_trains_through_flower_clients_and_reports_each_round(farm):
    app, _settings, db = farm
    job = run_job(app.test_client(), pipeline="fedgkt", stop_after="export", budget=SMALL_BUDGET, params={
        "calibration_networks": 5, "fedgkt": {"clients": 2, "rounds": 1, "baselines": False},
        "privacy_audit": TINY_AUDIT})

    assert job["state"] == "succeeded", job["error"]
    assert_audited(job, farm, traffic="features")
    report = job["result"]["train"]["fedgkt"]
    assert report["clients"] == 2 and len(report["client_histograms"]) == 2
    # client_epochs was left to the job: chosen from the shards' size, and said in the report
    shard_sizes = [sum(histogram) for histogram in report["client_histograms"]]
    assert report["client_epochs"] == auto_client_epochs(shard_sizes, job["params"]["batch_size"])
    assert report["bytes_per_round"][0]["up"] > 0 and report["bytes_per_round"][0]["down"] > 0
    rounds = [e.data for e in events(db, job["id"], "metric") if e.data.get("phase") == "fedgkt"]
    assert [r["round"] for r in rounds] == [1]
    assert job["result"]["export"]["onnx"]


def test_fedgkt_on_a_space_with_parallel_branches_is_refused_at_submission(farm):
    client = farm[0].test_client()
    response = client.post("/api/v1/jobs", json=job_request(space="tiny-branches", pipeline="fedgkt"))

    assert response.status_code == 422
    assert response.json["field"] == "params.fedgkt" and "chain" in response.json["detail"]


def test_a_pipeline_check_names_the_setting_once(farm):
    client = farm[0].test_client()
    # digits: ~1,400 training images, 2 workers x 64 a step: 11 steps an epoch, so a delay of 20 cannot fit.
    response = client.post("/api/v1/jobs", json=job_request(pipeline="delayed-sgd",
                                                            params={"distributed": {"delay": 20}}))

    assert response.status_code == 422, response.json
    assert response.json["field"] == "params.distributed.delay" and "epoch" in response.json["detail"]


def test_automl_audit_audits_a_finished_job_and_adds_its_privacy_section(farm, parent):
    from automl_server.jobs.audit_finished import AuditRefused, audit_finished_job

    _app, settings, db = farm
    messages: list[str] = []
    section = audit_finished_job(db, settings, parent["id"], {**TINY_AUDIT, "defenses": False},
                                 report=lambda fraction, message: messages.append(message))

    job = farm[0].test_client().get(f"/api/v1/jobs/{parent['id']}").json
    assert job["state"] == "succeeded" and job["result"]["audit"] == section
    assert section["pipeline"] == "standard" and "sends no gradient" in section["note"]
    assert [r["kind"] for r in section["rows"]] == ["job", "none"] and messages
    with pytest.raises(AuditRefused, match="no job 'nope'"):
        audit_finished_job(db, settings, "nope", {})
