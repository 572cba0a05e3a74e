"""Loss and schedule from the target and the dataset's size (engine/search_plan.py),
and a search on a 200-image two-class dataset whose probabilities must move."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine.data import split_arrays
from automl_server.engine.latency import FlopsLatencyModel
from automl_server.engine.search import ProxylessSearch, SearchConfig
from automl_server.engine.search_plan import (arch_steps_after, latency_range_ms, loss_kind_for, mul_log_refusal,
                                              schedule_for)
from automl_server.engine.supernet import SuperNet
from search_spaces import get_space


def test_schedule_keeps_the_reference_rule_on_large_data():
    # 50,000 images of batch 64: 781 batches, 156 architecture steps an epoch already
    schedule = schedule_for(50_000, 64, warmup_epochs=10, search_epochs=30, arch_update_every=5)

    assert (schedule.warmup_epochs, schedule.search_epochs, schedule.arch_steps) == (10, 30, 156 * 30)
    assert not schedule.changed
    steps = [arch_steps_after(b, 781, 5, 156) for b in range(781)]
    assert steps[4] == steps[9] == 1 and steps[0] == steps[5] == 0 and sum(steps) == 156


def test_schedule_counts_steps_not_epochs_on_small_data():
    # 120 training images of batch 64: 1 batch an epoch; the rule would give 0 architecture steps
    schedule = schedule_for(120, 64, warmup_epochs=10, search_epochs=40, arch_update_every=2,
                            min_warmup_steps_per_epoch=20, min_arch_steps_per_epoch=8)

    assert schedule.batches_per_epoch == 1 and schedule.changed
    assert schedule.warmup_epochs == 200  # 10 x 20 weight steps of one batch
    assert schedule.arch_steps == 40 * 8  # 8 an epoch, all after its one batch
    assert arch_steps_after(0, 1, 2, 8) == 8
    # spread evenly when there are fewer steps than batches: 3 steps over 7 batches
    assert [arch_steps_after(b, 7, 5, 3) for b in range(7)] == [0, 0, 1, 0, 1, 0, 1]


def test_loss_follows_where_the_target_lies():
    assert loss_kind_for(5.0, 1.0, 4.0) == "none"  # every network meets it: accuracy alone
    assert loss_kind_for(3.0, 1.0, 4.0) == "mul#log"
    assert loss_kind_for(100.0, 1.0, 400.0) == "add#linear"  # 1 ms <= 100/80 ms: ln would be negative
    assert mul_log_refusal(3.0, 1.0, 4.0) is None
    assert "1-400 ms" in (mul_log_refusal(100.0, 1.0, 400.0) or "")


def test_latency_range_is_that_of_the_fastest_and_slowest_networks():
    layout = get_space("tiny").layout(8, 2, 1)
    model = FlopsLatencyModel()
    net = SuperNet(layout)
    per_cell = net.cell_latencies_ms(model)

    fastest, slowest = latency_range_ms(layout, model)

    fixed = net.fixed_latency_ms(model)
    assert fastest == pytest.approx(fixed + sum(float(c.min()) for c in per_cell))
    assert slowest == pytest.approx(fixed + sum(float(c.max()) for c in per_cell))


@pytest.fixture(scope="module")
def two_class_200():  # type: ignore[no-untyped-def]
    raw = load_digits()
    keep = np.flatnonzero(raw.target < 2)[:200]
    x = np.rint(raw.images[keep] * 255 / 16).astype(np.uint8)[..., None]
    return split_arrays(x, raw.target[keep].astype(np.int64), seed=0)


def probability_shift(data, **overrides) -> float:  # type: ignore[no-untyped-def]
    """Largest |p - p_start| over every cell after a short accuracy-only search."""
    layout = get_space("tiny").layout(data.resolution, data.num_classes, data.in_channels)
    values = dict(warmup_epochs=2, search_epochs=2, batch_size=64, arch_update_every=5, arch_lr=3e-3,
                  loss_kind="none", seed=0)
    values.update(overrides)
    search = ProxylessSearch(layout, data, FlopsLatencyModel(), SearchConfig(**values))
    start = [m.probs().detach().clone() for m in search.net.mixed_ops]
    for _ in range(search.config.total_epochs):
        search.run_epoch()
    return max(float((m.probs().detach() - p).abs().max()) for m, p in zip(search.net.mixed_ops, start))


def test_probabilities_move_on_200_images_with_a_minimum_of_architecture_steps(two_class_200):
    # 200 images, 2 classes, a target every network meets: accuracy alone counts
    assert two_class_200.x_train.shape[0] // 64 <= 3  # the reference's 1 step per 5 batches gives none

    by_rule = probability_shift(two_class_200)
    with_minimum = probability_shift(two_class_200, min_arch_steps_per_epoch=150)  # 300 in the search

    assert by_rule < 1e-6  # no architecture step at all
    assert with_minimum > 0.03  # p started within 1e-3 of uniform
