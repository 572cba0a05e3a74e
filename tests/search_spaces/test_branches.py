"""Spaces with parallel branches: layout, keys, the plain network and its spec."""
from __future__ import annotations

import pytest
import torch

from device_agents.profiling.ops import build_from_key
from latency_db.keys import OpKey, parse_key
from search_spaces import Arch, SearchSpace, arch_keys, arch_of, build_model, get_space, sample_archs, space_keys
from search_spaces.arch import run_blocks
from search_spaces.ops import ZERO


@pytest.fixture(scope="module")
def layout():  # type: ignore[no-untyped-def]
    return get_space("tiny-branches").layout(8, 10, 1)


def test_every_position_is_a_block_of_three_branches_sharing_its_shapes(layout):
    blocks = layout.blocks()

    assert len(blocks) == 5 and all(len(block) == 3 for block in blocks)
    assert [i for block in blocks for i in block] == list(range(len(layout.cells)))
    for block in blocks:
        shapes = {(layout.cells[i].in_ch, layout.cells[i].out_ch, layout.cells[i].stride,
                   layout.cells[i].input_hw, layout.cells[i].candidates) for i in block}
        assert len(shapes) == 1
        assert [layout.cells[i].branch for i in block] == [0, 1, 2]


def test_only_branch_zero_carries_the_shortcut_and_zero_only_where_it_exists(layout):
    for cell in layout.cells:
        assert cell.residual == (cell.block_residual and cell.branch == 0)
        assert (ZERO in cell.candidates) == cell.block_residual
    assert any(cell.block_residual for cell in layout.cells)
    assert any(not cell.block_residual for cell in layout.cells)


def test_chain_spaces_keep_one_cell_per_block_and_their_keys():
    chain = get_space("tiny").layout(32, 10, 3)

    assert chain.blocks() == tuple((cell.index,) for cell in chain.cells)
    assert all(cell.branches == 1 and cell.residual == cell.block_residual for cell in chain.cells)
    assert get_space("proxyless-mobile").num_cells == 21


def test_every_key_parses_and_the_agent_builds_it_at_the_keyed_shapes(layout):
    keys = space_keys(layout)

    assert any("idskip:1" in key for key in keys) and any("idskip:0" in key for key in keys)
    for key in keys:
        op = parse_key(key)
        assert isinstance(op, OpKey) and op.key == key
        module, shape = build_from_key(key)
        with torch.no_grad():
            out = module(torch.randn(shape))
        if op.kind != "Logits":
            assert out.shape == (1, op.out_ch, *op.output_hw)


def test_build_model_runs_and_reads_back_its_arch(layout):
    arch = sample_archs("tiny-branches", 1, seed=4, resolution=8, num_classes=10, in_channels=1)[0]

    model = build_model(arch).eval()

    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert arch_of(model) == arch
    assert Arch.from_json(arch.to_json()) == arch
    assert len(arch.blocks) == len(layout.cells) == 15


def test_the_network_sums_its_branches_and_the_input_of_residual_blocks():
    # arrange: block 0 (8 -> 8 ch, residual) with branch 1 skipped; other blocks fixed
    layout = get_space("tiny-branches").layout(8, 10, 1)
    blocks = ["zero" if cell.index == 1 else cell.candidates[0] for cell in layout.cells]
    model = build_model(Arch("tiny-branches", 8, 10, 1, tuple(blocks))).eval()
    x = torch.randn(2, 8, 4, 4)

    # act: the block's output by hand
    with torch.no_grad():
        expected = model.cells[0].op(x) + x + model.cells[2].op(x)
        got = run_blocks(model.cells, [model.blocks[0]], x, drop_zero=True)

    assert torch.allclose(got, expected)


def test_an_all_zero_residual_block_is_the_identity():
    layout = get_space("tiny-branches").layout(8, 10, 1)
    blocks = ["zero" if cell.index < 3 else cell.candidates[0] for cell in layout.cells]
    model = build_model(Arch("tiny-branches", 8, 10, 1, tuple(blocks))).eval()
    x = torch.randn(1, 8, 4, 4)

    assert torch.equal(run_blocks(model.cells, [model.blocks[0]], x, drop_zero=True), x)
    assert len(arch_keys(model.arch)) == 4 + 12  # fixed layers + the 12 branches that run (Zero costs 0 ms)


def test_zero_is_refused_on_a_block_without_shortcut():
    layout = get_space("tiny-branches").layout(8, 10, 1)
    bad = next(cell for cell in layout.cells if not cell.block_residual)
    blocks = ["zero" if cell.index == bad.index else cell.candidates[0] for cell in layout.cells]

    with pytest.raises(ValueError, match=f"cell {bad.index} .*accepted blocks"):
        Arch("tiny-branches", 8, 10, 1, tuple(blocks))


def test_branches_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="branches must be an integer >= 1"):
        SearchSpace(name="bad", description="", width_mult=1.0, candidates=("mb3_k3",), allow_zero=False,
                    stage_widths=(16,), stage_cells=(1,), stage_strides=(1,), branches=0)


def test_inception_mobile_is_registered_with_the_paper_candidates():
    space = get_space("inception-mobile")
    layout = space.layout(224, 1000)

    assert space.branches == 3 and space.num_cells == 36 == len(layout.cells)
    assert set(layout.cells[0].candidates) == {"mb3_k3", "mb3_k5", "mb3_k7", "mb6_k3", "mb6_k5", "mb6_k7"}
    assert layout.cells[-1].output_hw == 7


def test_the_tflite_writer_refuses_a_network_with_parallel_branches(tmp_path):
    from device_agents.profiling.tflite_writer import UnsupportedModule, write_tflite
    from search_spaces import build_model, sample_archs

    arch = sample_archs("tiny-branches", 1, seed=0, resolution=8, num_classes=10, in_channels=1)[0]
    with pytest.raises(UnsupportedModule, match="parallel branches"):
        write_tflite(build_model(arch), (1, 8, 8, 1), tmp_path / "m.tflite")
