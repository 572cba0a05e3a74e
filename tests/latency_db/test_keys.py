"""Canonical operator keys: every kind round-trips exactly; malformed keys are refused by name."""
from __future__ import annotations

import pytest

from latency_db import ACCEPTED_FORMS, InvalidKeyError, OpKey, parse_key
from tests.latency_db.conftest import CONV_1_KEY, CONV_KEY, LOGITS_KEY, MB_KEY


@pytest.mark.parametrize("key", [MB_KEY, CONV_KEY, CONV_1_KEY, LOGITS_KEY])
def test_every_kind_round_trips_exactly(key: str) -> None:
    op = parse_key(key)

    assert op.key == key
    assert parse_key(op.key) == op
    assert str(op) == key


def test_expanded_conv_fields_are_parsed() -> None:
    op = parse_key(MB_KEY)

    assert op == OpKey(
        "expanded_conv", (112, 112), 16, (56, 56), 24, expand=3, kernel=5, stride=2, idskip=0
    )


def test_logits_output_is_the_class_count() -> None:
    op = parse_key(LOGITS_KEY)

    assert (op.kind, op.input_hw, op.in_ch, op.output_hw, op.out_ch) == ("Logits", (7, 7), 1280, (1, 1), 1000)
    assert op.expand is op.kernel is op.stride is op.idskip is None


def test_non_square_maps_round_trip() -> None:
    op = OpKey("Conv", (240, 320), 3, (120, 160), 16)

    assert op.key == "Conv-input:240x320x3-output:120x160x16"
    assert parse_key(op.key) == op


def test_keys_from_the_search_space_all_parse_and_round_trip() -> None:
    search_spaces = pytest.importorskip("search_spaces")
    layout = search_spaces.get_space("proxyless-mobile").layout(224, 1000)
    keys = [search_spaces.op_key(layout, layer) for layer in layout.fixed]
    keys += [
        search_spaces.op_key(layout, cell, block)
        for cell in layout.cells
        for block in cell.candidates
        if block != "zero"
    ]

    parsed = [parse_key(key) for key in keys]

    assert [op.key for op in parsed] == keys
    assert {op.kind for op in parsed} == {"Conv", "expanded_conv", "Conv_1", "Logits"}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Pool-input:7x7x1280-output:1x1x1280",
        "conv-input:224x224x3-output:112x112x32",  # kinds are case-sensitive
        "Conv-input:224x224x3",  # no output
        "Conv-input:224x224-output:112x112x32",  # no channels
        "Conv-input:224x224x3-output:112x112x32-kernel:3",  # field of another kind
        "Conv-input:224x224x03-output:112x112x32",  # leading zero would not round-trip
        "Conv-input:0x224x3-output:112x112x32",  # zero size
        "Conv -input:224x224x3-output:112x112x32",
        "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2",  # no idskip
        "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:2",
        "expanded_conv-input:112x112x16-output:56x56x24-kernel:5-expand:3-stride:2-idskip:0",  # field order
        "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0-se:0-hs:0",
        "Logits-input:7x7x1280-output:1x1x1000",
    ],
)
def test_malformed_keys_are_refused_naming_the_key_and_the_forms(bad: str) -> None:
    with pytest.raises(InvalidKeyError) as excinfo:
        parse_key(bad)

    message = str(excinfo.value)
    assert repr(bad) in message
    assert all(form in message for form in ACCEPTED_FORMS)


def test_non_string_key_is_refused() -> None:
    with pytest.raises(InvalidKeyError, match="string"):
        parse_key(42)  # type: ignore[arg-type]


def test_invalid_key_error_is_a_value_error() -> None:
    assert issubclass(InvalidKeyError, ValueError)


@pytest.mark.parametrize(
    "fields",
    [
        dict(kind="Conv", input_hw=(224, 224), in_ch=3, output_hw=(112, 112), out_ch=32, kernel=3),
        dict(kind="expanded_conv", input_hw=(8, 8), in_ch=8, output_hw=(8, 8), out_ch=8, expand=1, kernel=3, stride=1),
        dict(
            kind="expanded_conv", input_hw=(8, 8), in_ch=8, output_hw=(8, 8), out_ch=8,
            expand=1, kernel=3, stride=1, idskip=True,
        ),
        dict(kind="Logits", input_hw=(7, 7), in_ch=1280, output_hw=(7, 7), out_ch=10),
        dict(kind="Conv", input_hw=(224,), in_ch=3, output_hw=(112, 112), out_ch=32),
        dict(kind="Conv", input_hw=(224, 224), in_ch=0, output_hw=(112, 112), out_ch=32),
        dict(kind="Dense", input_hw=(1, 1), in_ch=3, output_hw=(1, 1), out_ch=32),
    ],
)
def test_inconsistent_op_keys_cannot_be_built(fields: dict) -> None:
    with pytest.raises(InvalidKeyError):
        OpKey(**fields)
