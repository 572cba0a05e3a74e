"""MixedOp: gate gradients, alpha mapping, rescale, O(1) memory, Zero, expected latency."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.mixed_op import MixedOp
from search_spaces.ops import Cell, Zero, build_op

DIM = 6


def linear_mixed_op(n: int, seed: int = 0, names: list[str] | None = None) -> MixedOp:
    torch.manual_seed(seed)
    names = names or [f"lin{i}" for i in range(n)]
    ops = [nn.Linear(DIM, DIM, bias=False) for _ in range(n)]
    op = MixedOp(names, ops).double()
    with torch.no_grad():
        op.alpha.copy_(torch.randn(n, dtype=torch.float64))
    return op


def nonlinear_loss(out: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.sum(torch.tanh(out) * target) + 0.5 * torch.sum(out**2)


def test_two_path_gate_grads_match_explicit_gated_sum() -> None:
    # arrange
    mixed = linear_mixed_op(4)
    mixed.mode = "two"
    mixed.sample(torch.Generator().manual_seed(3))
    x = torch.randn(5, DIM, dtype=torch.float64, requires_grad=True)
    # act: the engine's path (only the active op runs forward)
    nonlinear_loss(mixed(x)).backward()
    engine_gate_grad, engine_x_grad = mixed.gate_grad.clone(), x.grad.clone()
    # the exact computation: out = sum_k g_k op_k(x) with the binary gates as leaves
    gates = torch.zeros(4, dtype=torch.float64)
    gates[mixed.active_index] = 1.0
    gates.requires_grad_(True)
    x_exact = x.detach().clone().requires_grad_(True)
    out = sum(gates[k] * mixed.ops[k](x_exact) for k in range(4))
    nonlinear_loss(out).backward()
    # assert
    for k in range(4):
        expected = gates.grad[k] if k in mixed.sampled else torch.tensor(0.0, dtype=torch.float64)
        assert engine_gate_grad[k].item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(engine_x_grad, x_exact.grad, atol=1e-12)
    assert engine_gate_grad[list(mixed.sampled)].abs().min() > 0


def test_two_path_draws_two_distinct_ops_and_runs_one() -> None:
    mixed = linear_mixed_op(5)
    mixed.mode = "two"
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        mixed.sample(generator)
        assert len(set(mixed.sampled)) == 2
        assert mixed.active_index in mixed.sampled
        assert mixed.gates.tolist() == [1.0 if k == mixed.active_index else 0.0 for k in range(5)]


def test_set_alpha_grad_matches_formula_and_softmax_autograd() -> None:
    # arrange
    mixed = linear_mixed_op(5, seed=1)
    mixed.mode = "two"
    mixed.sample(torch.Generator().manual_seed(7))
    x = torch.randn(3, DIM, dtype=torch.float64)
    nonlinear_loss(mixed(x)).backward()
    g = mixed.gate_grad.detach()
    sampled = list(mixed.sampled)
    prior = torch.arange(5, dtype=torch.float64) * 0.01  # e.g. a latency term already in alpha.grad
    mixed.alpha.grad = prior.clone()
    # act
    mixed.set_alpha_grad()
    # assert: by hand, dL/dalpha_i = sum_j g_j p_j (delta_ij - p_i) over the sampled pair
    p = F.softmax(mixed.alpha.detach()[sampled], dim=0)
    by_hand = torch.zeros(5, dtype=torch.float64)
    for a, i in enumerate(sampled):
        for b, j in enumerate(sampled):
            by_hand[i] += g[j] * p[b] * ((1.0 if i == j else 0.0) - p[a])
    assert torch.allclose(mixed.alpha.grad - prior, by_hand, atol=1e-14)
    # ... which is the gradient of sum_j g_j * softmax(alpha[S])_j
    alpha = mixed.alpha.detach().clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(torch.sum(g[sampled] * F.softmax(alpha[sampled], dim=0)), alpha)
    assert torch.allclose(mixed.alpha.grad - prior, autograd, atol=1e-14)
    unsampled = [k for k in range(5) if k not in sampled]
    assert torch.equal((mixed.alpha.grad - prior)[unsampled], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_rescale_keeps_unsampled_probs_and_pair_mass(seed: int) -> None:
    # arrange
    mixed = linear_mixed_op(5, seed=seed)
    mixed.mode = "two"
    optimizer = torch.optim.Adam([mixed.alpha], lr=0.2, betas=(0.0, 0.999))  # the reference's arch optimizer
    mixed.sample(torch.Generator().manual_seed(seed))
    probs_before = mixed.probs().detach().clone()
    nonlinear_loss(mixed(torch.randn(4, DIM, dtype=torch.float64))).backward()
    mixed.set_alpha_grad()
    alpha_before = mixed.alpha.detach().clone()
    # act
    optimizer.step()
    mixed.rescale_alpha(alpha_before)
    # assert
    probs_after = mixed.probs().detach()
    sampled = list(mixed.sampled)
    unsampled = [k for k in range(5) if k not in sampled]
    assert not torch.allclose(probs_after[sampled], probs_before[sampled], atol=1e-4)  # it did learn
    assert torch.allclose(probs_after[unsampled], probs_before[unsampled], atol=1e-6)
    assert probs_after[sampled].sum().item() == pytest.approx(probs_before[sampled].sum().item(), abs=1e-6)


def conv_candidates(n: int) -> list[nn.Module]:
    return [
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()) for _ in range(n)
    ]


def saved_bytes(forward) -> int:  # type: ignore[no-untyped-def]
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return total


def test_weights_mode_saves_o1_memory_while_all_paths_grows() -> None:
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    sampled_bytes, all_paths_bytes = {}, {}
    for n in (2, 4, 8):
        torch.manual_seed(0)
        mixed = MixedOp([f"conv{i}" for i in range(n)], conv_candidates(n))
        mixed.mode = "weights"
        mixed.sample(torch.Generator().manual_seed(n))
        sampled_bytes[n] = saved_bytes(lambda: mixed(x).sum())
        # DARTS-style: every path runs and is weighted by softmax(alpha)
        weights = mixed.probs()
        all_paths_bytes[n] = saved_bytes(lambda: sum(weights[k] * mixed.ops[k](x) for k in range(n)).sum())
    assert sampled_bytes[2] == sampled_bytes[4] == sampled_bytes[8] > 0
    assert all_paths_bytes[4] - all_paths_bytes[2] > 0
    growth_2_to_4 = all_paths_bytes[4] - all_paths_bytes[2]
    assert all_paths_bytes[8] - all_paths_bytes[4] == pytest.approx(2 * growth_2_to_4, rel=0.01)
    assert all_paths_bytes[8] > 6 * sampled_bytes[8]


def test_expected_latency_gradient_matches_finite_differences() -> None:
    mixed = linear_mixed_op(4, seed=2)
    latencies_ms = torch.tensor([3.0, 5.0, 0.0, 11.0], dtype=torch.float64)
    expected = mixed.expected_latency(latencies_ms)
    assert isinstance(expected, torch.Tensor) and expected.requires_grad
    (grad,) = torch.autograd.grad(expected, mixed.alpha)
    eps = 1e-6
    numeric = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for i in range(4):
            mixed.alpha[i] += eps
            plus = mixed.expected_latency(latencies_ms).item()
            mixed.alpha[i] -= 2 * eps
            minus = mixed.expected_latency(latencies_ms).item()
            mixed.alpha[i] += eps
            numeric[i] = (plus - minus) / (2 * eps)
    assert grad.abs().min() > 1e-3
    assert torch.allclose(grad, numeric, atol=1e-8)
    assert expected.item() == pytest.approx(float(torch.sum(mixed.probs().detach() * latencies_ms)))


def zero_mixed_op() -> MixedOp:
    torch.manual_seed(0)
    blocks = ["mb3_k3", "zero"]
    return MixedOp(blocks, [build_op(b, 8, 8, 1) for b in blocks])


def test_zero_op_outputs_zeros_and_residual_cell_is_identity() -> None:
    mixed = zero_mixed_op()
    mixed.mode = "fixed"
    mixed.active_index = 1
    mixed.sample()
    assert isinstance(mixed.active_op, Zero) and mixed.is_zero_active()
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(mixed(x), torch.zeros_like(x))
    assert torch.equal(Cell(mixed, residual=True)(x), x)


def test_zero_active_in_two_path_mode_skips_the_alpha_update() -> None:
    # arrange: draw until the Zero op is the active one
    mixed = zero_mixed_op()
    mixed.mode = "two"
    generator = torch.Generator().manual_seed(0)
    mixed.sample(generator)
    while not mixed.is_zero_active():
        mixed.sample(generator)
    cell = Cell(mixed, residual=True)
    optimizer = torch.optim.Adam([mixed.alpha], lr=0.1, betas=(0.0, 0.999))
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    out = cell(x)
    assert torch.equal(out, x)
    (out**2).sum().backward()
    mixed.alpha.grad = torch.ones(2)  # e.g. a latency-term gradient: the reference drops it too
    alpha_before = mixed.alpha.detach().clone()
    # act
    mixed.set_alpha_grad()
    optimizer.step()
    mixed.rescale_alpha(alpha_before)
    # assert
    assert mixed.alpha.grad is None
    assert torch.equal(mixed.alpha.detach(), alpha_before)
    assert mixed.gate_grad[1].item() == 0.0  # sum(zeros * grad_out)
    assert torch.allclose(x.grad, 2 * x.detach())  # the residual still carries the input gradient


def test_sampling_is_deterministic_with_a_generator_and_modes_are_validated() -> None:
    mixed = linear_mixed_op(6)
    draws = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(42)
        draws.append([])
        for mode in ("weights", "random", "two"):
            mixed.mode = mode
            for _ in range(5):
                mixed.sample(generator)
                draws[-1].append((mixed.active_index, mixed.sampled))
    assert draws[0] == draws[1]
    with pytest.raises(ValueError, match="accepted: weights, two, fixed, random"):
        mixed.mode = "full"
    mixed.mode = "fixed"
    mixed.active_index = 4
    assert mixed.gates.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="active_index 6 out of range"):
        mixed.active_index = 6
    with pytest.raises(ValueError, match="2 candidate names but 1 ops"):
        MixedOp(["a", "b"], [nn.Identity()])


def test_chosen_is_the_argmax_block_and_alpha_starts_near_uniform() -> None:
    torch.manual_seed(0)
    mixed = MixedOp(["a", "b", "c"], [nn.Identity() for _ in range(3)])
    assert mixed.alpha.detach().abs().max() < 1e-2
    assert torch.allclose(mixed.probs().detach(), torch.full((3,), 1 / 3), atol=1e-2)
    with torch.no_grad():
        mixed.alpha.copy_(torch.tensor([0.1, 2.0, -1.0]))
    assert mixed.chosen() == "b"
    assert mixed.log_prob().item() == pytest.approx(math.log(mixed.probs()[mixed.active_index].item()))
