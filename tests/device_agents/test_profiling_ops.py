"""build_from_key: the search space's module for each kind of canonical key, at the key's shapes."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from device_agents.profiling import build_from_key
from latency_db.keys import parse_key
from search_spaces import Cell, MBConv, get_space, op_key


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Hundreds of tiny forwards: on a small shared machine, torch's thread pool only adds contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_output_shape(key: str, batch: int = 1) -> tuple[int, ...]:
    op = parse_key(key)
    if op.kind == "Logits":
        return (batch, op.out_ch)
    return (batch, op.out_ch, *op.output_hw)


@pytest.mark.parametrize(
    "key",
    [
        "expanded_conv-input:32x32x24-output:16x16x40-expand:6-kernel:5-stride:2-idskip:0",
        "expanded_conv-input:16x16x40-output:16x16x40-expand:3-kernel:7-stride:1-idskip:1",
        "expanded_conv-input:14x14x80-output:14x14x96-expand:6-kernel:3-stride:1-idskip:0",
        "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
        "expanded_conv-input:7x7x40-output:4x4x80-expand:3-kernel:3-stride:2-idskip:0",
        "Conv-input:224x224x3-output:112x112x32",
        "Conv-input:7x7x1-output:4x4x16",
        "Conv-input:6x6x3-output:6x6x16",
        "Conv_1-input:7x7x320-output:7x7x1280",
        "Logits-input:7x7x1280-output:1000",
    ],
)
def test_each_key_kind_builds_an_op_with_the_keys_shapes(key: str) -> None:
    module, input_shape = build_from_key(key)

    with torch.no_grad():
        out = module(torch.zeros(input_shape))

    op = parse_key(key)
    assert input_shape == (1, op.in_ch, *op.input_hw)
    assert tuple(out.shape) == expected_output_shape(key)
    assert not module.training


@pytest.mark.parametrize(("space", "resolution"), [("tiny", 32), ("proxyless-mobile", 28)])
def test_every_key_of_a_space_builds_with_the_shapes_it_states(space: str, resolution: int) -> None:
    layout = get_space(space).layout(resolution, 10, 3)
    keys = [op_key(layout, fixed) for fixed in layout.fixed] + [
        op_key(layout, cell, block) for cell in layout.cells for block in cell.candidates if block != "zero"
    ]

    for key in keys:
        module, input_shape = build_from_key(key)
        with torch.no_grad():
            out = module(torch.zeros(input_shape))
        assert tuple(out.shape) == expected_output_shape(key), key


def test_expanded_conv_is_the_search_spaces_mbconv_in_a_cell() -> None:
    module, _ = build_from_key("expanded_conv-input:16x16x40-output:16x16x40-expand:3-kernel:7-stride:1-idskip:1")

    assert isinstance(module, Cell) and module.residual
    assert isinstance(module.op, MBConv)
    assert (module.op.expand, module.op.kernel, module.op.stride) == (3, 7, 1)


def test_idskip_adds_the_input_to_the_ops_output() -> None:
    module, input_shape = build_from_key(
        "expanded_conv-input:8x8x16-output:8x8x16-expand:6-kernel:3-stride:1-idskip:1"
    )
    x = torch.randn(input_shape)

    with torch.no_grad():
        assert torch.allclose(module(x), module.op(x) + x)


def test_expand_1_is_the_first_blocks_mbconv1_without_an_expand_conv() -> None:
    module, _ = build_from_key("expanded_conv-input:16x16x32-output:16x16x16-expand:1-kernel:3-stride:1-idskip:0")

    assert module.op.inverted_bottleneck is None
    assert not module.residual


def test_conv_infers_its_stride_from_the_sizes_and_conv_1_is_pointwise() -> None:
    stem, _ = build_from_key("Conv-input:224x224x3-output:112x112x32")
    same, _ = build_from_key("Conv-input:6x6x3-output:6x6x32")
    mix, _ = build_from_key("Conv_1-input:7x7x320-output:7x7x1280")

    assert (stem.conv.kernel_size, stem.conv.stride) == ((3, 3), (2, 2))
    assert same.conv.stride == (1, 1)
    assert mix.conv.kernel_size == (1, 1)
    assert all(isinstance(layer.act, nn.ReLU6) for layer in (stem, same, mix))


def test_logits_is_pool_flatten_linear() -> None:
    module, _ = build_from_key("Logits-input:7x7x1280-output:1000")

    assert [type(layer) for layer in module] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert (module.linear.in_features, module.linear.out_features) == (1280, 1000)


def test_batch_sets_the_input_shapes_first_dimension() -> None:
    key = "Conv_1-input:7x7x320-output:7x7x1280"
    module, input_shape = build_from_key(key, batch=4)

    with torch.no_grad():
        out = module(torch.zeros(input_shape))

    assert input_shape[0] == 4 and tuple(out.shape) == expected_output_shape(key, batch=4)


def test_the_same_key_builds_the_same_weights_and_leaves_the_global_rng_alone() -> None:
    key = "expanded_conv-input:8x8x16-output:8x8x24-expand:6-kernel:5-stride:1-idskip:0"
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    first, _ = build_from_key(key)
    second, _ = build_from_key(key)

    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("expanded_conv-input:16x16x40-output:8x8x40-expand:3-kernel:3-stride:2-idskip:1", "idskip 1"),
        ("expanded_conv-input:16x16x40-output:16x16x40-expand:3-kernel:3-stride:2-idskip:0", "8x8"),
        ("expanded_conv-input:16x16x40-output:6x6x40-expand:3-kernel:3-stride:3-idskip:0", "stride must be 1 or 2"),
        ("expanded_conv-input:16x16x40-output:16x16x40-expand:3-kernel:4-stride:1-idskip:0", "even kernel"),
        ("Conv-input:224x224x3-output:56x56x32", "112x112"),
        ("Conv_1-input:7x7x320-output:4x4x1280", "7x7"),
        ("expanded_conv-input:16x16x40", "invalid operator key"),
        ("Pool-input:7x7x40-output:1x1x40", "unknown operator kind"),
    ],
)
def test_keys_that_name_no_buildable_op_are_refused_naming_what_is_wrong(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_from_key(key)


def test_batch_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match="batch"):
        build_from_key("Conv_1-input:7x7x320-output:7x7x1280", batch=0)
