"""A job that keeps its promise (issue 18, part 3): when the exported network
measures over the target, the job tries the next-faster network of its search
before it reports; when none meets the target, it says so plainly.

Forcing a miss on any machine: the test hook answers a verification as a
device that measured the network at 1.5x the target (the paced figure the
service records is scaled; everything else, the agent's real measurement
included, is the job's real code path). Every tiny network on 8x8 digits runs
in well under the 10 ms target, so an unscaled measurement meets it."""
from __future__ import annotations

from typing import Any

import pytest

import automl_server.profiling as profiling
from automl_server.cli.jobs_cmds import format_report
from automl_server.db.models import Job
from automl_server.settings import Settings
from automl_server.webhooks import event_payload
from tests.server.test_job_pipeline import events, job_request, sqlite_module_farm

TARGET_MS = 10.0
# Each network is timed this many times on the device, its median kept (jobs/deploy.py).
TIMINGS = Settings().network_timings
# One search epoch, no tuning, one training epoch: what is tested is what follows the measurement.
BUDGET = {"warmup_epochs": 1, "search_epochs": 1, "tune_trials": 0, "tune_epochs": 1, "train_epochs": 1}


@pytest.fixture(scope="module")
def farm(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One farm for the module's jobs: the second job finds the ops and networks the first measured."""
    yield from sqlite_module_farm(tmp_path_factory, "promise")


def slow_device(monkeypatch: pytest.MonkeyPatch, over: int) -> list[float]:
    """The first ``over`` timings on the device are answered at 1.5x the target (a network
    verified over the target is timed in two rounds, ``TIMINGS`` each: jobs/deploy.confirm_miss);
    returns the real figures of every timing."""
    real = profiling.paced_measurement
    seen: list[float] = []

    def paced(db: Any, payload: dict[str, Any]) -> dict[str, Any]:
        answer = real(db, payload)
        if "error" not in answer:
            seen.append(answer["measured_ms"])
            if len(seen) <= over:
                return {**answer, "measured_ms": TARGET_MS * 1.5}
        return answer

    monkeypatch.setattr(profiling, "paced_measurement", paced)
    return seen


def run_job(farm, **params: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    app, _settings, _db = farm
    client = app.test_client()
    request = job_request(latency_target_ms=TARGET_MS, budget=BUDGET,
                          params={"calibration_networks": 5, "schedule": False, **params})
    response = client.post("/api/v1/jobs", json=request)
    assert response.status_code == 202, response.json
    job: dict[str, Any] = client.get(response.headers["Location"]).json
    return job


def test_a_network_that_misses_the_target_is_replaced_by_the_next_faster_one(farm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _app, _settings, db = farm
    seen = slow_device(monkeypatch, over=2 * TIMINGS)  # the first network's two rounds

    job = run_job(farm)

    assert job["state"] == "succeeded", job["error"]
    # Every network meets 10 ms: accuracy alone counts and the fit stage has nothing to move.
    assert "accuracy alone counts" in job["result"]["fit"]["skipped"]
    assert len(seen) == 3 * TIMINGS  # the first network measured in two rounds (a miss), then the faster one
    verify, report = job["result"]["verify"], job["result"]["report"]
    first, second = verify["tries"]
    assert (first["measured_ms"], first["meets_target"]) == (TARGET_MS * 1.5, False)
    assert second["meets_target"] is True
    assert second["measured_ms"] == pytest.approx(sorted(seen[2 * TIMINGS:])[(TIMINGS - 1) // 2])  # their median
    assert second["predicted_ms"] < first["predicted_ms"]  # the next-faster network, not the same one again
    assert second["arch"] == job["result"]["retry"]["arch"] == report["arch"]  # the one delivered
    assert job["result"]["target_met"] is True and report["target_met"] is True
    assert [t["try"] for t in report["latency"]["tries"]] == [1, 2]
    # The retry went back to training: train, export and verify ran again for the new network.
    started = [e.stage for e in events(db, job["id"], "state") if e.message.endswith("started")]
    assert started.count("train") == 2 and started.count("export") == 2 and started.count("verify") == 2
    # The promise's own warnings (a 1-epoch job may also warn of a weak search signal, as it should).
    warnings = [e for e in events(db, job["id"], "warning") if "search_signal" not in (e.data or {})]
    assert len(warnings) == 1 and "trying the next-faster network" in warnings[0].message
    assert warnings[0].data["retry"] == 1 and warnings[0].data["measured_ms"] == TARGET_MS * 1.5


def test_a_miss_the_second_round_of_timings_does_not_confirm_trains_nothing_again(farm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The device answers the first round of the network's timings at 1.5x the target (a burst
    of load on a shared device covers a whole round) and the second, real, under it: the job
    keeps the faster round, meets its target and trains no faster network."""
    _app, _settings, db = farm
    seen = slow_device(monkeypatch, over=TIMINGS)

    job = run_job(farm)

    assert job["state"] == "succeeded", job["error"]
    assert len(seen) == 2 * TIMINGS  # one network, timed in two rounds
    verify = job["result"]["verify"]
    again = sorted(seen[TIMINGS:])[(TIMINGS - 1) // 2]  # the second round's median
    assert verify["rounds_ms"] == [pytest.approx(TARGET_MS * 1.5), pytest.approx(again)]
    assert verify["measured_ms"] == pytest.approx(again) and verify["meets_target"] is True
    assert [t["measured_ms"] for t in verify["tries"]] == [pytest.approx(again)]
    assert job["result"]["target_met"] is True and "retry" not in job["result"]
    started = [e.stage for e in events(db, job["id"], "state") if e.message.endswith("started")]
    assert started.count("train") == 1 and started.count("verify") == 1
    (timed_again,) = [e for e in events(db, job["id"], "log")
                      if e.stage == "verify" and "timing it once more" in e.message]  # the user sees why
    assert timed_again.message.startswith("the exported model measured 15 ms, over the 10 ms target")


def test_when_no_network_meets_the_target_the_job_says_so_plainly(farm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _app, _settings, db = farm
    seen = slow_device(monkeypatch, over=99 * TIMINGS)

    # No retries here (their path is the test above): the plain miss, without training twice.
    job = run_job(farm, target_retries=0)

    # Succeeded (the network is trained and exported) with the miss stated everywhere.
    assert job["state"] == "succeeded", job["error"]
    assert len(seen) == 2 * TIMINGS  # one network timed, in two rounds (a miss is timed again)
    assert job["result"]["target_met"] is False
    report = job["result"]["report"]
    assert report["target_met"] is False and "latency target missed" in report["target_missed"]
    assert "measured 15 ms, over the target 10 ms" in report["target_missed"]
    assert [t["meets_target"] for t in report["latency"]["tries"]] == [False]
    warnings = [e.message for e in events(db, job["id"], "warning") if "search_signal" not in (e.data or {})]
    assert len(warnings) == 1 and "latency target missed" in warnings[0] and "1 network(s) tried" in warnings[0]
    final = events(db, job["id"], "state")[-1]
    assert final.data == {"state": "succeeded", "target_met": False}
    assert final.message.startswith("job succeeded, but latency target missed")
    with db.session() as session:  # what a webhook receiver gets for that event
        row = session.get_one(Job, job["id"])
        assert event_payload(row, final)["data"]["target_met"] is False
    assert "TARGET MISSED" in format_report(report)
    # The prediction's interval comes from the predictor's held-out error once it is known (6 usable
    # networks: here the first job's 5 calibration networks plus its verifications, unless flagged noisy).
    error, margin = job["result"]["profile"]["predictor_error"], job["result"]["profile"]["target_margin"]
    predicted = report["latency"]["predicted_ms"]
    if error is None:
        assert report["latency"]["predicted_interval_ms"] is None and "no held-out error" in margin["source"]
    else:
        p95 = error["p95_rel_error"]
        assert report["latency"]["predicted_interval_ms"] == pytest.approx([predicted * (1 - p95),
                                                                            predicted * (1 + p95)], abs=1e-5)
        assert "held-out error" in margin["source"]


def test_target_retries_outside_its_bounds_is_refused_naming_the_field(farm) -> None:  # type: ignore[no-untyped-def]
    app, _settings, _db = farm
    response = app.test_client().post("/api/v1/jobs", json=job_request(params={"target_retries": 9}))

    assert response.status_code in (400, 422)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "target_retries" in response.get_data(as_text=True)


def test_a_retry_moves_every_pipelines_resumable_state_out_of_the_way(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A retry trains another network: FedGKT's workspace, delayed-sgd's checkpoints and the
    training checkpoints go into try-<n>/ (a FedGKT retry once failed loading the missed network's
    edge weights into the new one); the search's checkpoint stays for the next derivation."""
    from types import SimpleNamespace

    from automl_server.jobs.promise import _archive_try

    for name in ("fedgkt/clients/0", "dts", "on_device"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "fedgkt" / "clients" / "0" / "edge.pt").write_bytes(b"old network")
    for name in ("train.ckpt", "search.ckpt", "verify.json", "sparse_update_plan.json"):
        (tmp_path / name).write_text(name)

    _archive_try(SimpleNamespace(job_dir=lambda: tmp_path), 1)  # type: ignore[arg-type]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.ckpt", "try-1"]
    moved = tmp_path / "try-1"
    assert (moved / "fedgkt" / "clients" / "0" / "edge.pt").read_bytes() == b"old network"
    assert {p.name for p in moved.iterdir()} == {"fedgkt", "dts", "on_device", "train.ckpt", "verify.json",
                                                  "sparse_update_plan.json"}


def test_a_retry_aims_by_what_the_predictor_says_of_the_missed_network_now(farm) -> None:  # type: ignore[no-untyped-def]
    """The job's timings calibrate the predictor between the pick of a network and its retry:
    the retry's network must be faster than the missed one by the predictor as it is now (which
    applies the new bound), not by the prediction the missed network had when it was picked. A
    pick-time prediction far above today's (here 3x) once gave a bound over the missed network
    and derived it again. Nor is an earlier try derived again."""
    from automl_server.jobs.context import StageContext
    from automl_server.jobs.search_stage import current_prediction
    from automl_server.jobs.promise import STEP, next_faster
    from automl_server.jobs.stages import stage_params

    app, settings, db = farm
    job = run_job(farm, target_retries=0)
    assert job["state"] == "succeeded", job["error"]
    with db.session() as session:
        row = session.get_one(Job, job["id"])
        ctx = StageContext(db, settings, row.id, "verify", 0, 1, "test", params=stage_params(row),
                           results=dict(row.result))
    arch = job["result"]["report"]["arch"]
    now_ms = current_prediction(ctx)([arch])[0]

    faster = next_faster(ctx, {"arch": arch, "predicted_ms": 3 * now_ms}, measured_ms=1.5 * now_ms)

    assert faster is not None
    assert faster["arch"]["blocks"] != arch["blocks"]
    assert faster["predicted_ms"] <= now_ms * (1 - STEP) * (1 + 1e-6)
    again = next_faster(ctx, {"arch": arch, "predicted_ms": now_ms}, measured_ms=1.5 * now_ms, tried=[faster["arch"]])
    assert again is None or again["arch"]["blocks"] != faster["arch"]["blocks"]
