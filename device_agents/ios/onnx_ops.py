"""ONNX nodes run as PyTorch calls, one node at a time.

The executor needs to run any subset of a model's nodes, in any grouping, on
threads or CUDA streams; a whole-graph runtime (ONNX Runtime) cannot be cut
that way without a session per group. So each node becomes a small torch
function over the node's inputs; weights are converted once, at load.
The operator set covers the exported networks of this service and the usual
CNN exports (Inception, SqueezeNet, NASNet-like cells); anything else is
refused at load with the node and the list of supported types.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

Tensor = torch.Tensor
NodeFn = Callable[[list[Any]], list[Tensor]]


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def constants_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(attrs_of(node)["value"])
        elif node.op_type == "Identity" and node.input[0] in values:
            # The TorchScript exporter names shared weights through Identity nodes: constants, not ops.
            values[node.output[0]] = values[node.input[0]]
    return values


def fold_identity_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose Identity-of-constant nodes are initializers (as the scheduler sees them)."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    known = {t.name for t in folded.graph.initializer}
    values = constants_of(model)
    keep = []
    for node in folded.graph.node:
        if node.op_type == "Identity" and node.output[0] in values and node.input[0] in values:
            folded.graph.initializer.append(numpy_helper.from_array(np.asarray(values[node.output[0]]),
                                                                    node.output[0]))
            known.add(node.output[0])
            continue
        keep.append(node)
    del folded.graph.node[:]
    folded.graph.node.extend(keep)
    return folded


def _pads(attrs: dict[str, Any], rank: int = 2) -> tuple[list[int], bool]:
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", ""):
        raise ValueError(f"auto_pad={attrs['auto_pad']!r} is not supported; export with explicit pads")
    return pads, pads[:rank] == pads[rank:]


def _padded(x: Tensor, pads: list[int], value: float) -> Tensor:
    # ONNX pads are [top, left, bottom, right]; F.pad takes (left, right, top, bottom).
    return F.pad(x, (pads[1], pads[3], pads[0], pads[2]), value=value)


def _conv(attrs: dict[str, Any]) -> NodeFn:
    pads, symmetric = _pads(attrs)
    stride = tuple(attrs.get("strides", [1, 1]))
    dilation = tuple(attrs.get("dilations", [1, 1]))
    groups = int(attrs.get("group", 1))

    def run(xs: list[Any]) -> list[Tensor]:
        x, w = xs[0], xs[1]
        b = xs[2] if len(xs) > 2 else None
        if symmetric:
            return [F.conv2d(x, w, b, stride, (pads[0], pads[1]), dilation, groups)]
        return [F.conv2d(_padded(x, pads, 0.0), w, b, stride, 0, dilation, groups)]

    return run


def _pool(attrs: dict[str, Any], kind: str) -> NodeFn:
    pads, symmetric = _pads(attrs)
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", [1, 1]))
    ceil = bool(attrs.get("ceil_mode", 0))
    include_pad = bool(attrs.get("count_include_pad", 0))
    if not symmetric:
        raise ValueError(f"{kind} with asymmetric pads {pads} is not supported")

    def run(xs: list[Any]) -> list[Tensor]:
        if kind == "MaxPool":
            return [F.max_pool2d(xs[0], kernel, stride, (pads[0], pads[1]), tuple(attrs.get("dilations", [1, 1])),
                                 ceil_mode=ceil)]
        return [F.avg_pool2d(xs[0], kernel, stride, (pads[0], pads[1]), ceil_mode=ceil,
                             count_include_pad=include_pad)]

    return run


def _gemm(attrs: dict[str, Any]) -> NodeFn:
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))

    def run(xs: list[Any]) -> list[Tensor]:
        a = xs[0].t() if trans_a else xs[0]
        b = xs[1].t() if trans_b else xs[1]
        out = alpha * (a @ b)
        if len(xs) > 2 and xs[2] is not None:
            out = out + beta * xs[2]
        return [out]

    return run


def _flatten(attrs: dict[str, Any]) -> NodeFn:
    axis = int(attrs.get("axis", 1))
    return lambda xs: [xs[0].reshape(int(np.prod(xs[0].shape[:axis])), -1)]


def _reshape(attrs: dict[str, Any]) -> NodeFn:
    def run(xs: list[Any]) -> list[Tensor]:
        shape = [int(s) for s in xs[1].tolist()]
        # ONNX 0 copies the input's dimension (allowzero = 0, the default).
        shape = [xs[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [xs[0].reshape(shape)]

    return run


def _reduce_mean(attrs: dict[str, Any]) -> NodeFn:
    keep = bool(attrs.get("keepdims", 1))

    def run(xs: list[Any]) -> list[Tensor]:
        axes = attrs.get("axes")
        if axes is None and len(xs) > 1 and xs[1] is not None:
            axes = [int(a) for a in xs[1].tolist()]
        return [xs[0].mean(dim=tuple(axes), keepdim=keep) if axes else xs[0].mean()]

    return run


def _slice(attrs: dict[str, Any]) -> NodeFn:
    def run(xs: list[Any]) -> list[Tensor]:
        x = xs[0]
        starts, ends = xs[1].tolist(), xs[2].tolist()
        axes = xs[3].tolist() if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = xs[4].tolist() if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
        index: list[slice] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step < 1:
                raise ValueError(f"Slice with step {step} is not supported (steps >= 1)")
            size = x.shape[axis]
            # ONNX clamps out-of-range bounds (INT64_MAX means "to the end").
            index[axis] = slice(max(-size, min(start, size)), max(-size, min(end, size)), step)
        return [x[tuple(index)]]

    return run


def _clip(attrs: dict[str, Any]) -> NodeFn:
    def run(xs: list[Any]) -> list[Tensor]:
        low = xs[1] if len(xs) > 1 and xs[1] is not None else attrs.get("min")
        high = xs[2] if len(xs) > 2 and xs[2] is not None else attrs.get("max")
        low = float(low) if low is not None else None
        high = float(high) if high is not None else None
        return [torch.clamp(xs[0], low, high)]

    return run


def _batch_norm(attrs: dict[str, Any]) -> NodeFn:
    eps = float(attrs.get("epsilon", 1e-5))
    return lambda xs: [F.batch_norm(xs[0], xs[3], xs[4], xs[1], xs[2], False, 0.0, eps)]


def _simple(fn: Callable[..., Tensor]) -> Callable[[dict[str, Any]], NodeFn]:
    return lambda attrs: (lambda xs: [fn(*xs)])


BUILDERS: dict[str, Callable[[dict[str, Any]], NodeFn]] = {
    "Conv": _conv,
    "MaxPool": lambda a: _pool(a, "MaxPool"),
    "AveragePool": lambda a: _pool(a, "AveragePool"),
    "GlobalAveragePool": lambda a: (lambda xs: [xs[0].mean(dim=(2, 3), keepdim=True)]),
    "GlobalMaxPool": lambda a: (lambda xs: [torch.amax(xs[0], dim=(2, 3), keepdim=True)]),
    "Gemm": _gemm,
    "MatMul": _simple(torch.matmul),
    "Add": _simple(torch.add),
    "Sub": _simple(torch.sub),
    "Mul": _simple(torch.mul),
    "Div": _simple(torch.div),
    "Relu": _simple(F.relu),
    "Sigmoid": _simple(torch.sigmoid),
    "Tanh": _simple(torch.tanh),
    "HardSwish": _simple(F.hardswish),
    "HardSigmoid": lambda a: (lambda xs: [torch.clamp(xs[0] * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)),
                                                      0.0, 1.0)]),
    "LeakyRelu": lambda a: (lambda xs: [F.leaky_relu(xs[0], float(a.get("alpha", 0.01)))]),
    "Clip": _clip,
    "BatchNormalization": _batch_norm,
    "Concat": lambda a: (lambda xs: [torch.cat(list(xs), dim=int(a["axis"]))]),
    "Flatten": _flatten,
    "Slice": _slice,
    "Reshape": _reshape,
    "ReduceMean": _reduce_mean,
    "Identity": lambda a: (lambda xs: [xs[0]]),
    "Dropout": lambda a: (lambda xs: [xs[0]]),  # inference: the identity
}


@dataclass(frozen=True)
class CompiledNode:
    node_id: str  # its first output tensor
    op_type: str
    attrs: dict[str, Any]
    inputs: tuple[str, ...]  # tensor names read from the environment ("" = absent optional input)
    constants: dict[int, Tensor]  # input position -> constant tensor
    outputs: tuple[str, ...]
    fn: NodeFn

    def run(self, env: dict[str, Tensor]) -> None:
        args = [self.constants[i] if i in self.constants else (env[name] if name else None)
                for i, name in enumerate(self.inputs)]
        for name, value in zip(self.outputs, self.fn(args)):
            env[name] = value


def compile_nodes(model: onnx.ModelProto, device: torch.device | str = "cpu") -> tuple[dict[str, CompiledNode],
                                                                                        dict[str, np.ndarray]]:
    """Every non-Constant node of ``model`` by its id, and the model's constants."""
    constants = constants_of(model)
    tensors = {name: torch.from_numpy(np.array(value)).to(device) for name, value in constants.items()}
    compiled: dict[str, CompiledNode] = {}
    for node in model.graph.node:
        if node.op_type == "Constant" or node.output[0] in constants:
            continue
        builder = BUILDERS.get(node.op_type)
        if builder is None:
            raise ValueError(f"node {node.name or node.output[0]!r}: op type {node.op_type!r} is not supported by "
                             f"the IOS executor; supported: {', '.join(sorted(BUILDERS))}")
        attrs = attrs_of(node)
        const_inputs = {i: tensors[name] for i, name in enumerate(node.input) if name in tensors}
        compiled[node.output[0]] = CompiledNode(node.output[0], node.op_type, attrs, tuple(node.input),
                                                const_inputs, tuple(node.output), builder(attrs))
    return compiled, constants


def run_sequentially(nodes: Sequence[CompiledNode], env: dict[str, Tensor]) -> None:
    for node in nodes:
        node.run(env)
