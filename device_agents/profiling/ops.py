"""The operator a canonical latency key names, built from the search space's own modules.

Building from ``search_spaces`` (not a copy of its layers) is what makes a
measured latency the latency of the op the search and the final model run.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from latency_db.keys import CONV, CONV_1, EXPANDED_CONV, LOGITS, OpKey, parse_key
from search_spaces import Cell, build_op
from search_spaces.ops import conv_bn, conv_out_hw

# Weights are drawn from a private seed: the same key always builds the same
# tensors (and the same exported file), and the caller's RNG is left alone.
_WEIGHT_SEED = 0


def build_from_key(key: str | OpKey, batch: int = 1) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """The module (eval mode) a key names and its NCHW input shape.

    - ``expanded_conv``: a ``Cell`` holding the MBConv of that expansion
      (1 = the first block's MBConv1, no expand conv) and kernel; the cell adds
      its input when ``idskip`` is 1.
    - ``Conv``: the stem, 3x3 conv + BN + ReLU6, stride read from the sizes.
    - ``Conv_1``: the feature mix, 1x1 conv + BN + ReLU6.
    - ``Logits``: global average pool, flatten, Linear.

    ValueError (``InvalidKeyError`` for a malformed key) when the key's sizes
    do not fit the op, naming the key and what would.
    """
    op = parse_key(key) if isinstance(key, str) else key
    if not isinstance(op, OpKey):
        raise ValueError(f"build_from_key takes a key string or an OpKey, got {type(key).__name__}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_WEIGHT_SEED)
        module = _BUILDERS[op.kind](op)
    return module.eval(), (batch, op.in_ch, *op.input_hw)


def _expanded_conv(op: OpKey) -> nn.Module:
    if op.stride not in (1, 2):
        raise ValueError(f"{op.key}: stride must be 1 or 2, got {op.stride}")
    _check_output_hw(op, op.stride)
    residual = op.idskip == 1
    if residual and (op.stride != 1 or op.in_ch != op.out_ch):
        raise ValueError(
            f"{op.key}: idskip 1 needs stride 1 and as many output as input channels "
            f"(got stride {op.stride}, {op.in_ch}->{op.out_ch})"
        )
    return Cell(build_op(f"mb{op.expand}_k{op.kernel}", op.in_ch, op.out_ch, op.stride), residual)


def _conv(op: OpKey) -> nn.Module:
    for stride in (1, 2):
        if _output_hw(op.input_hw, stride) == op.output_hw:
            return conv_bn(op.in_ch, op.out_ch, 3, stride)
    raise ValueError(
        f"{op.key}: a 3x3 conv maps {_hw(op.input_hw)} to {_hw(_output_hw(op.input_hw, 1))} (stride 1) "
        f"or {_hw(_output_hw(op.input_hw, 2))} (stride 2), not {_hw(op.output_hw)}"
    )


def _conv_1(op: OpKey) -> nn.Module:
    _check_output_hw(op, 1)
    return conv_bn(op.in_ch, op.out_ch, 1, 1)


def _logits(op: OpKey) -> nn.Module:
    # The reference "Logits" entry covers the global pool and the classifier (its dropout is 0).
    return nn.Sequential(
        OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), linear=nn.Linear(op.in_ch, op.out_ch))
    )


_BUILDERS = {EXPANDED_CONV: _expanded_conv, CONV: _conv, CONV_1: _conv_1, LOGITS: _logits}


def _output_hw(input_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    return (conv_out_hw(input_hw[0], stride), conv_out_hw(input_hw[1], stride))


def _check_output_hw(op: OpKey, stride: int) -> None:
    expected = _output_hw(op.input_hw, stride)
    if op.output_hw != expected:
        raise ValueError(
            f"{op.key}: with stride {stride} the output of a {_hw(op.input_hw)} input is {_hw(expected)}, "
            f"not {_hw(op.output_hw)}"
        )


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"
