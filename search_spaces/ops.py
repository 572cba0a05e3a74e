"""Candidate operations of the ProxylessNAS space and the cell that holds one.

A block string names a candidate: ``mb{E}_k{K}`` is a MobileNetV2 inverted
bottleneck with expansion E and depthwise kernel K (``mb6_k5``), ``zero`` skips
the block. The strings are decoded here and nowhere else, so the search space,
the architecture spec and the engine's supernet all agree on what they mean.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

ZERO = "zero"
ACCEPTED_FORMS = "'mb{E}_k{K}' (expansion E >= 1, odd kernel K, e.g. 'mb6_k5') or 'zero'"
# No leading zeros, so that parse_block(s).name == s for every accepted string.
_MBCONV_RE = re.compile(r"mb([1-9][0-9]*)_k([1-9][0-9]*)")
# The reference code's BatchNorm setting (set_bn_param(momentum=0.1, eps=1e-3)).
BN_EPS = 1e-3


@dataclass(frozen=True)
class BlockChoice:
    """A decoded block string."""

    kind: str  # "mbconv" or "zero"
    expand: int = 0  # expansion ratio of the inverted bottleneck (0 for zero)
    kernel: int = 0  # depthwise kernel size (0 for zero)

    @property
    def name(self) -> str:
        """The block string this choice was parsed from."""
        if self.kind == ZERO:
            return ZERO
        return f"mb{self.expand}_k{self.kernel}"


def parse_block(block: str) -> BlockChoice:
    """Decode a block string; ValueError naming it and the accepted forms otherwise."""
    if not isinstance(block, str):
        raise ValueError(f"block must be a string, got {block!r}; accepted forms: {ACCEPTED_FORMS}")
    if block == ZERO:
        return BlockChoice(kind=ZERO)
    match = _MBCONV_RE.fullmatch(block)
    if match is None:
        raise ValueError(f"unknown block {block!r}; accepted forms: {ACCEPTED_FORMS}")
    expand, kernel = int(match.group(1)), int(match.group(2))
    if kernel % 2 == 0:
        # An even kernel cannot keep the map centred with padding K // 2.
        raise ValueError(f"block {block!r} has an even kernel {kernel}; accepted forms: {ACCEPTED_FORMS}")
    return BlockChoice(kind="mbconv", expand=expand, kernel=kernel)


def conv_out_hw(hw: int, stride: int) -> int:
    """Spatial size after a conv with odd kernel K, padding K // 2 and this stride."""
    return (hw + stride - 1) // stride


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    # He init on fan-out, as the reference code ('he_fout') and torchvision's MobileNetV2 do.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    return conv


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (bias-free, padding K // 2) + BatchNorm (+ ReLU6): the unit every layer here is made of."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = _init_conv(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    )
    layers["bn"] = nn.BatchNorm2d(out_ch, eps=BN_EPS)
    if act:
        # Not in-place: the engine re-runs ops under no_grad and must not see its input overwritten.
        layers["act"] = nn.ReLU6()
    return nn.Sequential(layers)


class MBConv(nn.Module):
    """MobileNetV2 inverted bottleneck without the residual (the Cell adds it).

    1x1 expand conv + BN + ReLU6 (omitted when expand == 1), depthwise KxK conv
    + BN + ReLU6, 1x1 project conv + BN with no activation (linear bottleneck).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, expand: int, stride: int) -> None:
        super().__init__()
        block_string = f"mb{expand}_k{kernel}"
        parse_block(block_string)  # the same rules as a block string: odd kernel, expand >= 1
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        self.block_string = block_string
        self.in_ch, self.out_ch = in_ch, out_ch
        self.kernel, self.expand, self.stride = kernel, expand, stride
        mid_ch = in_ch * expand
        self.inverted_bottleneck = conv_bn(in_ch, mid_ch, 1, 1) if expand != 1 else None
        self.depth_conv = conv_bn(mid_ch, mid_ch, kernel, stride, groups=mid_ch)
        self.point_linear = conv_bn(mid_ch, out_ch, 1, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))

    def extra_repr(self) -> str:
        return f"{self.block_string}, {self.in_ch}->{self.out_ch}, stride={self.stride}"


class Zero(nn.Module):
    """The "skip this block" candidate: zeros shaped like the block's output."""

    block_string = ZERO

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"Zero stride must be 1 or 2, got {stride}")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return x.new_zeros(n, self.out_ch, conv_out_hw(h, self.stride), conv_out_hw(w, self.stride))

    def extra_repr(self) -> str:
        return f"{self.in_ch}->{self.out_ch}, stride={self.stride}"


def build_op(block: str, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """The module for a block string: an MBConv or a Zero."""
    choice = parse_block(block)
    if choice.kind == ZERO:
        return Zero(in_ch, out_ch, stride)
    return MBConv(in_ch, out_ch, choice.kernel, choice.expand, stride)


class Cell(nn.Module):
    """One searchable position: out = op(x), plus x when the cell is residual.

    The residual lives here rather than in the op so that a Zero op in a
    residual cell reduces the cell to the identity, as in the paper.
    """

    def __init__(self, op: nn.Module, residual: bool) -> None:
        super().__init__()
        self.op = op
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op(x)
        return out + x if self.residual else out

    def extra_repr(self) -> str:
        return f"residual={self.residual}"
