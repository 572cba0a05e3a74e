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
