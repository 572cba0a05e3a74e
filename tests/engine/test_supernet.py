"""SuperNet on registered search-space layouts: forward, parameters, derive, expected latency."""
from __future__ import annotations

import pytest
import torch

from automl_server.engine import FlopsLatencyModel, LutLatencyModel, MissingLatencyError, SuperNet, latency_loss
from search_spaces import Arch, arch_of, build_model, get_space, op_key


@pytest.fixture(scope="module")
def mobile_net() -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(get_space("proxyless-mobile").layout(32, 10, 1))


def tiny_net(dtype: torch.dtype = torch.float32) -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(get_space("tiny").layout(32, 10, 3)).to(dtype)


class CountingLatency:
    """A latency model that counts its look-ups."""

    def __init__(self) -> None:
        self.inner = FlopsLatencyModel()
        self.calls = 0

    def latency_ms(self, key: str) -> float:
        self.calls += 1
        return self.inner.latency_ms(key)


@pytest.mark.parametrize("mode", ["weights", "two", "random", "fixed"])
def test_forward_shape_in_every_mode(mobile_net: SuperNet, mode: str) -> None:
    mobile_net.set_mode(mode)
    mobile_net.sample(torch.Generator().manual_seed(1))
    out = mobile_net(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    mobile_net.set_mode("weights")


def test_weight_and_arch_parameters_are_disjoint_and_complete(mobile_net: SuperNet) -> None:
    weights = {id(p) for p in mobile_net.weight_parameters()}
    arch = {id(p) for p in mobile_net.arch_parameters()}
    assert len(arch) == len(mobile_net.layout.cells) == len(mobile_net.mixed_ops)
    assert not weights & arch
    assert weights | arch == {id(p) for p in mobile_net.parameters()}
    for alpha, spec in zip(mobile_net.arch_parameters(), mobile_net.layout.cells):
        assert alpha.shape == (len(spec.candidates),)


def test_derive_returns_the_argmax_arch_valid_for_the_space(mobile_net: SuperNet) -> None:
    # arrange: make one non-trivial block the favourite in every cell
    wanted = []
    with torch.no_grad():
        for i, (op, spec) in enumerate(zip(mobile_net.mixed_ops, mobile_net.layout.cells)):
            favourite = i % len(spec.candidates)
            op.alpha[favourite] += 1.0
            wanted.append(spec.candidates[favourite])
    # act
    arch = mobile_net.derive()
    # assert
    assert isinstance(arch, Arch)
    assert arch.blocks == tuple(wanted)
    assert Arch.from_dict(arch.to_dict()) == arch
    assert (arch.space, arch.resolution, arch.num_classes, arch.in_channels) == ("proxyless-mobile", 32, 10, 1)


def test_derived_arch_builds_a_single_net_with_the_supernet_shapes() -> None:
    net = tiny_net()
    arch = net.derive()
    single = build_model(arch)
    assert arch_of(single) == arch
    x = torch.randn(2, 3, 32, 32)
    net.fix_chosen()
    assert net(x).shape == single(x).shape == (2, 10)


def test_expected_latency_is_a_differentiable_sum_of_fixed_and_cells() -> None:
    # arrange
    net = tiny_net(torch.float64)
    flops = FlopsLatencyModel()
    layout = net.layout
    fixed_ms = sum(flops.latency_ms(op_key(layout, layer)) for layer in layout.fixed)
    by_hand = fixed_ms
    for op, spec in zip(net.mixed_ops, layout.cells):
        probs = op.probs().detach()
        for j, block in enumerate(spec.candidates):
            by_hand += 0.0 if block == "zero" else probs[j].item() * flops.latency_ms(op_key(layout, spec, block))
    # act
    expected = net.expected_latency_ms(flops)
    grads = torch.autograd.grad(expected, net.arch_parameters())
    # assert
    assert isinstance(expected, torch.Tensor) and expected.requires_grad
    assert expected.item() == pytest.approx(by_hand, rel=1e-12)
    assert all(g.abs().max() > 0 for g in grads)
    # central finite difference on one logit of every cell
    eps = 1e-6
    for op, grad in zip(net.mixed_ops, grads):
        with torch.no_grad():
            op.alpha[0] += eps
            plus = net.expected_latency_ms(flops).item()
            op.alpha[0] -= 2 * eps
            minus = net.expected_latency_ms(flops).item()
            op.alpha[0] += eps
        assert grad[0].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-10)


def test_latencies_are_looked_up_once_and_a_lut_gives_the_same_answer() -> None:
    net = tiny_net()
    counting = CountingLatency()
    first = net.expected_latency_ms(counting)
    calls = counting.calls
    second = net.expected_latency_ms(counting)
    assert counting.calls == calls > 0
    assert torch.equal(first, second)
    keys = net.latency_keys()
    lut = LutLatencyModel()
    for key in keys:
        lut.set(key, counting.inner.latency_ms(key))
    assert net.expected_latency_ms(lut).item() == pytest.approx(first.item(), rel=1e-6)
    zero_cells = [i for i, spec in enumerate(net.layout.cells) if "zero" in spec.candidates]
    assert zero_cells and all(net.cell_latencies_ms(lut)[i][-1] == 0.0 for i in zero_cells)
    incomplete = LutLatencyModel({k: lut.entry(k) for k in keys[:-1]})
    with pytest.raises(MissingLatencyError, match="profile"):
        net.expected_latency_ms(incomplete)


def test_two_path_architecture_step_updates_the_alphas() -> None:
    # arrange
    net = tiny_net()
    net.set_mode("two")
    optimizer = torch.optim.Adam(net.arch_parameters(), lr=1e-2, betas=(0.0, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = net.alphas_snapshot()
    # act
    net.sample(generator)
    ce = torch.nn.functional.cross_entropy(net(x), y)
    expected_ms = net.expected_latency_ms(FlopsLatencyModel())
    # a sub-ms target: logs in microseconds (see losses.py)
    loss = latency_loss(ce, expected_ms, target_ms=0.1, kind="mul#log", log_unit_ms=1e-3)
    net.zero_grad()
    loss.backward()
    net.set_alpha_grad()
    optimizer.step()
    net.rescale_alpha(before)
    # assert: every cell whose active op is not Zero moved; the skipped ones did not
    for op, old in zip(net.mixed_ops, before):
        assert torch.equal(op.alpha.detach(), old) == op.is_zero_active()
    assert any(not op.is_zero_active() for op in net.mixed_ops)
    assert net.derive().space == "tiny"


def test_zero_residual_gamma_starts_every_residual_cell_as_its_shortcut() -> None:
    net = tiny_net()
    net.zero_residual_gamma()
    net.eval()
    net.set_mode("fixed")
    residual = [cell for cell in net.cells if cell.residual]
    plain = [cell for cell in net.cells if not cell.residual]
    assert residual and plain
    for cell in residual:
        for index in range(cell.op.n_choices):
            cell.op.active_index = index
            inputs = torch.randn(2, cell_in(net, cell), 4, 4)
            assert torch.equal(cell(inputs), inputs), f"{cell.op.candidates[index]} is not the identity"
    # Cells without a shortcut keep their BatchNorm's gamma of 1 (they must still carry the signal).
    for cell in plain:
        for op in cell.op.ops:
            last = [m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
            assert torch.all(last.weight == 1.0)


def cell_in(net: SuperNet, cell: torch.nn.Module) -> int:
    return net.layout.cells[list(net.cells).index(cell)].in_ch


@pytest.mark.parametrize("space", ["proxyless-mobile", "tiny-branches"])
def test_start_candidates_alike_gives_every_candidate_of_a_cell_the_same_output(space: str) -> None:
    """Issue 17: the smallest candidate of each cell is embedded in every larger one (its kernel at the
    centre, its expanded channels first, the rest unheard), so that a cell computes one function
    whichever candidate is drawn; each candidate still has weights of its own."""
    torch.manual_seed(0)
    alike = SuperNet(get_space(space).layout(16, 10, 1))
    alike.start_candidates_alike()
    torch.manual_seed(0)
    apart = SuperNet(get_space(space).layout(16, 10, 1))
    for net in (alike, apart):
        net.train()  # BatchNorm on batch statistics, as in the search's weight steps
        net.set_mode("fixed")
    for cell_alike, cell_apart, spec in zip(alike.cells, apart.cells, alike.layout.cells):
        inputs = torch.randn(8, spec.in_ch, spec.input_hw, spec.input_hw)
        blocks = [block for block in spec.candidates if block != "zero"]
        outputs_alike, outputs_apart = [], []
        for block in blocks:
            cell_alike.op.active_index = cell_apart.op.active_index = spec.candidates.index(block)
            with torch.no_grad():
                outputs_alike.append(cell_alike(inputs))
                outputs_apart.append(cell_apart(inputs))
        for block, out in zip(blocks[1:], outputs_alike[1:]):
            torch.testing.assert_close(out, outputs_alike[0], msg=f"cell {spec.index}: {block} differs")
        assert not torch.allclose(outputs_apart[1], outputs_apart[0])  # the reference's independent starts
    weights = {id(p) for op in alike.cells[0].op.ops for p in op.parameters()}
    assert len(weights) == sum(1 for op in alike.cells[0].op.ops for _ in op.parameters())
