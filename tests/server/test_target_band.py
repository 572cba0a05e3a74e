"""Where a job aims so that the network it returns meets the target when measured."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from automl_server.jobs.search_stage import (
    FALLBACK_MAX_MARGIN,
    MAX_TARGET_MARGIN,
    MIN_TARGET_MARGIN,
    TARGET_MARGIN,
    target_band,
)


def ctx(target_ms: float, rel_rmse: float | None, heldout_p95: float | None = None) -> SimpleNamespace:
    calibration = None if rel_rmse is None else {"a": 1.0, "b": 0.0, "c": 0.0, "rel_rmse": rel_rmse}
    heldout = None if heldout_p95 is None else {"method": "leave-one-out", "n_networks": 16,
                                                "p95_rel_error": heldout_p95}
    return SimpleNamespace(params={"latency_target_ms": target_ms},
                           results={"profile": {"calibration": calibration, "predictor_error": heldout}})


def test_the_band_ends_the_margin_under_the_target() -> None:
    aim, tolerance, top = target_band(ctx(10.0, 0.01))

    assert tolerance == TARGET_MARGIN
    assert top == pytest.approx(10.0 * (1 - TARGET_MARGIN))
    # The derivation's band aim * (1 +- tolerance) ends at the top, never above it.
    assert aim * (1 + tolerance) == pytest.approx(top)
    assert aim * (1 - tolerance) < top < 10.0


def test_the_margin_is_the_predictors_heldout_error_when_known() -> None:
    _, margin, top = target_band(ctx(10.0, 0.01, heldout_p95=0.12))
    _, small, _ = target_band(ctx(10.0, 0.01, heldout_p95=0.001))
    _, huge, _ = target_band(ctx(10.0, 0.01, heldout_p95=0.9))

    # Not the fixed 5% (nor 2x the fit's own RMSE): the error on networks left out of the fit.
    assert margin == pytest.approx(0.12) and top == pytest.approx(8.8)
    assert small == MIN_TARGET_MARGIN and huge == MAX_TARGET_MARGIN


def test_without_a_heldout_error_a_noisier_calibration_leaves_more_room_up_to_a_cap() -> None:
    _, noisy, noisy_top = target_band(ctx(10.0, 0.04))
    _, capped, _ = target_band(ctx(10.0, 0.5))
    _, uncalibrated, _ = target_band(ctx(10.0, None))

    assert noisy == pytest.approx(0.08) and noisy_top == pytest.approx(9.2)
    assert capped == FALLBACK_MAX_MARGIN
    assert uncalibrated == TARGET_MARGIN
