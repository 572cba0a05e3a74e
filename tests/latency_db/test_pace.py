"""Latencies at a target's pace: measurements taken while the machine ran at
different speeds, stored in one unit through the yardstick timed beside them."""
from __future__ import annotations

from dataclasses import replace

import pytest

from latency_db import LatencyRepository, TargetRecord, TargetSpec, at_pace, yardstick_ms
from tests.latency_db.conftest import CONV_KEY, MB_KEY, stats


def with_yardstick(median_ms: float, stick_ms: float):  # type: ignore[no-untyped-def]
    """Stats as an agent reports them when the yardstick took stick_ms beside the op."""
    base = stats(median_ms)
    return replace(base, method={**base.method, "yardstick": True, "yardstick_ms": stick_ms})


def test_at_pace_rescales_every_figure_by_the_yardsticks_ratio() -> None:
    measured = with_yardstick(6.0, stick_ms=0.2)  # the machine ran at half speed: the yardstick took 0.2, not 0.1

    paced = at_pace(measured, 0.1)

    assert paced.median_ms == pytest.approx(3.0)
    assert (paced.mean_ms, paced.std_ms, paced.p90_ms, paced.min_ms) == pytest.approx(
        (measured.mean_ms / 2, measured.std_ms / 2, measured.p90_ms / 2, measured.min_ms / 2))
    assert paced.cv == pytest.approx(measured.cv)
    assert paced.method["pace_ms"] == 0.1 and paced.method["pace_factor"] == pytest.approx(0.5)


def test_pacing_twice_is_pacing_once() -> None:
    measured = with_yardstick(6.0, stick_ms=0.2)

    assert at_pace(at_pace(measured, 0.1), 0.1).median_ms == pytest.approx(3.0)
    assert at_pace(at_pace(measured, 0.4), 0.1).median_ms == pytest.approx(3.0)


def test_stats_without_a_yardstick_are_left_as_they_are() -> None:
    plain = stats(6.0)

    assert yardstick_ms(plain) is None
    assert at_pace(plain, 0.1) == plain


@pytest.mark.parametrize("pace", [0, -1.0, float("nan"), True, "0.1"])
def test_a_pace_that_is_not_a_positive_time_is_refused(pace: object) -> None:
    with pytest.raises(ValueError, match="pace_ms"):
        at_pace(with_yardstick(6.0, 0.2), pace)  # type: ignore[arg-type]


def test_the_first_yardstick_time_sets_the_targets_pace_and_later_ones_are_rescaled_to_it(
    repo: LatencyRepository, target: TargetRecord
) -> None:
    assert repo.pace_ms(target) is None

    repo.record(target, CONV_KEY, with_yardstick(2.0, stick_ms=0.1), "agent")
    # Later the machine runs twice as slow: the op and the yardstick both take twice as long.
    repo.record(target, MB_KEY, with_yardstick(12.0, stick_ms=0.2), "agent")

    assert repo.pace_ms(target) == 0.1
    assert repo.lut_ms(target) == pytest.approx({CONV_KEY: 2.0, MB_KEY: 6.0})
    stored = repo.lut(target)[MB_KEY].stats
    assert stored is not None and stored.method["pace_factor"] == pytest.approx(0.5)


def test_network_measurements_are_stored_at_the_targets_pace(repo: LatencyRepository, target: TargetRecord) -> None:
    repo.record(target, CONV_KEY, with_yardstick(2.0, stick_ms=0.1), "agent")

    stored = repo.record_network(target, {}, 30.0, 14.0, "agent", n_ops=5, yardstick_ms=0.3)

    assert stored.measured_ms == pytest.approx(10.0)
    assert repo.networks(target)[0].calibration_sample == pytest.approx((14.0, 5, 10.0))


def test_each_target_keeps_its_own_pace(repo: LatencyRepository, target: TargetRecord) -> None:
    other = repo.target(TargetSpec("pi4", "litert", "2.1.0"))
    repo.record(target, CONV_KEY, with_yardstick(2.0, stick_ms=0.1), "agent")
    repo.record(other, CONV_KEY, with_yardstick(9.0, stick_ms=0.5), "agent")

    assert (repo.pace_ms(target), repo.pace_ms(other)) == (0.1, 0.5)
    assert repo.at_target_pace(other, with_yardstick(18.0, stick_ms=1.0)).median_ms == pytest.approx(9.0)


def test_stats_without_a_yardstick_do_not_set_a_pace(repo: LatencyRepository, target: TargetRecord) -> None:
    repo.record(target, CONV_KEY, stats(2.0), "agent")  # e.g. a phone's benchmark_model, or an imported table

    assert repo.pace_ms(target) is None
    assert repo.lut_ms(target) == {CONV_KEY: 2.0}
