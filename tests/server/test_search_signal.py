"""The report says when the supernet had learned too little for its accuracy to steer the search."""
from __future__ import annotations

import pytest

from automl_server.jobs.search_signal import search_signal

DIGITS = {"class_counts": {str(d): 100 for d in range(9)} | {"9": 200}}  # majority class: 200 of 1100


def results(supernet: float, alone: float, validate: dict = DIGITS) -> dict:
    return {"validate": validate, "search": {"holdout_accuracy": supernet}, "train": {"test_accuracy": alone}}


def test_a_supernet_near_the_majority_rate_is_reported_weak_with_the_figures():
    signal = search_signal(results(0.195, 0.967))

    assert signal["weak"] is True
    majority = 200 / 1100
    assert signal["majority_class_rate"] == pytest.approx(majority)
    assert signal["share_learned"] == pytest.approx((0.195 - majority) / (0.967 - majority), abs=1e-4)
    assert "0.195" in signal["note"] and "0.967" in signal["note"] and "latency term" in signal["note"]


def test_a_supernet_close_to_the_network_alone_is_not_weak():
    signal = search_signal(results(0.85, 0.93))

    assert signal["weak"] is False and "note" not in signal
    assert signal["share_learned"] == pytest.approx((0.85 - 200 / 1100) / (0.93 - 200 / 1100), abs=1e-4)


def test_no_verdict_without_a_search_or_when_the_network_alone_is_no_better_than_guessing():
    assert search_signal({"validate": DIGITS, "train": {"test_accuracy": 0.9}}) is None  # adopted network
    signal = search_signal(results(0.1, 0.15))  # nothing learned at all: no share to compute
    assert signal["share_learned"] is None and signal["weak"] is False
