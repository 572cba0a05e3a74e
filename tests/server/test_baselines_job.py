"""A job with ``params.baselines``: its searched network side by side with
random search and a uniform network at the same latency bound, each trained
with the job's budget and measured on the device (eager Celery, every stage
for real, on SQLite, digits and the tiny space). The baselines themselves are
tested in tests/engine/test_baselines.py."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from tests.server.test_job_pipeline import events, job_request, sqlite_module_farm


# The least search and training a job does: the random search's cost follows the search's.
TINY_BUDGET = {"warmup_epochs": 0, "search_epochs": 1, "tune_trials": 0, "tune_epochs": 1, "train_epochs": 1}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from sqlite_module_farm(tmp_path_factory, "baselines-jobs")


def test_a_job_with_baselines_reports_the_searched_network_beside_random_search_and_a_uniform_network(farm):
    app, _settings, db = farm
    client = app.test_client()
    # A target inside the achievable range, so that the bound leaves some networks out.
    profiled = client.post("/api/v1/jobs", json=job_request(stop_after="profile"))
    low, high = client.get(profiled.headers["Location"]).json["result"]["profile"]["achievable_ms"]

    response = client.post("/api/v1/jobs", json=job_request(
        latency_target_ms=low + 0.6 * (high - low), tune=False, budget=TINY_BUDGET,
        params={"calibration_networks": 5, "baselines": True, "schedule": False}))

    assert response.status_code == 202, response.json
    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["plan"][-3:] == ["verify", "baselines", "report"]
    section = client.get(job["links"]["report"]).json["baselines"]
    rows = {row["method"]: row for row in section["rows"]}
    assert [row["method"] for row in section["rows"]] == ["searched", "random", "uniform"]
    assert section["target_ms"] == job["latency_target_ms"]
    for row in rows.values():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["measured_ms"] > 0 and row["search_cost_s"] >= 0
    for method in ("random", "uniform"):
        # Picked within the bound the device corrected for the job's own network, then measured
        # untrained and moved towards the target's window as that network was (jobs/fit.py).
        assert section["predicted_at_most_ms"] == job["result"]["fit"]["bound_ms"]
        fitted = rows[method]["fitted"]
        assert fitted["tries"][0]["file"] == f"baseline-{method}-fit-1.json"
        assert fitted["tries"][fitted["try"] - 1]["arch"] == rows[method]["arch"]  # the one trained
        assert rows[method]["epochs"] == rows["searched"]["epochs"]  # the same train budget
    assert len(set(rows["uniform"]["arch"]["blocks"]) - {"zero"}) == 1  # one block type everywhere
    assert rows["random"]["networks"] >= 3 == len(rows["random"]["tried"][:3])
    # The stage reported its progress while it ran.
    progress = [e for e in events(db, job["id"], "progress") if e.stage == "baselines"]
    assert any("random search" in e.message for e in progress)
    assert any("training the uniform baseline" in e.message for e in progress)


def test_a_bad_baselines_value_is_refused_naming_the_field(farm):
    client = farm[0].test_client()

    response = client.post("/api/v1/jobs", json=job_request(params={"baselines": "sometimes"}))

    assert response.status_code == 422
    assert response.json["field"] == "params.baselines"


def test_a_cancel_during_random_search_stops_the_job_between_networks(farm, monkeypatch):
    from sqlalchemy import update

    from automl_server.db.models import Job
    from automl_server.engine import baselines

    app, _settings, db = farm
    client = app.test_client()
    searched = baselines.random_search

    def cancelled_after_the_first_network(*args: Any, on_network: Any, **kwargs: Any) -> Any:
        def cancel_then_report(tried: Any, number: int) -> None:
            with db.session() as session:  # what POST /jobs/{id}/cancel does
                session.execute(update(Job).where(Job.state == "running").values(cancel_requested=True))
            on_network(tried, number)

        return searched(*args, on_network=cancel_then_report, **kwargs)

    monkeypatch.setattr(baselines, "random_search", cancelled_after_the_first_network)

    response = client.post("/api/v1/jobs", json=job_request(
        tune=False, budget=TINY_BUDGET, params={"calibration_networks": 5, "baselines": True, "schedule": False}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "cancelled"
    assert "verify" in job["result"]["stages_done"] and "baselines" not in job["result"]["stages_done"]
    tried = [e for e in events(db, job["id"], "metric") if e.stage == "baselines" and "network" in e.data]
    assert [e.data["network"] for e in tried] == [1]


def test_a_baseline_measured_over_the_target_is_replaced_by_a_faster_one(farm, monkeypatch):
    """As the job's own network (tests/server/test_promise.py): the device's answer for the
    uniform network's first measurement (its answer file named) is scaled to 1.1x the
    target; every other answer, and everything else, is the job's real path."""
    import automl_server.profiling as profiling
    from automl_server.jobs.promise import STEP

    app, _settings, db = farm
    client = app.test_client()
    profiled = client.post("/api/v1/jobs", json=job_request(stop_after="profile"))
    low, high = client.get(profiled.headers["Location"]).json["result"]["profile"]["achievable_ms"]
    target_ms = low + 0.9 * (high - low)  # room under the target for a faster uniform network
    # Which baseline's answer is being made: an eager Celery answers inside send_measurement.
    from automl_server.jobs import baselines

    real_paced, real_send, sending, answers = profiling.paced_measurement, baselines.send_measurement, [], {}

    def send(ctx: Any, target: Any, arch: Any, exported: Any, result_file: str) -> None:
        sending.append(result_file)
        try:
            real_send(ctx, target, arch, exported, result_file)
        finally:
            sending.pop()

    def paced(db: Any, payload: dict[str, Any]) -> dict[str, Any]:
        answer = real_paced(db, payload)
        if "error" not in answer and sending:
            answers[sending[-1]] = answer["measured_ms"]
            if sending[-1] == "baseline-uniform.json":  # the uniform network's first answer
                return {**answer, "measured_ms": target_ms * 1.1}
        return answer

    monkeypatch.setattr(baselines, "send_measurement", send)
    monkeypatch.setattr(profiling, "paced_measurement", paced)

    response = client.post("/api/v1/jobs", json=job_request(
        latency_target_ms=target_ms, tune=False, budget=TINY_BUDGET,
        params={"calibration_networks": 5, "baselines": True, "schedule": False}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    rows = {row["method"]: row for row in client.get(job["links"]["report"]).json["baselines"]["rows"]}
    uniform = rows["uniform"]
    (missed,) = uniform["tries"]
    assert missed["measured_ms"] == pytest.approx(target_ms * 1.1)
    assert uniform["predicted_ms"] <= missed["predicted_ms"] * (1 - STEP)  # a faster network, not the same
    assert uniform["arch"] != missed["arch"]
    # Measured again, for real, under its own answer file.
    assert set(answers) == {"baseline-random.json", "baseline-uniform.json", "baseline-uniform-try-2.json"}
    assert uniform["measured_ms"] == pytest.approx(answers["baseline-uniform-try-2.json"])
    assert uniform["meets_target"] is True and uniform["epochs"] == rows["searched"]["epochs"]  # same budget
    assert "tries" not in rows["random"]  # random search's network met the target: kept
    warnings = [e.message for e in events(db, job["id"], "warning") if e.stage == "baselines"]
    assert any(w.startswith("the uniform baseline measured") and "trying a faster one" in w for w in warnings)
    trained = [e for e in events(db, job["id"], "progress")
               if e.stage == "baselines" and "training the uniform baseline" in e.message]
    assert len(trained) == 2  # trained once more for the faster network
