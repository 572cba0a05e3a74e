"""Registered spaces, layouts per resolution, channels, zero placement, LUT keys."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from search_spaces import (
    CellSpec,
    FixedLayer,
    SearchSpace,
    build_model,
    get_space,
    list_spaces,
    op_key,
    register_space,
    sample_archs,
)
from search_spaces.spaces import make_divisible

PAPER_CANDIDATES = ("mb3_k3", "mb3_k5", "mb3_k7", "mb6_k3", "mb6_k5", "mb6_k7")


def channels(space: SearchSpace, resolution: int = 224) -> list[int]:
    """Stem, first block, each stage's width, final conv."""
    layout = space.layout(resolution, 10)
    stage_out: dict[int, int] = {cell.stage: cell.out_ch for cell in layout.cells}
    return [
        layout.fixed_layer("first_conv").out_ch,
        layout.fixed_layer("first_block").out_ch,
        *stage_out.values(),
        layout.fixed_layer("feature_mix").out_ch,
    ]


def test_the_paper_spaces_and_tiny_are_registered() -> None:
    names = [space.name for space in list_spaces()]

    assert {"proxyless-mobile", "proxyless-cpu", "proxyless-gpu", "tiny"} <= set(names)
    for name in ("proxyless-mobile", "proxyless-cpu", "proxyless-gpu"):
        space = get_space(name)
        assert (space.width_mult, space.candidates, space.allow_zero) == (1.0, PAPER_CANDIDATES, True)
        assert space.stage_cells == (4, 4, 4, 4, 4, 1) and space.stage_strides == (2, 2, 2, 1, 2, 1)


def test_get_space_refuses_an_unknown_name_listing_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*proxyless-mobile.*tiny"):
        get_space("nope")


@pytest.mark.parametrize(
    ("resolution", "stem_hw", "cell_hw"),
    [
        (224, 112, [56] * 4 + [28] * 4 + [14] * 8 + [7] * 5),
        (32, 16, [8] * 4 + [4] * 17),
        (28, 14, [7] * 21),
        (8, 4, [4] * 21),
    ],
)
def test_paper_layout_downsamples_only_while_the_map_is_at_least_8px(
    resolution: int, stem_hw: int, cell_hw: list[int]
) -> None:
    layout = get_space("proxyless-mobile").layout(resolution, 10)

    assert layout.fixed_layer("first_conv").output_hw == stem_hw
    assert [cell.output_hw for cell in layout.cells] == cell_hw
    assert all(cell.input_hw == cell.output_hw * cell.stride for cell in layout.cells)
    assert layout.fixed_layer("classifier").input_hw == cell_hw[-1]


def test_tiny_layout_at_mnist_size_takes_grayscale_input() -> None:
    layout = get_space("tiny").layout(28, 10, in_channels=1)

    assert layout.fixed_layer("first_conv").in_ch == 1
    assert [cell.output_hw for cell in layout.cells] == [7] * 8


def test_channels_of_the_paper_space_at_width_1() -> None:
    assert channels(get_space("proxyless-gpu")) == [32, 16, 24, 40, 80, 96, 192, 320, 1280]


def test_channels_of_tiny_follow_width_multiplier_035() -> None:
    assert channels(get_space("tiny")) == [8, 8, 8, 8, 16, 16, 32, 256]


def test_channels_scale_with_a_wider_multiplier_including_the_final_conv() -> None:
    wide = dataclasses.replace(get_space("proxyless-mobile"), name="wide", width_mult=1.4)

    assert channels(wide) == [48, 24, 32, 56, 112, 136, 272, 448, 1792]


@pytest.mark.parametrize(("value", "expected"), [(33.6, 32), (5.6, 8), (16.8, 16), (2.8, 8), (134.4, 136)])
def test_make_divisible_rounds_to_multiples_of_8_as_mobilenet(value: float, expected: int) -> None:
    assert make_divisible(value, 8) == expected


@pytest.mark.parametrize(
    ("name", "resolution"), [("proxyless-mobile", 224), ("proxyless-cpu", 32), ("tiny", 32), ("tiny", 8)]
)
def test_zero_is_a_candidate_exactly_where_the_cell_is_residual(name: str, resolution: int) -> None:
    layout = get_space(name).layout(resolution, 10)

    for cell in layout.cells:
        assert ("zero" in cell.candidates) == (cell.stride == 1 and cell.in_ch == cell.out_ch)


def test_first_cell_of_a_stride_2_stage_refuses_zero() -> None:
    cell = get_space("proxyless-mobile").layout(224, 1000).cells[0]

    assert cell.stride == 2 and cell.candidates == PAPER_CANDIDATES


def test_op_key_matches_the_reference_mobile_lut_example() -> None:
    layout = get_space("proxyless-mobile").layout(224, 1000)

    key = op_key(layout, layout.cells[0], "mb6_k5")

    assert key == "expanded_conv-input:112x112x16-output:56x56x24-expand:6-kernel:5-stride:2-idskip:0"


def test_op_key_marks_residual_cells_with_idskip_1() -> None:
    layout = get_space("proxyless-mobile").layout(224, 1000)

    key = op_key(layout, layout.cells[1], "mb3_k3")

    assert key == "expanded_conv-input:56x56x24-output:56x56x24-expand:3-kernel:3-stride:1-idskip:1"


def test_op_key_of_the_fixed_layers() -> None:
    layout = get_space("proxyless-mobile").layout(224, 1000)

    keys = [op_key(layout, layer) for layer in layout.fixed]

    assert keys == [
        "Conv-input:224x224x3-output:112x112x32",
        "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
        "Conv_1-input:7x7x320-output:7x7x1280",
        "Logits-input:7x7x1280-output:1000",
    ]


def test_op_key_follows_small_grayscale_layouts() -> None:
    layout = get_space("tiny").layout(32, 10, in_channels=1)

    assert op_key(layout, layout.fixed[0]) == "Conv-input:32x32x1-output:16x16x8"
    assert op_key(layout, layout.fixed[-1]) == "Logits-input:4x4x256-output:10"


@pytest.mark.parametrize(
    ("cell_index", "block", "message"),
    [(1, "zero", "0 ms"), (0, "zero", "not a candidate"), (0, "mb6_k9", "not a candidate"), (0, None, "needs a block")],
)
def test_op_key_refuses_blocks_without_a_latency_entry(cell_index: int, block: str | None, message: str) -> None:
    layout = get_space("proxyless-mobile").layout(224, 1000)

    with pytest.raises(ValueError, match=message):
        op_key(layout, layout.cells[cell_index], block)


def test_op_key_refuses_a_block_for_a_fixed_layer() -> None:
    layout = get_space("proxyless-mobile").layout(224, 1000)

    with pytest.raises(ValueError, match="takes no block"):
        op_key(layout, layout.fixed[0], "mb6_k5")


@pytest.mark.usefixtures("private_registry")
def test_a_new_space_is_one_register_call_and_then_usable_everywhere() -> None:
    register_space(
        SearchSpace(
            name="test-micro",
            description="two stages for the test",
            width_mult=1.0,
            candidates=("mb3_k3",),
            allow_zero=True,
            stage_widths=(16, 24),
            stage_cells=(2, 1),
            stage_strides=(1, 2),
            first_conv_ch=8,
            first_block_ch=16,
            last_ch=64,
        )
    )

    arch = sample_archs("test-micro", 1, seed=0, resolution=16)[0]
    logits = build_model(arch)(torch.randn(2, 3, 16, 16))

    assert get_space("test-micro") in list_spaces()
    assert [cell.candidates for cell in arch.layout().cells] == [("mb3_k3", "zero")] * 2 + [("mb3_k3",)]
    assert logits.shape == (2, 10)


@pytest.mark.usefixtures("private_registry")
def test_registering_a_different_space_under_a_taken_name_is_refused() -> None:
    clash = dataclasses.replace(get_space("tiny"), width_mult=0.5)

    with pytest.raises(ValueError, match="'tiny' is already registered"):
        register_space(clash)
    assert register_space(get_space("tiny")) is get_space("tiny")  # the identical space is a no-op


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"candidates": ("mb3_k3", "zero")}, "allow_zero"),
        ({"candidates": ("mb3_k4",)}, "'mb3_k4'"),
        ({"stage_cells": (1, 2)}, "one entry per stage"),
        ({"stage_strides": (2, 2, 2, 1, 3)}, "1 or 2"),
        ({"width_mult": 0}, "width_mult"),
        ({"name": "has space"}, "name"),
    ],
)
def test_an_inconsistent_space_definition_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_space("tiny"), **change)


@pytest.mark.parametrize(("field", "value"), [("resolution", 0), ("num_classes", 0), ("in_channels", True)])
def test_layout_refuses_non_positive_sizes(field: str, value: object) -> None:
    sizes: dict[str, object] = {"resolution": 32, "num_classes": 10, "in_channels": 3, field: value}

    with pytest.raises(ValueError, match=field):
        get_space("tiny").layout(**sizes)  # type: ignore[arg-type]


def test_layout_records_are_the_interface_types() -> None:
    layout = get_space("tiny").layout(32, 10)

    assert all(isinstance(cell, CellSpec) for cell in layout.cells)
    assert [layer.name for layer in layout.fixed] == ["first_conv", "first_block", "feature_mix", "classifier"]
    assert all(isinstance(layer, FixedLayer) for layer in layout.fixed)
