"""Operator merge: convolutions reading one tensor computed as one wider convolution.

As the reference's ``construct`` does: the merged kernel is the largest kernel
(per dimension), each convolution's kernel sits zero-padded at its centre,
the padding is the largest padding, output channels are stacked in the
stage's order, biases concatenated (zeros where a conv had none). A shared
activation runs once on the stacked output; each op's result is its slice.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from device_agents.ios.onnx_ops import CompiledNode

Tensor = torch.Tensor


@dataclass(frozen=True)
class MergedConv:
    input: str
    weight: Tensor
    bias: Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    activation: CompiledNode | None  # applied to the whole output (it is element-wise)
    outputs: tuple[tuple[str, int, int], ...]  # (tensor each op produced, first channel, end channel)

    def run(self, env: dict[str, Tensor]) -> None:
        out = F.conv2d(env[self.input], self.weight, self.bias, self.stride, self.padding, self.dilation)
        if self.activation is not None:
            scratch = {self.activation.inputs[0]: out}
            self.activation.run(scratch)
            out = scratch[self.activation.outputs[0]]
        for name, begin, end in self.outputs:
            env[name] = out[:, begin:end]


def merge_convs(ops: Sequence[Sequence[CompiledNode]]) -> MergedConv:
    """One MergedConv for ops that are each [Conv] or [Conv, activation]; ValueError
    naming what differs when they cannot be merged exactly."""
    convs = [op[0] for op in ops]
    if any(c.op_type != "Conv" for c in convs) or any(len(op) > 2 for op in ops):
        raise ValueError("only ops made of a Conv and at most one activation can be merged")
    first = convs[0]
    inputs = {c.inputs[0] for c in convs}
    strides = {tuple(c.attrs.get("strides", [1, 1])) for c in convs}
    dilations = {tuple(c.attrs.get("dilations", [1, 1])) for c in convs}
    activations = {(op[1].op_type, repr(sorted(op[1].attrs.items())),
                    tuple(v.tolist() for _, v in sorted(op[1].constants.items()))) if len(op) == 2 else None
                   for op in ops}
    if len(inputs) != 1 or len(strides) != 1 or len(dilations) != 1 or len(activations) != 1:
        raise ValueError(f"convs to merge must share input, stride, dilation and activation; got inputs {inputs}, "
                         f"strides {strides}, dilations {dilations}, activations {activations}")
    if any(int(c.attrs.get("group", 1)) != 1 for c in convs):
        raise ValueError("grouped convolutions are not merged (as in the reference)")
    weights = [c.constants[1] for c in convs]
    kh = max(int(w.shape[2]) for w in weights)
    kw = max(int(w.shape[3]) for w in weights)
    pads = [list(c.attrs.get("pads", [0, 0, 0, 0])) for c in convs]
    ph, pw = max(p[0] for p in pads), max(p[1] for p in pads)
    for c, w, p in zip(convs, weights, pads):
        dh, dw = kh - int(w.shape[2]), kw - int(w.shape[3])
        if p[0] != p[2] or p[1] != p[3] or dh % 2 or dw % 2 or ph - p[0] != dh // 2 or pw - p[1] != dw // 2:
            raise ValueError(f"conv {c.node_id!r} (kernel {tuple(w.shape[2:])}, pads {p}) does not stay centred "
                             f"in a {kh}x{kw} kernel with padding ({ph}, {pw})")
    out_total = sum(int(w.shape[0]) for w in weights)
    weight = weights[0].new_zeros(out_total, int(weights[0].shape[1]), kh, kw)
    bias = weights[0].new_zeros(out_total)
    outputs = []
    begin = 0
    for op, c, w in zip(ops, convs, weights):
        dh, dw = (kh - int(w.shape[2])) // 2, (kw - int(w.shape[3])) // 2
        end = begin + int(w.shape[0])
        weight[begin:end, :, dh:dh + int(w.shape[2]), dw:dw + int(w.shape[3])] = w
        if 2 in c.constants:
            bias[begin:end] = c.constants[2]
        outputs.append((op[-1].outputs[0], begin, end))
        begin = end
    activation = ops[0][1] if len(ops[0]) == 2 else None
    return MergedConv(first.inputs[0], weight, bias, next(iter(strides)), (ph, pw),
                      next(iter(dilations)), activation, tuple(outputs))
