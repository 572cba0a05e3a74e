"""A job with ``params.baselines``: its searched network side by side with
random search and a uniform network at the same latency bound, each trained
with the job's budget and measured on the device (eager Celery, every stage
for real, on SQLite, digits and the tiny space). The baselines themselves are
tested in tests/engine/test_baselines.py."""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from tests.server.device_answers import rewrite_answers
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


def over_target_answers(monkeypatch: pytest.MonkeyPatch, target_ms: float, over: Any) -> dict[str, float]:
    """The device's answer for each baseline result file for which ``over(file)`` is true
    scaled to 1.1x the target; returns every baseline answer's real figures (one per timing) by file."""
    from automl_server.jobs import baselines

    answers: dict[str, list[float]] = {}

    def rewrite(file: str | None, answer: dict[str, Any]) -> dict[str, Any]:
        if file is None:
            return answer
        answers.setdefault(file, []).append(answer["measured_ms"])
        return {**answer, "measured_ms": target_ms * 1.1} if over(file) else answer

    rewrite_answers(monkeypatch, baselines, rewrite)
    return answers


def kept(timings: list[float]) -> float:
    """The figure a network timed several times reports: the median, the faster middle one of an
    even count (jobs/deploy.py: combined_timings)."""
    return sorted(timings)[(len(timings) - 1) // 2]


def final_ms(answers: dict[str, list[float]], file: str) -> float:
    """What a baseline answered in ``file`` reports: its round's median or, where it missed and was
    timed once more (``file``'s ``-again`` round, jobs/deploy.confirm_miss), the faster round's."""
    again = file.removesuffix(".json") + "-again.json"
    return min(kept(answers[file]), kept(answers[again])) if again in answers else kept(answers[file])


def upper_target(client: Any) -> float:
    """A target near the top of the achievable range: room under it for faster baselines."""
    profiled = client.post("/api/v1/jobs", json=job_request(stop_after="profile"))
    low, high = client.get(profiled.headers["Location"]).json["result"]["profile"]["achievable_ms"]
    return float(low + 0.9 * (high - low))


def test_a_baseline_measured_over_the_target_is_replaced_by_a_faster_one(farm, monkeypatch):
    """As the job's own network (tests/server/test_promise.py): the device's answer for each
    baseline's first measurement after training (its answer file named) is scaled to 1.1x
    the target; every other answer, and everything else, is the job's real path. After the
    fit, the retry aims where a network measured like the miss lands on the window's middle
    (``MOVE_TOP`` x target x predicted / measured, by hand), at least ``STEP`` under the
    miss; random search keeps to that move's band when it has (or can draw) a network there."""
    from automl_server.jobs.margin import MOVE_TOP, WINDOW_LOW
    from automl_server.jobs.promise import STEP

    app, _settings, db = farm
    client = app.test_client()
    target_ms = upper_target(client)
    # Both rounds of each baseline's first measurement (a miss is timed once more before a retry).
    answers = over_target_answers(monkeypatch, target_ms, lambda file: file in (
        "baseline-uniform.json", "baseline-uniform-again.json", "baseline-random.json", "baseline-random-again.json"))

    response = client.post("/api/v1/jobs", json=job_request(
        latency_target_ms=target_ms, tune=False, budget=TINY_BUDGET,
        params={"calibration_networks": 5, "baselines": True, "schedule": False}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    rows = {row["method"]: row for row in client.get(job["links"]["report"]).json["baselines"]["rows"]}
    for method in ("uniform", "random"):
        row = rows[method]
        missed, *later = row["tries"]
        assert missed["measured_ms"] == pytest.approx(target_ms * 1.1)
        now = missed["predicted_at_retry_ms"]
        aim = min(MOVE_TOP * target_ms * now / missed["measured_ms"], now * (1 - STEP))
        assert missed["aimed_under_ms"] == pytest.approx(aim, rel=1e-3)
        second = later[0] if later else row  # the network of the second try
        assert second["predicted_ms"] <= missed["aimed_under_ms"] + 1e-6  # a faster network, not the same
        assert second["arch"] != missed["arch"]
        # Measured again, for real, under its own answer file.
        assert f"baseline-{method}-try-2.json" in answers
        assert all(t["measured_ms"] > target_ms for t in later)  # retried again only when it really missed
    uniform = rows["uniform"]
    assert {f for f in answers if f.startswith("baseline-uniform") and not f.endswith("-again.json")} == {
        "baseline-uniform.json", *(f"baseline-uniform-try-{n}.json" for n in range(2, len(uniform["tries"]) + 2))}
    assert "baseline-uniform-again.json" in answers  # the miss was timed once more first
    assert uniform["measured_ms"] == pytest.approx(
        final_ms(answers, f"baseline-uniform-try-{len(uniform['tries']) + 1}.json"))
    assert uniform["meets_target"] is (uniform["measured_ms"] <= target_ms)
    assert uniform["epochs"] == rows["searched"]["epochs"]  # same budget
    random = rows["random"]
    missed = random["tries"][0]
    floor = missed["aimed_under_ms"] * WINDOW_LOW / MOVE_TOP
    second = random["tries"][1] if len(random["tries"]) > 1 else random
    if second["predicted_ms"] < floor - 1e-6:  # under the band only when nothing it had or drew lies in it
        assert any(top.get("floor_ms") == pytest.approx(floor, abs=2e-6) for top in random["topped_up"])
        assert not [t for t in random["tried"] if floor <= t["predicted_ms"] <= missed["aimed_under_ms"]
                    and t["blocks"] != missed["arch"]["blocks"]]
    warnings = [e.message for e in events(db, job["id"], "warning") if e.stage == "baselines"]
    assert any(w.startswith("the uniform baseline measured") and "trying a faster one" in w for w in warnings)
    trained = [e for e in events(db, job["id"], "progress")
               if e.stage == "baselines" and "training the uniform baseline" in e.message]
    assert len(trained) == 1 + len(uniform["tries"])  # trained once more for each faster network


def test_a_baseline_miss_a_second_round_of_timings_does_not_confirm_is_not_retried(farm, monkeypatch):
    """The uniform network's first round of timings answered at 1.1x the target (a burst of
    load covers a whole round), its second round the device's own: the row keeps the faster
    round and both rounds' figures, and no faster network is trained for a miss the device
    did not repeat."""
    app, _settings, db = farm
    client = app.test_client()
    target_ms = upper_target(client)
    answers = over_target_answers(monkeypatch, target_ms, lambda file: file == "baseline-uniform.json")

    response = client.post("/api/v1/jobs", json=job_request(
        latency_target_ms=target_ms, tune=False, budget=TINY_BUDGET,
        params={"calibration_networks": 5, "baselines": True, "schedule": False}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    uniform = {row["method"]: row for row in client.get(job["links"]["report"]).json["baselines"]["rows"]}["uniform"]
    again = kept(answers["baseline-uniform-again.json"])
    assert uniform["rounds_ms"] == [pytest.approx(target_ms * 1.1), pytest.approx(again)]
    if again <= target_ms:  # the device's own figure (a loaded test machine may put it over)
        assert "tries" not in uniform and uniform["measured_ms"] == pytest.approx(again)
        assert uniform["meets_target"] is True
        trained = [e for e in events(db, job["id"], "progress")
                   if e.stage == "baselines" and "training the uniform baseline" in e.message]
        assert len(trained) == 1  # no faster network trained
    logs = [e.message for e in events(db, job["id"], "log") if e.stage == "baselines"]
    assert any(m.startswith("the uniform baseline measured") and "timing it once more" in m for m in logs)


def test_random_search_retries_among_its_networks_and_a_baseline_out_of_retries_says_so(farm, monkeypatch):
    """Random search's first network measured over the target: replaced by the best of the
    networks it trained briefly within the corrected bound or, when none of them is
    predicted within it, by the best of ``TOP_UP_NETWORKS`` more it samples and trains
    briefly within it (counted in its cost). The uniform network measured over it every
    time: after its 2 retries the row says so (``retry_ended``) and stays. (The fit is off:
    the retry's bound is then the band's top, and only the retry draws more networks.)"""
    from automl_server.jobs.baselines import BASELINE_RETRIES, TOP_UP_NETWORKS
    from automl_server.jobs.promise import faster_top

    app, _settings, db = farm
    client = app.test_client()
    target_ms = upper_target(client)
    answers = over_target_answers(monkeypatch, target_ms, lambda file: file in (
        "baseline-random.json", "baseline-random-again.json") or file.startswith("baseline-uniform"))

    response = client.post("/api/v1/jobs", json=job_request(
        latency_target_ms=target_ms, tune=False, budget=TINY_BUDGET,
        params={"calibration_networks": 5, "baselines": True, "schedule": False, "fit_on_device": False}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    section = client.get(job["links"]["report"]).json["baselines"]
    rows = {row["method"]: row for row in section["rows"]}
    random = rows["random"]
    (missed,) = random["tries"]
    # The result's figures are rounded to 6 decimals (the tiny space's networks run in ~0.02 ms): 1e-6 of slack.
    # The corrected bound is in terms of the predictor at the retry (the job's timings have calibrated it
    # since the pick), as are the networks' predictions the report carries.
    bound = faster_top(section["predicted_at_most_ms"], missed["predicted_at_retry_ms"], missed["measured_ms"]) + 1e-6
    assert random["predicted_ms"] <= bound and random["arch"] != missed["arch"]
    drawn = random["networks"] - sum(top["networks"] for top in random.get("topped_up", ()))
    first, more = random["tried"][:drawn], random["tried"][drawn:]
    if any(t["predicted_ms"] <= bound for t in first):
        assert "topped_up" not in random and not more
        within = [t for t in first if t["predicted_ms"] <= bound]
    else:  # none of its first networks lies under the corrected bound: it drew more within it
        (top,) = random["topped_up"]
        assert top["bound_ms"] == pytest.approx(bound - 1e-6, abs=2e-6) and top["networks"] == len(more) == TOP_UP_NETWORKS
        assert all(t["predicted_ms"] <= bound for t in more)
        assert not {tuple(t["blocks"]) for t in more} & {tuple(t["blocks"]) for t in first}  # none drawn again
        assert random["search_cost_s"] >= sum(t["seconds"] for t in random["tried"])
        within = more
    # The best on holdout of the networks it trained briefly within that bound.
    assert random["brief_holdout_accuracy"] == max(t["holdout_accuracy"] for t in within)
    assert random["measured_ms"] == pytest.approx(final_ms(answers, "baseline-random-try-2.json"))
    uniform = rows["uniform"]
    assert uniform["meets_target"] is False and uniform["measured_ms"] == pytest.approx(target_ms * 1.1)
    if len(uniform.get("tries", ())) == BASELINE_RETRIES:
        assert f"no retry left (at most {BASELINE_RETRIES})" in uniform["retry_ended"]
    else:  # the space ran out of faster uniform networks first
        assert "no faster uniform network is predicted within" in uniform["retry_ended"]
    warnings = [e.message for e in events(db, job["id"], "warning") if e.stage == "baselines"]
    assert sum(uniform["retry_ended"] in w for w in warnings) == 1  # said once


def test_random_search_fitted_under_the_window_draws_networks_in_the_window(farm, monkeypatch):
    """The device answers each fit try of the job's own network at 1.0x its prediction and each
    of random search's at 0.7x (answer files named; the timings do not recalibrate the
    predictor, as in tests/server/test_fit.py): random search's network lands at about 0.67
    of the target, and every network it trained briefly was sampled under the job's bound
    (0.96 of the target by a ratio of 1.0), all under the window's bottom at 0.7x (0.87 / 0.7
    = 1.24 of the target, predicted). Its fit draws ``TOP_UP_NETWORKS`` more predicted in the
    window's band and takes the best of them on holdout, rather than keeping a network far
    under the window."""
    import json

    import automl_server.profiling as profiling
    from automl_server.jobs import baselines, fit
    from automl_server.jobs.baselines import TOP_UP_NETWORKS
    from automl_server.jobs.margin import MOVE_TOP, WINDOW_LOW

    app, _settings, db = farm
    client = app.test_client()
    profiled = client.post("/api/v1/jobs", json=job_request(stop_after="profile"))
    low, high = client.get(profiled.headers["Location"]).json["result"]["profile"]["achievable_ms"]
    target_ms = float(low + 0.4 * (high - low))  # room over 1.3x of the target, predicted, for the band
    monkeypatch.setattr(profiling, "record_network", lambda payload: None)
    # What is tested is the fit: no retry after it (the final networks' timings are not rewritten,
    # and random search's, 1.0x its prediction, misses; a retry predicts its networks again).
    monkeypatch.setattr(baselines, "BASELINE_RETRIES", 0)
    sent: dict[str, float] = {}
    real_send = fit.send_measurement

    def send(ctx: Any, target: Any, arch: Any, exported: Any, result_file: str) -> None:
        if result_file.startswith("baseline-"):
            state = json.loads((ctx.job_dir() / "baselines-state.json").read_text())
            tries = [t for entry in state["networks"].values() for t in entry.get("fit", {}).get("tries", ())]
        else:
            tries = json.loads((ctx.job_dir() / fit.STATE_FILE).read_text())["tries"]
        sent[result_file] = next(t["predicted_ms"] for t in tries if t["file"] == result_file)
        real_send(ctx, target, arch, exported, result_file)

    monkeypatch.setattr(fit, "send_measurement", send)
    rewrite_answers(monkeypatch, fit, lambda file, answer: answer if file is None else {
        **answer, "measured_ms": sent[file] * (0.7 if file.startswith("baseline-random") else 1.0)})

    response = client.post("/api/v1/jobs", json=job_request(
        latency_target_ms=target_ms, tune=False, budget=TINY_BUDGET,
        params={"calibration_networks": 5, "baselines": True, "schedule": False}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    section = client.get(job["links"]["report"]).json["baselines"]
    random = {row["method"]: row for row in section["rows"]}["random"]
    first, second, *_ = random["fitted"]["tries"]
    assert first["measured_ms"] == pytest.approx(0.7 * first["predicted_ms"], rel=1e-4)
    assert first["measured_ms"] < WINDOW_LOW * target_ms
    bound = second["bound_ms"]
    assert bound == pytest.approx(MOVE_TOP * target_ms / 0.7, rel=1e-4)
    floor = bound * WINDOW_LOW / MOVE_TOP
    drawn = random["tried"][:random["networks"] - TOP_UP_NETWORKS]
    assert all(t["predicted_ms"] < floor for t in drawn)  # none of its first networks in the band
    (top,) = random["topped_up"]
    assert top["bound_ms"] == pytest.approx(bound, abs=1e-6) and top["floor_ms"] == pytest.approx(floor, abs=1e-6)
    more = random["tried"][-TOP_UP_NETWORKS:]
    assert top["networks"] == TOP_UP_NETWORKS and all(floor - 1e-6 <= t["predicted_ms"] <= bound + 1e-6 for t in more)
    assert not {tuple(t["blocks"]) for t in more} & {tuple(t["blocks"]) for t in drawn}  # none drawn again
    best = max(more, key=lambda t: t["holdout_accuracy"])
    assert second["arch"]["blocks"] == best["blocks"]  # the best of them on holdout is tried next
    assert random["search_cost_s"] >= sum(t["seconds"] for t in random["tried"])  # their training counts
    logs = [e.message for e in events(db, job["id"], "log") if e.stage == "baselines"]
    # (The log's figures are unrounded, the report's rounded to 6 decimals: compared, not spelled.)
    said = [re.search(r"predicted ([0-9.]+(?:e-?\d+)?)-([0-9.]+(?:e-?\d+)?) ms; training (\d+) more", m) for m in logs]
    (match,) = [m for m in said if m]
    assert float(match[1]) == pytest.approx(floor, rel=1e-3) and float(match[2]) == pytest.approx(bound, rel=1e-3)
    assert int(match[3]) == TOP_UP_NETWORKS


def test_random_searchs_brief_training_is_brief_on_a_short_budget():
    """Brief: the tune epochs (8 of the default 150), but never more than a quarter of the full
    training (at 8 train epochs, 2: not the full training again), and at least one epoch."""
    from automl_server.jobs.baselines import brief_epochs
    from automl_server.jobs.spec import Budget

    assert brief_epochs(Budget()) == 8
    assert brief_epochs(Budget(train_epochs=8)) == 2
    assert brief_epochs(Budget(train_epochs=20, tune_epochs=3)) == 3
    assert brief_epochs(Budget(train_epochs=1, tune_epochs=1)) == 1
