"""Accuracy figures: share within +-pct %, Kendall's tau-b (checked by hand, ties included)."""
from __future__ import annotations

import math

import pytest

from latency_db import PredictorReport, kendall_tau, within_pct


def test_within_pct_counts_the_share_inside_the_band() -> None:
    measured = [10.0, 10.0, 10.0, 10.0]
    predicted = [10.5, 11.0, 8.9, 12.0]  # +5%, +10% (edge, inside), -11%, +20%

    assert within_pct(predicted, measured) == 0.5
    assert within_pct(predicted, measured, pct=25) == 1.0
    assert within_pct(predicted, measured, pct=0) == 0.0


def test_within_pct_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        within_pct([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        within_pct([1.0], [0.0])
    with pytest.raises(ValueError, match="at least one"):
        within_pct([], [])


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        # pairs: (1,2) C, (1,3) C, (2,3) D -> (2 - 1) / 3
        ([1, 2, 3], [1, 3, 2], 1 / 3),
        # 6 pairs: 4 concordant, one tied only in a, one tied only in b -> 4 / sqrt(5 * 5)
        ([1, 2, 2, 3], [1, 2, 3, 3], 0.8),
        # the pair tied in both is left out of both counts -> 2 / sqrt(2 * 2)
        ([1, 1, 2], [5, 5, 9], 1.0),
        # 6 pairs: (0,1) tie a, (0,2) C, (0,3) D, (1,2) C, (1,3) D, (2,3) D -> (2 - 3) / sqrt(5 * 6)
        ([1, 1, 2, 3], [2, 1, 4, 0], -1 / math.sqrt(30)),
    ],
)
def test_kendall_tau_b_matches_hand_computed_values(a: list, b: list, expected: float) -> None:
    assert kendall_tau(a, b) == pytest.approx(expected)


def test_kendall_tau_is_undefined_when_one_side_is_constant() -> None:
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_kendall_tau_needs_two_pairs_of_equal_length() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1.0], [1.0])
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1.0, 2.0], [1.0, 2.0, 3.0])


def test_predictor_report_summarises_a_comparison() -> None:
    report = PredictorReport.compare([10.5, 22.0, 27.0, 45.0], [10.0, 20.0, 30.0, 40.0])

    assert report.n_networks == 4
    assert report.within_share == 0.75  # +5%, +10%, -10% in; +12.5% out
    assert report.kendall_tau == pytest.approx(1.0)
    assert report.mean_abs_pct_error == pytest.approx((5 + 10 + 10 + 12.5) / 4)
    assert report.max_abs_pct_error == pytest.approx(12.5)
    assert report.to_dict()["within_share"] == 0.75
    assert "75.0% within +-10%" in report.summary()
