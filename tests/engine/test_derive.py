"""Target-aware derivation: the most probable network within the target band."""
from __future__ import annotations

import pytest
import torch

from automl_server.engine.derive import derive_within_target
from automl_server.engine.latency import FlopsLatencyModel
from automl_server.engine.search import arch_latency_ms
from automl_server.engine.supernet import SuperNet
from search_spaces import get_space


@pytest.fixture
def net():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    supernet = SuperNet(get_space("tiny").layout(32, 10, 3))
    with torch.no_grad():  # make the argmax the slowest block of every cell
        for mixed, latencies in zip(supernet.mixed_ops, supernet.cell_latencies_ms(FlopsLatencyModel())):
            mixed.alpha.copy_(latencies / latencies.max() * 3.0)
    return supernet


def test_argmax_inside_the_band_is_kept(net):
    model = FlopsLatencyModel()
    argmax_ms = arch_latency_ms(net.derive(), model)

    result = derive_within_target(net, model, target_ms=argmax_ms * 1.05, tolerance=0.1)

    assert result.swaps == 0 and result.arch == net.derive() and result.within_target


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_derived_network_lands_within_the_band(net, fraction):
    model = FlopsLatencyModel()
    probe = derive_within_target(net, model, target_ms=1.0)
    target = probe.fastest_ms + fraction * (probe.slowest_ms - probe.fastest_ms)

    result = derive_within_target(net, model, target_ms=target, tolerance=0.1)

    assert result.within_target
    assert abs(result.predicted_ms - target) <= 0.1 * target
    assert result.predicted_ms == pytest.approx(arch_latency_ms(result.arch, model))


def test_tighter_target_gives_a_faster_network(net):
    model = FlopsLatencyModel()
    probe = derive_within_target(net, model, target_ms=1.0)
    span = probe.slowest_ms - probe.fastest_ms

    tight = derive_within_target(net, model, target_ms=probe.fastest_ms + 0.3 * span)
    loose = derive_within_target(net, model, target_ms=probe.fastest_ms + 0.7 * span)

    assert tight.predicted_ms < loose.predicted_ms


def test_infeasible_target_returns_the_fastest_network_and_says_so(net):
    model = FlopsLatencyModel()
    probe = derive_within_target(net, model, target_ms=1.0)

    result = derive_within_target(net, model, target_ms=probe.fastest_ms * 0.5)

    assert not result.within_target
    assert result.predicted_ms == pytest.approx(probe.fastest_ms)


def test_bad_arguments_are_named(net):
    with pytest.raises(ValueError, match="target_ms > 0"):
        derive_within_target(net, FlopsLatencyModel(), target_ms=0.0)


def test_the_jobs_narrow_band_is_reached_from_spread_probabilities():
    # A job's band is BAND_TOLERANCE (2%) wide under its top (jobs/margin.py): the greedy
    # swaps must land inside it from the probabilities a short search leaves, not stop at
    # the first network under the top.
    from automl_server.jobs.margin import BAND_TOLERANCE, TargetBand

    model = FlopsLatencyModel()
    supernet = SuperNet(get_space("tiny").layout(8, 10, 1))
    probe = derive_within_target(supernet, model, target_ms=1.0)
    generator = torch.Generator().manual_seed(0)
    landed = []
    for _ in range(40):
        with torch.no_grad():
            for mixed in supernet.mixed_ops:
                mixed.alpha.copy_(torch.randn(mixed.alpha.shape, generator=generator) * 1.5)
        for fraction in (0.2, 0.5, 0.8):
            top = probe.fastest_ms + fraction * (probe.slowest_ms - probe.fastest_ms)
            band = TargetBand.ending_at(top, margin=BAND_TOLERANCE, tolerance=BAND_TOLERANCE)
            result = derive_within_target(supernet, model, band.aim_ms, band.tolerance)
            assert result.predicted_ms <= top * (1 + 1e-9)  # never over the top
            landed.append(result.within_target)

    assert sum(landed) >= 0.95 * len(landed)


def spread_tiny_supernet(seed: int) -> SuperNet:
    """The tiny space at 8 px with spread random probabilities, as a short search leaves them."""
    supernet = SuperNet(get_space("tiny").layout(8, 10, 1))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mixed in supernet.mixed_ops:
            mixed.alpha.copy_(torch.randn(mixed.alpha.shape, generator=generator) * 1.5)
    return supernet


def _every_network(supernet, model):  # type: ignore[no-untyped-def]
    """Log-probability and predicted ms of every network of the space, arrays indexed by each
    cell's choice (numpy broadcasting: the tiny space at 8 px has 250,000)."""
    import numpy as np

    fixed_ms = float(supernet.fixed_latency_ms(model))
    latencies = [lat.double().numpy() for lat in supernet.cell_latencies_ms(model)]
    log_probs = [torch.log_softmax(op.alpha.detach().double(), 0).numpy() for op in supernet.mixed_ops]
    shape = [len(lat) for lat in latencies]
    score, total = np.zeros(shape), np.full(shape, fixed_ms)
    for cell, (lat, lp) in enumerate(zip(latencies, log_probs)):
        axis = [1] * len(shape)
        axis[cell] = len(lat)
        score, total = score + lp.reshape(axis), total + lat.reshape(axis)
    return score, total


def _most_probable_inside(supernet, score, total, low, high):  # type: ignore[no-untyped-def]
    """Blocks and latency of the networks predicted inside [low, high], most probable first."""
    import numpy as np

    inside = np.argwhere((total >= low) & (total <= high))
    ranked = sorted(inside.tolist(), key=lambda choice: -score[tuple(choice)])
    return [(tuple(op.candidates[c] for op, c in zip(supernet.mixed_ops, choice)), float(total[tuple(choice)]))
            for choice in ranked]


def test_the_most_probable_network_within_a_narrow_band_matches_enumerating_the_space():
    # The fit stage's band (5% wide) where the greedy derivation can step over every network:
    # the knapsack must find what enumerating the whole space finds, excluded networks skipped.
    from automl_server.engine.derive import most_probable_within

    model = FlopsLatencyModel()
    supernet = spread_tiny_supernet(seed=1)
    score, total = _every_network(supernet, model)
    fastest, slowest = float(total.min()), float(total.max())
    greedy_missed = 0
    for fraction in (0.15, 0.4, 0.75):
        low = fastest + fraction * (slowest - fastest)
        high = low * 1.05
        inside = _most_probable_inside(supernet, score, total, low, high)
        assert len(inside) >= 2
        found = most_probable_within(supernet, model, low, high)
        assert found is not None and found.within_target
        assert found.arch.blocks == inside[0][0] and found.predicted_ms == pytest.approx(inside[0][1])
        # The best network excluded: the next most probable inside the band.
        second = most_probable_within(supernet, model, low, high, exclude=[inside[0][0]])
        assert second is not None and second.arch.blocks == inside[1][0]
        greedy = derive_within_target(supernet, model, (low + high) / 2, (high - low) / (high + low))
        greedy_missed += greedy.arch.blocks != inside[0][0]
    assert greedy_missed  # what this adds: the greedy swaps do not find it on every band


def test_no_network_inside_the_band_is_said_as_none(net):
    from automl_server.engine.derive import most_probable_within

    model = FlopsLatencyModel()
    probe = derive_within_target(net, model, target_ms=1.0)

    assert most_probable_within(net, model, probe.slowest_ms * 1.1, probe.slowest_ms * 1.2) is None
    with pytest.raises(ValueError, match="low_ms <= high_ms"):
        most_probable_within(net, model, 2.0, 1.0)
