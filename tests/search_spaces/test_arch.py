"""Arch specs: JSON, validation, spec -> model -> spec, forward shapes, sampling."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from search_spaces import Arch, arch_of, build_fixed_layers, build_model, build_op, get_space, list_spaces, sample_archs

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "search_spaces" / "ARCH_SCHEMA.md"
# tiny at 32 px: cells 2, 4, 5, 6 are residual, so they alone may be "zero".
TINY_BLOCKS = ("mb6_k3", "mb3_k5", "zero", "mb6_k5", "mb3_k3", "zero", "mb3_k3", "mb6_k3")


def tiny_arch(**change: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "space": "tiny",
        "resolution": 32,
        "num_classes": 10,
        "in_channels": 1,
        "blocks": list(TINY_BLOCKS),
    }
    spec.update(change)
    return spec


def test_arch_json_round_trip_keeps_every_field() -> None:
    arch = Arch.from_dict(tiny_arch())

    again = Arch.from_json(arch.to_json())

    assert again == arch
    assert json.loads(arch.to_json()) == tiny_arch()


def test_in_channels_defaults_to_rgb() -> None:
    spec = tiny_arch()
    del spec["in_channels"]

    assert Arch.from_dict(spec).in_channels == 3


def test_the_schema_doc_example_is_a_valid_arch() -> None:
    example = re.search(r"```json\n(.*?)```", SCHEMA_DOC.read_text(), re.DOTALL)
    assert example is not None

    arch = Arch.from_json(example.group(1))

    assert arch.blocks == TINY_BLOCKS


def test_zero_where_the_cell_is_not_residual_names_cell_block_and_accepted_blocks() -> None:
    blocks = ["zero", *TINY_BLOCKS[1:]]

    with pytest.raises(ValueError) as excinfo:
        Arch.from_dict(tiny_arch(blocks=blocks))

    message = str(excinfo.value)
    assert "cell 0" in message and "'zero'" in message
    assert "accepted blocks for this cell: mb3_k3, mb3_k5, mb6_k3, mb6_k5" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": "nope"}, r"unknown search space 'nope'.*tiny"),
        ({"blocks": list(TINY_BLOCKS[:-1])}, "has 8 cells, got 7 blocks"),
        ({"blocks": [*TINY_BLOCKS[:-1], "mb6_k7"]}, r"cell 7 .*'mb6_k7' is not accepted"),
        ({"blocks": "mb6_k3"}, "list of block strings"),
        ({"blocks": [*TINY_BLOCKS[:-1], 3]}, "list of block strings"),
        ({"resolution": "32"}, "resolution must be an integer"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"extra": 1}, "unknown fields extra"),
    ],
)
def test_invalid_specs_are_refused_naming_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Arch.from_dict(tiny_arch(**change))


def test_missing_fields_and_bad_json_are_refused() -> None:
    spec = tiny_arch()
    del spec["blocks"]

    with pytest.raises(ValueError, match="missing blocks"):
        Arch.from_dict(spec)
    with pytest.raises(ValueError, match="not valid JSON"):
        Arch.from_json("{space: tiny")
    with pytest.raises(ValueError, match="must be an object"):
        Arch.from_json("[1, 2]")


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("space", [space.name for space in list_spaces()])
def test_sampled_arch_survives_spec_model_spec(space: str, in_channels: int) -> None:
    archs = sample_archs(space, 2, seed=7, resolution=32, num_classes=10, in_channels=in_channels)

    for arch in archs:
        model = build_model(arch)
        assert arch_of(model) == arch
        assert model.to_arch() == arch


def test_arch_of_reads_the_modules_not_the_stored_arch() -> None:
    arch = Arch.from_dict(tiny_arch())
    model = build_model(arch)
    cell = arch.layout().cells[2]
    model.cells[2].op = build_op("mb6_k5", cell.in_ch, cell.out_ch, cell.stride)

    read_back = arch_of(model)

    assert read_back.blocks[2] == "mb6_k5"
    assert model.arch == arch


def test_arch_of_refuses_a_cell_whose_channels_do_not_match_the_space() -> None:
    model = build_model(Arch.from_dict(tiny_arch()))
    model.cells[3].op = build_op("mb3_k3", 8, 24, 1)

    with pytest.raises(ValueError, match="cell 3"):
        arch_of(model)


@pytest.mark.parametrize(
    ("space", "resolution", "in_channels"), [("tiny", 8, 1), ("tiny", 28, 1), ("proxyless-mobile", 32, 3)]
)
def test_forward_gives_one_logit_per_class(space: str, resolution: int, in_channels: int) -> None:
    arch = sample_archs(space, 1, seed=1, resolution=resolution, num_classes=7, in_channels=in_channels)[0]
    model = build_model(arch)

    logits = model(torch.randn(3, in_channels, resolution, resolution))

    assert logits.shape == (3, 7)


def test_fixed_layers_produce_the_layout_shapes() -> None:
    layout = get_space("tiny").layout(28, 10, in_channels=1)
    stem, head, classifier = build_fixed_layers(layout)
    first_block = layout.fixed_layer("first_block")
    feature_mix = layout.fixed_layer("feature_mix")

    stem_out = stem(torch.randn(2, 1, 28, 28))
    head_out = head(torch.randn(2, feature_mix.in_ch, feature_mix.input_hw, feature_mix.input_hw))

    assert stem_out.shape == (2, first_block.out_ch, first_block.output_hw, first_block.output_hw)
    assert head_out.shape == (2, feature_mix.out_ch)
    assert classifier(head_out).shape == (2, 10)


def test_sample_archs_is_deterministic_for_a_seed() -> None:
    first = sample_archs("proxyless-cpu", 5, seed=3, resolution=32)
    again = sample_archs("proxyless-cpu", 5, seed=3, resolution=32)
    other = sample_archs("proxyless-cpu", 5, seed=4, resolution=32)

    assert first == again
    assert first != other
    assert all(arch.resolution == 32 and arch.num_classes == 10 for arch in first)


def test_sample_archs_uses_zero_only_where_the_cell_accepts_it() -> None:
    archs = sample_archs("proxyless-mobile", 20, seed=0, resolution=32)
    cells = get_space("proxyless-mobile").layout(32, 10).cells

    used_zero = {cell.index for arch in archs for cell, b in zip(cells, arch.blocks) if b == "zero"}

    assert used_zero
    assert all(cells[i].residual for i in used_zero)


def test_sample_archs_refuses_a_negative_count() -> None:
    assert sample_archs("tiny", 0, seed=0, resolution=32) == []
    with pytest.raises(ValueError, match="n must be"):
        sample_archs("tiny", -1, seed=0, resolution=32)
