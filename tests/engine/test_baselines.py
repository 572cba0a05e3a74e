"""The baselines a search is compared with (engine/baselines.py): the uniform
network checked against every uniform network of the space (brute force), and
random search within its bound and its budget."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_digits

from automl_server.engine.baselines import deepest_uniform, random_search, sample_within, uniform_network
from automl_server.engine.data import split_arrays
from automl_server.engine.latency import FlopsLatencyModel, arch_latency_ms
from automl_server.engine.search_plan import latency_range_ms
from search_spaces import Arch, get_space
from search_spaces.ops import ZERO

MODEL = FlopsLatencyModel()
LAYOUT = get_space("tiny").layout(8, 10, 1)


def every_uniform_network(block: str) -> list[tuple[int, float]]:
    """(Zero cells, predicted ms) of every uniform network of ``block``: each subset of the
    cells that may be Zero, by brute force."""
    droppable = [cell.index for cell in LAYOUT.cells if ZERO in cell.candidates]
    found = []
    for k in range(len(droppable) + 1):
        for dropped in itertools.combinations(droppable, k):
            blocks = tuple(ZERO if i in dropped else block for i in range(len(LAYOUT.cells)))
            arch = Arch(LAYOUT.space, LAYOUT.resolution, LAYOUT.num_classes, LAYOUT.in_channels, blocks)
            found.append((k, arch_latency_ms(arch, MODEL)))
    return found


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.45, 0.7, 1.0])
def test_the_uniform_network_is_the_deepest_of_each_block_and_the_closest_under_the_bound(fraction):
    fastest, slowest = latency_range_ms(LAYOUT, MODEL)
    bound = fastest + fraction * (slowest - fastest)

    chosen = uniform_network(LAYOUT, MODEL, bound)

    assert chosen is not None and chosen.predicted_ms <= bound
    assert set(chosen.arch.blocks) <= {chosen.block, ZERO}  # one block type everywhere
    assert list(chosen.zero_cells) == [i for i, b in enumerate(chosen.arch.blocks) if b == ZERO]
    deepest = {}
    for block in get_space("tiny").candidates:
        fits = [(k, ms) for k, ms in every_uniform_network(block) if ms <= bound]
        mine = deepest_uniform(LAYOUT, MODEL, block, bound)
        if not fits:
            assert mine is None
            continue
        # No uniform network of this block with fewer Zero cells fits the bound.
        assert mine is not None and len(mine.zero_cells) == min(k for k, _ in fits)
        deepest[block] = mine.predicted_ms
    # Of the blocks' deepest networks, the one that spends the most of the bound.
    assert chosen.predicted_ms == pytest.approx(max(deepest.values()))


def test_no_uniform_network_under_a_bound_below_the_fastest():
    fastest, _ = latency_range_ms(LAYOUT, MODEL)

    assert uniform_network(LAYOUT, MODEL, fastest * 0.5) is None


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    return split_arrays(x[:300], raw.target[:300].astype(np.int64), seed=0)


def test_random_search_trains_networks_within_the_bound_and_keeps_the_best_on_holdout(digits):
    fastest, slowest = latency_range_ms(LAYOUT, MODEL)
    bound = fastest + 0.4 * (slowest - fastest)
    seen = []

    found = random_search(LAYOUT, digits, MODEL, bound, budget_s=0.0, brief_epochs=1, seed=0, batch_size=64,
                          min_networks=2, on_network=lambda tried, number: seen.append(number))

    assert found is not None
    assert found.networks == 2 and seen == [1, 2]  # a spent budget still tries the minimum
    assert all(t.predicted_ms <= bound for t in found.tried)
    assert found.best.holdout_accuracy == max(t.holdout_accuracy for t in found.tried)
    assert found.cost_s >= sum(t.seconds for t in found.tried) * 0.99


def test_random_search_judges_briefly_trained_networks_above_chance():
    # Digits as a job splits them (a fifth kept for the test, a fifth of the rest for the
    # holdout): 1,149 training images, 18 steps an epoch. After 2 epochs the BatchNorm running
    # averages still trail the weights: judged in eval mode these networks scored 0.10-0.15
    # (chance 0.10), so random search's choice among them was close to arbitrary. Recomputed,
    # they rank.
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    data = split_arrays(x[:1437], raw.target[:1437].astype(np.int64), seed=0)
    fastest, slowest = latency_range_ms(LAYOUT, MODEL)

    found = random_search(LAYOUT, data, MODEL, fastest + 0.5 * (slowest - fastest), budget_s=0.0,
                          brief_epochs=2, seed=0, min_networks=4)

    assert found is not None and found.networks == 4
    scores = [t.holdout_accuracy for t in found.tried]
    assert min(scores) > 0.3, scores
    assert len(set(scores)) > 1, scores  # a ranking, not a tie that the draw order breaks


def test_sampling_skips_the_networks_a_search_tried_already():
    fastest, slowest = latency_range_ms(LAYOUT, MODEL)
    bound = fastest + 0.5 * (slowest - fastest)
    drawn = sample_within(LAYOUT, MODEL, bound, seed=0, pool=200, wanted=0)
    tried = [arch.blocks for arch, _ in drawn[:3]]

    again = sample_within(LAYOUT, MODEL, bound, seed=0, pool=200, skip=tried, wanted=0)

    assert [arch.blocks for arch, _ in again] == [arch.blocks for arch, _ in drawn[3:]]


def test_under_a_bound_few_draws_reach_a_random_walk_supplies_the_networks_within_it():
    """At 8% of the tiny space's range about 9 in 20,000 uniform draws land within the bound."""
    fastest, slowest = latency_range_ms(LAYOUT, MODEL)
    bound = fastest + 0.08 * (slowest - fastest)
    drawn = sample_within(LAYOUT, MODEL, bound, seed=0, pool=200, wanted=0)  # the draws alone

    found = sample_within(LAYOUT, MODEL, bound, seed=0, pool=200, wanted=20)

    assert len(drawn) < 20 and len(found) == 20
    assert found[:len(drawn)] == drawn  # the exact draws first
    assert all(predicted <= bound for _, predicted in found)
    assert all(predicted == pytest.approx(arch_latency_ms(arch, MODEL)) for arch, predicted in found)
    assert len({arch.blocks for arch, _ in found}) == 20  # no repeats


@pytest.mark.parametrize("fraction", [0.2, 0.4])
def test_the_walk_draws_what_rejection_sampling_draws(fraction):
    """Both sample the networks within the bound uniformly: where rejection sampling still
    works (thousands of draws), the walk's networks have its mean latency and its share of
    skipped (Zero) cells; a walk stuck near its start, the fastest network, would not."""
    from automl_server.engine.baselines import _walk_within

    fastest, slowest = latency_range_ms(LAYOUT, MODEL)
    bound = fastest + fraction * (slowest - fastest)
    exact = sample_within(LAYOUT, MODEL, bound, seed=0, pool=20000, wanted=0)[:200]

    walked = _walk_within(LAYOUT, MODEL, bound, seed=1, count=200, seen=set())

    assert len(exact) == len(walked) == 200

    def mean_ms(found):  # type: ignore[no-untyped-def]
        return sum(predicted for _, predicted in found) / len(found)

    def zero_share(found):  # type: ignore[no-untyped-def]
        return sum(arch.blocks.count(ZERO) for arch, _ in found) / (len(found) * len(LAYOUT.cells))

    assert mean_ms(walked) == pytest.approx(mean_ms(exact), abs=0.03 * (slowest - fastest))
    assert zero_share(walked) == pytest.approx(zero_share(exact), abs=0.05)
    assert mean_ms(walked) > fastest + 0.5 * (mean_ms(exact) - fastest)


def test_a_floor_keeps_the_networks_of_a_band_as_rejection_sampling_keeps_them():
    """The fit's band (its window's share of a bound): every network drawn or walked lies in
    it, and where rejection sampling reaches the band the walk's networks have its mean there."""
    from automl_server.engine.baselines import _walk_within

    fastest, slowest = latency_range_ms(LAYOUT, MODEL)
    bound = fastest + 0.3 * (slowest - fastest)
    floor = bound * 0.87 / 0.915  # the fit's window bottom under its aim (jobs/margin.py)
    exact = sample_within(LAYOUT, MODEL, bound, seed=0, pool=20000, wanted=0, min_ms=floor)[:100]

    found = sample_within(LAYOUT, MODEL, bound, seed=0, pool=50, wanted=30, min_ms=floor)
    walked = _walk_within(LAYOUT, MODEL, bound, seed=1, count=100, seen=set(), min_ms=floor)

    assert len(exact) == len(walked) == 100 and len(found) == 30
    assert all(floor <= predicted <= bound for _, predicted in [*exact, *found, *walked])
    assert len({arch.blocks for arch, _ in found}) == 30  # no repeats
    exact_mean = sum(p for _, p in exact) / len(exact)
    assert sum(p for _, p in walked) / len(walked) == pytest.approx(exact_mean, abs=0.2 * (bound - floor))


def test_random_search_finds_nothing_under_an_impossible_bound(digits):
    fastest, _ = latency_range_ms(LAYOUT, MODEL)

    assert sample_within(LAYOUT, MODEL, fastest * 0.5, seed=0, pool=200) == []
    assert random_search(LAYOUT, digits, MODEL, fastest * 0.5, budget_s=1.0, brief_epochs=1, seed=0) is None


def test_a_cancel_raised_by_on_step_stops_random_search(digits):
    class Cancelled(Exception):
        pass

    def cancel() -> None:
        raise Cancelled()

    _, slowest = latency_range_ms(LAYOUT, MODEL)
    with pytest.raises(Cancelled):
        random_search(LAYOUT, digits, MODEL, slowest, budget_s=10.0, brief_epochs=1, seed=0, on_step=cancel)
