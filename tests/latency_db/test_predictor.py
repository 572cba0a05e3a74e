"""LUT sums, the missing-key error, and the per-target calibration on whole networks."""
from __future__ import annotations

import numpy as np
import pytest

from latency_db import (
    Calibration,
    CalibrationError,
    LatencyPredictor,
    LatencyRepository,
    MissingLatencyError,
    PredictorReport,
    TargetRecord,
    fit_calibration,
)
from tests.latency_db.conftest import CONV_1_KEY, CONV_KEY, LOGITS_KEY, MB_KEY, stats

LUT = {CONV_KEY: 2.5, MB_KEY: 6.0, CONV_1_KEY: 3.0, LOGITS_KEY: 0.5}


def synthetic_networks(
    a: float, b: float, c: float, noise: float = 0.0, seed: int = 0
) -> list[tuple[float, int, float]]:
    """30 networks whose measured latency is exactly a * lut_sum + b * n_ops + c (times 1 + noise)."""
    rng = np.random.default_rng(seed)
    lut_sums = rng.uniform(20.0, 120.0, size=30)
    n_ops = rng.integers(12, 30, size=30)
    measured = (a * lut_sums + b * n_ops + c) * (1 + noise * rng.standard_normal(30))
    return [(float(s), int(n), float(m)) for s, n, m in zip(lut_sums, n_ops, measured)]


def test_lut_sum_counts_each_op_that_runs() -> None:
    predictor = LatencyPredictor(LUT)

    total = predictor.lut_sum([CONV_KEY, MB_KEY, MB_KEY, CONV_1_KEY, LOGITS_KEY])

    assert total == pytest.approx(18.0)
    assert predictor.predict([CONV_KEY, MB_KEY, MB_KEY, CONV_1_KEY, LOGITS_KEY]) == pytest.approx(18.0)


def test_missing_key_is_named_with_the_command_that_measures_it() -> None:
    predictor = LatencyPredictor({CONV_KEY: 2.5}, source="pixel1 / litert")

    with pytest.raises(MissingLatencyError) as excinfo:
        predictor.lut_sum([CONV_KEY, MB_KEY])

    message = str(excinfo.value)
    assert excinfo.value.key == MB_KEY
    assert MB_KEY in message and "automl profile" in message and "pixel1 / litert" in message
    assert predictor.missing([CONV_KEY, MB_KEY, LOGITS_KEY, MB_KEY]) == [MB_KEY, LOGITS_KEY]


def test_a_negative_or_nan_table_value_is_refused() -> None:
    with pytest.raises(ValueError, match="Conv-input"):
        LatencyPredictor({CONV_KEY: -1.0})
    with pytest.raises(ValueError, match="Conv-input"):
        LatencyPredictor({CONV_KEY: float("nan")})


def test_calibration_recovers_known_coefficients() -> None:
    samples = synthetic_networks(a=0.8, b=0.15, c=4.0)

    calibration = fit_calibration(samples)

    assert calibration.a == pytest.approx(0.8, rel=1e-9)
    assert calibration.b == pytest.approx(0.15, rel=1e-9)
    assert calibration.c == pytest.approx(4.0, rel=1e-9)
    assert calibration.n_networks == 30
    assert calibration.rel_rmse < 1e-9


def test_calibration_is_close_under_measurement_noise() -> None:
    samples = synthetic_networks(a=0.8, b=0.15, c=4.0, noise=0.01, seed=1)

    calibration = fit_calibration(samples)

    predicted = [calibration.apply(s, n) for s, n, _ in samples]
    assert calibration.a == pytest.approx(0.8, rel=0.05)
    assert PredictorReport.compare(predicted, [m for *_, m in samples], pct=5).within_share == 1.0


def test_a_network_timed_through_a_disturbance_is_left_out_of_the_fit() -> None:
    samples = synthetic_networks(a=0.8, b=0.15, c=4.0, noise=0.005, seed=2)[:12]
    lut_sum, n_ops, measured = samples[3]
    samples[3] = (lut_sum, n_ops, measured * 1.3)  # measured 30% slow

    trimmed = fit_calibration(samples)
    untrimmed = fit_calibration(samples, trim_outliers=False)

    assert trimmed.outliers == 1 and trimmed.n_networks == 11
    assert trimmed.a == pytest.approx(0.8, rel=0.03)
    assert trimmed.rel_rmse < 0.01 < untrimmed.rel_rmse
    assert untrimmed.outliers == 0


def test_consistent_networks_are_all_kept() -> None:
    calibration = fit_calibration(synthetic_networks(a=0.8, b=0.15, c=4.0, noise=0.01, seed=1))

    assert calibration.outliers == 0 and calibration.n_networks == 30


def test_same_op_count_everywhere_fits_without_a_per_op_term() -> None:
    samples = [(s, 21, 1.1 * s + 5.0) for s in (30.0, 45.0, 60.0, 75.0, 90.0)]

    calibration = fit_calibration(samples)

    assert (calibration.a, calibration.b, calibration.c) == pytest.approx((1.1, 0.0, 5.0))


def test_small_networks_whose_op_count_takes_the_slope_fit_without_the_per_op_term() -> None:
    # Five networks of `tiny` at 8 px timed on ONNX Runtime (bench_predictor_matrix, 2026-12-04):
    # (LUT sum, ops, measured ms). The full fit gives the LUT sum a negative scale (the op count,
    # nearly collinear with it, takes the slope); the service then predicted the plain LUT sum,
    # 2.7x the measured latency. Without the per-op term the held-out three are within 4%.
    fitted = [(0.06482, 9, 0.02384), (0.07959, 11, 0.02936), (0.07925, 11, 0.02941),
              (0.08788, 12, 0.03257), (0.07938, 11, 0.03094)]
    held_out = [(0.08819, 12, 0.03238), (0.08733, 12, 0.03178), (0.08822, 12, 0.03232)]
    design = np.array([[s, n, 1.0] for s, n, _ in fitted]) / np.array([[m] for *_, m in fitted])
    full_a = np.linalg.lstsq(design, np.ones(len(fitted)), rcond=None)[0][0]
    assert full_a < 0  # what the full model does with these figures

    calibration = fit_calibration(fitted)

    assert calibration.a > 0 and calibration.b == 0.0
    assert all(abs(calibration.apply(s, n) - m) / m < 0.04 for s, n, m in held_out)


@pytest.mark.parametrize("count", [0, 1, 4])
def test_fewer_than_five_networks_are_refused(count: int) -> None:
    samples = synthetic_networks(a=1.0, b=0.1, c=2.0)[:count]

    with pytest.raises(CalibrationError, match="at least 5 networks"):
        fit_calibration(samples)


@pytest.mark.parametrize(
    "samples, message",
    [
        ([(50.0, 20, 60.0)] * 6, "LUT sums differ"),
        ([(10.0 * i, 20, 100.0 - 10.0 * i) for i in range(1, 7)], "not positive"),
        ([(10.0, 20, 12.0)] * 4 + [(20.0, 20, 0.0), (30.0, 20, 33.0)], "sample 4"),
        ([(10.0, 20, 12.0)] * 4 + [(20.0, 20), (30.0, 20, 33.0)], "sample 4"),
    ],
)
def test_unusable_samples_are_refused_with_the_reason(samples: list, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        fit_calibration(samples)


def test_calibrated_prediction_uses_the_op_count() -> None:
    predictor = LatencyPredictor(LUT, Calibration(a=0.9, b=0.2, c=3.0))

    predicted = predictor.predict([CONV_KEY, MB_KEY, CONV_1_KEY, LOGITS_KEY])

    assert predicted == pytest.approx(0.9 * 12.0 + 0.2 * 4 + 3.0)


def test_calibration_dict_round_trip_and_refusals() -> None:
    calibration = fit_calibration(synthetic_networks(a=0.8, b=0.15, c=4.0))

    again = Calibration.from_dict(calibration.to_dict())

    assert again == calibration
    with pytest.raises(CalibrationError, match="lacks c"):
        Calibration.from_dict({"a": 1.0, "b": 0.0})
    with pytest.raises(CalibrationError, match="a must be > 0"):
        Calibration.from_dict({"a": 0.0, "b": 0.0, "c": 1.0})
    with pytest.raises(CalibrationError, match="unknown calibration model"):
        Calibration.from_dict({"model": "log", "a": 1.0, "b": 0.0, "c": 1.0})


def test_calibration_from_stored_networks_fixes_a_biased_table(repo: LatencyRepository, target: TargetRecord) -> None:
    # arrange: a table, and networks whose real latency is 0.7 x the sum + 0.1 ms per op + 6 ms
    for key, ms in LUT.items():
        repo.record(target, key, stats(ms), "agent")
    predictor = LatencyPredictor(repo.lut_ms(target))
    networks = [[CONV_KEY] + [MB_KEY] * depth + [CONV_1_KEY, LOGITS_KEY] for depth in (2, 4, 6, 9, 12, 16)]
    for keys in networks:
        lut_sum = predictor.lut_sum(keys)
        measured = 0.7 * lut_sum + 0.1 * len(keys) + 6.0
        repo.record_network(target, {"depth": len(keys)}, measured, lut_sum, "agent", n_ops=len(keys))
    stored = repo.networks(target)
    measured_ms = [n.measured_ms for n in stored]

    # act
    calibrated = LatencyPredictor(repo.lut_ms(target), fit_calibration([n.calibration_sample for n in stored]))
    before = PredictorReport.compare([predictor.predict(k) for k in networks], measured_ms)
    after = PredictorReport.compare([calibrated.predict(k) for k in networks], measured_ms)

    # assert
    assert before.within_share < 0.5
    assert after.within_share == 1.0
    assert after.kendall_tau == pytest.approx(1.0)
