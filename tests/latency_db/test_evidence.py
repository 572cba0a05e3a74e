"""Every stored figure keeps its evidence; one flagged unreliable is kept but never calibrates."""
from __future__ import annotations

import pytest

from latency_db import LatencyRepository, TargetSpec, fit_calibration, heldout_error
from tests.latency_db.conftest import MB_KEY, stats


def test_a_flagged_network_is_kept_with_its_evidence_and_never_calibrates(repo: LatencyRepository) -> None:
    target = repo.target(TargetSpec("cpu-1", "onnxruntime", "1"))
    for i in range(6):  # measured = 2 * lut_sum + 0.1
        lut = 1.0 + i
        repo.record_network(target, {"n": i}, 2 * lut + 0.1, lut, "t", n_ops=5, cv=0.02,
                            method={"reliable": True, "unreliable_reason": None, "yardstick_drift": 0.1})
    noisy = repo.record_network(target, {"n": "noisy"}, 40.0, 3.0, "t", n_ops=5, cv=0.4,
                                method={"reliable": False, "yardstick_drift": 1.3,
                                        "unreliable_reason": "the yardstick moved 130% within the measurement"})

    assert noisy.reliable is False and "yardstick moved" in (noisy.unreliable_reason or "")
    assert noisy.cv == 0.4 and (noisy.method or {})["yardstick_drift"] == 1.3  # kept, with its evidence
    assert len(repo.networks(target)) == 7
    usable = repo.networks(target, usable_only=True)
    assert {n.arch["n"] for n in usable} == set(range(6))
    fit = fit_calibration([n.calibration_sample for n in usable], trim_outliers=False)
    assert fit.a == pytest.approx(2.0) and fit.rel_rmse == pytest.approx(0.0, abs=1e-9)


def test_an_op_flagged_unreliable_gives_way_to_a_reliable_one_but_is_kept(repo: LatencyRepository) -> None:
    target = repo.target(TargetSpec("cpu-1", "onnxruntime", "1"))
    good = stats(1.0)
    noisy = stats(3.0)
    repo.record(target, MB_KEY, type(good)(**{**good.__dict__, "method": {"reliable": True}}), "t")
    flagged = repo.record(target, MB_KEY, type(noisy)(**{**noisy.__dict__, "method": {
        "reliable": False, "unreliable_reason": "coefficient of variation 0.4 > 0.15"}}), "t")

    assert flagged.reliable is False and flagged.unreliable_reason == "coefficient of variation 0.4 > 0.15"
    assert repo.lut_ms(target) == {MB_KEY: 1.0}  # the later, noisy figure does not replace the reliable one
    assert len(repo.history(target, MB_KEY)) == 2


def test_the_heldout_error_is_that_of_networks_left_out_of_the_fit() -> None:
    exact = [(float(lut), 5, 2.0 * lut + 0.1) for lut in range(1, 8)]
    assert heldout_error(exact[:5]) is None  # each fit needs 5 networks: 6 at least
    assert heldout_error(exact).p95 == pytest.approx(0.0, abs=1e-9)  # type: ignore[union-attr]
    off = [*exact[:3], (4.0, 5, (2.0 * 4 + 0.1) * 1.2), *exact[4:]]  # one network measured 20% over the line
    error = heldout_error(off)
    assert error is not None and error.n_networks == 5  # the fastest and slowest are never left out
    # Left out, the odd network is predicted by the line through the others: 1/1.2 - 1 = -16.7%.
    assert error.worst == pytest.approx(1 - 1 / 1.2, rel=1e-6)
    assert error.interval(10.0) == [pytest.approx(10 * (1 - error.p95)), pytest.approx(10 * (1 + error.p95))]


def test_the_heldout_error_leaves_out_only_networks_inside_the_others_range() -> None:
    # The fit is made on every network, the space's fastest and slowest among them, so it is
    # never asked outside their range; leaving an extreme out asks it exactly that.
    inner = [(float(lut), 20 + lut % 3, 0.5 * lut + 0.02 * (20 + lut % 3) + 0.1) for lut in range(2, 10)]
    fastest = (1.0, 10, (0.5 * 1 + 0.02 * 10 + 0.1) * 1.3)  # far fewer ops; its own overheads differ
    error = heldout_error([fastest, *inner])

    assert error is not None and error.n_networks == len(inner) - 1  # all but the fastest and the slowest (LUT 9)
    assert error.worst < 0.05  # the networks a job can pick are predicted well ...
    # ... while the fastest one, left out, is not (the extrapolation that no longer counts):
    others = fit_calibration(inner)
    assert abs(others.apply(*fastest[:2]) - fastest[2]) / fastest[2] > 0.2
