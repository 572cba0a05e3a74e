"""The schedule stage in a job, in-process (eager Celery: the agent's tasks
run inside the request): an IOS schedule of the exported network with its
stage latencies measured through the agent protocol and kept in the latency
database, so a second job on the same device measures none."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from automl_server.jobs import stages
from tests.conftest import _forget_database
from tests.server.test_job_pipeline import make_farm, submit

FAST_BUDGET = {"warmup_epochs": 1, "search_epochs": 1, "tune_trials": 1, "tune_epochs": 1, "train_epochs": 1}


@pytest.fixture
def farm(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
    upgrade(get_database(url))
    yield make_farm(tmp_path, url)
    _forget_database(url)


def test_the_schedule_stage_follows_export_and_can_be_skipped():
    plan = stages.plan_for({})
    assert plan[plan.index("export") + 1] == "schedule"
    assert "schedule" not in stages.plan_for({"schedule": False})


def test_a_runtime_ios_cannot_run_has_no_schedule_stage():
    """LiteRT has no per-operator entry point: its jobs are planned without the stage
    instead of failing in it (tests/server/test_api_jobs.py: through the API)."""
    assert "schedule" in stages.plan_for({"runtime": "onnxruntime"})
    assert "schedule" not in stages.plan_for({"runtime": "litert"})


def test_a_job_schedules_its_network_and_a_second_job_reuses_the_stage_costs(farm):  # type: ignore[no-untyped-def]
    app, settings, _db = farm
    client = app.test_client()
    first = submit(client, stop_after="schedule", budget=FAST_BUDGET, tune=False)
    assert first["state"] == "succeeded", first["error"]
    out = first["result"]["schedule"]
    # Every candidate stage was measured on the device, none was known before.
    assert out["stages_measured"] == out["candidate_stages"] > 0 and out["stages_reused"] == 0
    assert set(out["latency_ms"]) >= {"sequential", "greedy", "ort_parallel", "ios"}
    assert all(out["latency_ms"][m] > 0 for m in ("sequential", "greedy", "ort_parallel", "ios"))
    # Never a slower schedule deployed.
    assert out["deployed"] == ("ios" if out["latency_ms"]["ios"] < out["latency_ms"]["sequential"] else "sequential")
    ops = sum(len(g) for s in out["stages"] for g in s["groups"])
    assert ops == out["ops"]  # every operator scheduled once
    schedule = json.loads((Path(settings.artifacts_dir) / first["id"] / "schedule.json").read_text())
    assert schedule["format"] == "ios-schedule/1" and schedule["deployed"] == out["deployed"]

    second = submit(client, stop_after="schedule", budget=FAST_BUDGET, tune=False)
    assert second["state"] == "succeeded", second["error"]
    again = second["result"]["schedule"]
    # The same seed finds the same network: every stage cost comes from the database.
    assert again["candidate_stages"] == out["candidate_stages"]
    assert again["stages_measured"] == 0 and again["stages_reused"] == again["candidate_stages"]


def test_the_report_advises_the_plain_runtime_only_when_its_whole_graph_run_beat_the_deployed_schedule():
    from automl_server.jobs.schedule import whole_graph_advice

    latency = {"sequential": 5.8, "ios": 4.5, "ort_sequential": 1.5, "ort_parallel": 2.7}
    advice = whole_graph_advice(latency, "ios")
    assert advice is not None and "sequential mode" in advice and "1.5 ms" in advice and "ios schedule (4.5 ms)" in advice
    assert whole_graph_advice({**latency, "ort_sequential": 4.6, "ort_parallel": 4.7}, "ios") is None
    assert "parallel mode" in whole_graph_advice({**latency, "ort_sequential": None}, "ios")
    assert whole_graph_advice({"sequential": 5.8, "ios": None}, "sequential") is None


def test_stages_are_sent_again_only_after_ten_minutes_without_one_arriving():
    from automl_server.jobs.schedule import RESEND_AFTER_S, should_send_stages

    state: dict = {}
    assert should_send_stages(state, 3670, now=0.0)  # first: send every missing stage
    state["stages_sent_at"] = 0.0
    # Stages keep arriving: no resend, however long the whole measurement takes.
    for minute in range(1, 30):
        assert not should_send_stages(state, 3670 - 120 * minute, now=60.0 * minute)
    # Then none arrives for the resend delay: the rest is sent again.
    last = 60.0 * 29
    assert not should_send_stages(state, 3670 - 120 * 29, now=last + RESEND_AFTER_S - 1)
    assert should_send_stages(state, 3670 - 120 * 29, now=last + RESEND_AFTER_S + 1)
