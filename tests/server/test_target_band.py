"""Where a job aims so that the network it returns meets the target when measured."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from automl_server.jobs.search_stage import MAX_TARGET_MARGIN, TARGET_MARGIN, target_band


def ctx(target_ms: float, rel_rmse: float | None) -> SimpleNamespace:
    calibration = None if rel_rmse is None else {"a": 1.0, "b": 0.0, "c": 0.0, "rel_rmse": rel_rmse}
    return SimpleNamespace(params={"latency_target_ms": target_ms}, results={"profile": {"calibration": calibration}})


def test_the_band_ends_the_margin_under_the_target() -> None:
    aim, tolerance, top = target_band(ctx(10.0, 0.01))

    assert tolerance == TARGET_MARGIN
    assert top == pytest.approx(10.0 * (1 - TARGET_MARGIN))
    # The derivation's band aim * (1 +- tolerance) ends at the top, never above it.
    assert aim * (1 + tolerance) == pytest.approx(top)
    assert aim * (1 - tolerance) < top < 10.0


def test_a_noisier_calibration_leaves_more_room_up_to_a_cap() -> None:
    _, noisy, noisy_top = target_band(ctx(10.0, 0.04))
    _, capped, _ = target_band(ctx(10.0, 0.5))
    _, uncalibrated, _ = target_band(ctx(10.0, None))

    assert noisy == pytest.approx(0.08) and noisy_top == pytest.approx(9.2)
    assert capped == MAX_TARGET_MARGIN
    assert uncalibrated == TARGET_MARGIN
