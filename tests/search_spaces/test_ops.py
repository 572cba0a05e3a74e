"""Block strings, the MBConv and Zero ops, and the Cell's residual."""
from __future__ import annotations

import pytest
import torch

from search_spaces import BlockChoice, Cell, MBConv, Zero, build_op, parse_block


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("mb6_k5", BlockChoice(kind="mbconv", expand=6, kernel=5)),
        ("mb3_k7", BlockChoice(kind="mbconv", expand=3, kernel=7)),
        ("mb1_k3", BlockChoice(kind="mbconv", expand=1, kernel=3)),
        ("zero", BlockChoice(kind="zero")),
    ],
)
def test_parse_block_decodes_good_strings_and_names_them_back(block: str, expected: BlockChoice) -> None:
    choice = parse_block(block)

    assert choice == expected
    assert choice.name == block


@pytest.mark.parametrize("block", ["mb6_k4", "mb0_k3", "mb06_k3", "mb6k5", "Zero", "", "mb6_k5 ", "conv3x3"])
def test_parse_block_refuses_bad_strings_naming_them_and_the_accepted_forms(block: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_block(block)

    assert repr(block) in str(excinfo.value)
    assert "mb{E}_k{K}" in str(excinfo.value) and "'zero'" in str(excinfo.value)


@pytest.mark.parametrize(
    ("stride", "in_hw", "out_hw"), [(1, 8, 8), (2, 8, 4), (2, 7, 4), (1, 1, 1)]
)
def test_mbconv_output_shape_follows_channels_and_stride(stride: int, in_hw: int, out_hw: int) -> None:
    op = MBConv(8, 16, kernel=5, expand=6, stride=stride)

    out = op(torch.randn(2, 8, in_hw, in_hw))

    assert out.shape == (2, 16, out_hw, out_hw)
    assert op.block_string == "mb6_k5"


def test_mbconv_with_expand_1_has_no_expansion_conv() -> None:
    expanded, plain = MBConv(8, 8, 3, expand=6, stride=1), MBConv(8, 8, 3, expand=1, stride=1)

    n_convs = [sum(isinstance(m, torch.nn.Conv2d) for m in op.modules()) for op in (expanded, plain)]

    assert n_convs == [3, 2]
    assert expanded.depth_conv.conv.in_channels == 48  # in_ch * expand


def test_mbconv_itself_adds_no_residual() -> None:
    op = MBConv(8, 8, 3, expand=3, stride=1).eval()
    # A projection BN that outputs exactly 0 leaves only what a hidden shortcut would add.
    torch.nn.init.zeros_(op.point_linear.bn.weight)
    torch.nn.init.zeros_(op.point_linear.bn.bias)

    out = op(torch.randn(2, 8, 4, 4))

    assert torch.count_nonzero(out) == 0


def test_residual_cell_adds_its_input_and_plain_cell_does_not() -> None:
    x = torch.randn(2, 8, 4, 4)
    op = MBConv(8, 8, 3, expand=3, stride=1).eval()

    residual_out = Cell(op, residual=True)(x)
    plain_out = Cell(op, residual=False)(x)

    assert torch.allclose(residual_out, op(x) + x)
    assert torch.allclose(plain_out, op(x))


def test_zero_returns_zeros_shaped_like_the_output() -> None:
    out = Zero(8, 16, stride=2)(torch.randn(3, 8, 9, 9))

    assert out.shape == (3, 16, 5, 5)
    assert torch.count_nonzero(out) == 0


def test_zero_in_a_residual_cell_is_the_identity() -> None:
    x = torch.randn(2, 8, 4, 4)

    out = Cell(Zero(8, 8, stride=1), residual=True)(x)

    assert torch.equal(out, x)


def test_build_op_builds_the_named_op() -> None:
    mbconv = build_op("mb3_k7", 8, 16, 2)
    zero = build_op("zero", 8, 8, 1)

    assert isinstance(mbconv, MBConv) and (mbconv.expand, mbconv.kernel, mbconv.stride) == (3, 7, 2)
    assert isinstance(zero, Zero) and zero.block_string == "zero"


def test_build_op_refuses_an_unknown_block() -> None:
    with pytest.raises(ValueError, match="'mb6_k2'"):
        build_op("mb6_k2", 8, 8, 1)
