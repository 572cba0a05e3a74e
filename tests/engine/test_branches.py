"""The ProxylessNAS search over a space with parallel branches, and the derived
network's parallel operators as the IOS scheduler sees them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine import FlopsLatencyModel, SuperNet
from automl_server.engine.data import split_arrays
from automl_server.engine.deploy.export import check_onnx, export_onnx
from automl_server.engine.deploy.ios import MERGE, PARALLEL, candidate_stages, export_module_onnx, graph_from_onnx
from automl_server.engine.derive import derive_within_target
from automl_server.engine.search import SearchConfig, arch_latency_ms, run_search
from search_spaces import Arch, arch_of, build_model, get_space, op_key
from search_spaces.ops import ZERO

SPACE = "tiny-branches"


def branch_net() -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(get_space(SPACE).layout(8, 10, 1))


@pytest.mark.parametrize("mode", ["weights", "two", "random", "fixed"])
def test_forward_and_backward_in_every_mode(mode):
    net = branch_net()
    net.set_mode(mode)
    net.sample(torch.Generator().manual_seed(1))

    loss = net(torch.randn(4, 1, 8, 8)).logsumexp(1).mean()
    loss.backward()

    assert len(net.mixed_ops) == 15
    if mode == "two":
        net.set_alpha_grad()
        # every branch is its own MixedOp: each sampled pair got a gate gradient (or a skipped Zero update)
        assert all(op.gate_grad is not None for op in net.mixed_ops)
        assert any(op.alpha.grad is not None and op.alpha.grad.abs().sum() > 0 for op in net.mixed_ops)
    else:
        assert any(p.grad is not None for p in net.weight_parameters())


def test_fixed_supernet_equals_the_derived_network_with_the_same_weights():
    net = branch_net()
    with torch.no_grad():
        for i, op in enumerate(net.mixed_ops):  # favour a Zero branch where one is offered
            op.alpha[len(op.candidates) - 1 if i % 2 else 0] += 1.0
    net.fix_chosen()
    net.eval()
    arch = net.derive()
    model = build_model(arch).eval()
    model.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith("cells.")}, strict=False)
    for cell, mixed in zip(model.cells, net.mixed_ops):
        cell.op.load_state_dict(mixed.active_op.state_dict())
    x = torch.randn(2, 1, 8, 8)

    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
    assert ZERO in arch.blocks and arch_of(model) == arch


def test_expected_latency_is_the_sum_over_branches_by_hand():
    net = branch_net()
    model = FlopsLatencyModel()
    layout = net.layout

    expected = float(net.expected_latency_ms(model).detach())

    by_hand = sum(model.latency_ms(op_key(layout, layer)) for layer in layout.fixed)
    for op, spec in zip(net.mixed_ops, layout.cells):
        probs = torch.softmax(op.alpha.detach().double(), 0).tolist()
        by_hand += sum(p * (0.0 if b == ZERO else model.latency_ms(op_key(layout, spec, b)))
                       for p, b in zip(probs, spec.candidates))
    assert expected == pytest.approx(by_hand)
    net.expected_latency_ms(model).backward()
    assert all(op.alpha.grad is not None and op.alpha.grad.abs().sum() > 0 for op in net.mixed_ops)


def test_derive_within_target_gives_a_valid_branched_arch():
    net, model = branch_net(), FlopsLatencyModel()
    fastest = derive_within_target(net, model, target_ms=1e-6).fastest_ms

    result = derive_within_target(net, model, target_ms=fastest * 1.05)

    assert result.arch.space == SPACE and len(result.arch.blocks) == 15
    assert result.predicted_ms == pytest.approx(arch_latency_ms(result.arch, model))
    assert result.predicted_ms < derive_within_target(net, model, 1e9, tolerance=0.5).slowest_ms


def test_search_on_8x8_digits_ends_with_a_buildable_branched_arch():
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    data = split_arrays(x[:200], raw.target[:200].astype(np.int64), seed=0)
    layout = get_space(SPACE).layout(data.resolution, data.num_classes, data.in_channels)
    config = SearchConfig(warmup_epochs=1, search_epochs=1, batch_size=32, arch_update_every=1, target_ms=0.05,
                          seed=0)

    result = run_search(layout, data, FlopsLatencyModel(), config)

    assert result.arch.space == SPACE and len(result.arch.blocks) == len(layout.cells)
    assert result.expected_latency_ms == pytest.approx(arch_latency_ms(result.arch, FlopsLatencyModel()))
    assert build_model(result.arch)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_the_exported_network_matches_torch_and_has_parallel_stages_for_ios(tmp_path):
    # arrange: a derived network whose non-residual blocks run three branches, one residual branch skipped
    layout = get_space(SPACE).layout(8, 10, 1)
    arch = Arch(SPACE, 8, 10, 1, tuple(ZERO if cell.index == 1 else cell.candidates[0] for cell in layout.cells))
    torch.manual_seed(0)
    model = build_model(arch).eval()

    check = check_onnx(model, export_onnx(model, (1, 1, 8, 8), tmp_path / "model.onnx"), torch.randn(3, 1, 8, 8))
    graph = graph_from_onnx(export_module_onnx(model, (1, 1, 8, 8)))
    stages = candidate_stages(graph)

    assert check.max_abs_diff < 1e-4 and check.agree_top1 == 1.0
    assert any(stage.kind == PARALLEL and len(stage.groups) >= 3 for stage in stages.values())
    assert any(stage.kind == MERGE for stage in stages.values())  # the branches' 1x1 expand convs share an input
    fan_out = [sum(u in preds for preds in graph.preds) for u in range(len(graph))]
    assert max(fan_out) >= 3  # a block's input feeds its three branches
