"""Writes the search space's ops as ``.tflite`` files, with no converter installed.

The general PyTorch -> LiteRT converter (``litert-torch``) weighs about 1 GB
(JAX, transformers, an MLIR converter) and pins ``typing-extensions<4.13``
through ``xdsl``, which the service's own pins (pydantic 2.14) cannot share.
The ops a latency key names are few and plain: convs with BatchNorm and
ReLU6, depthwise convs, a residual add, global pooling and a linear layer.
This module writes exactly those as TFLite builtins (BatchNorm folded into the
conv, ReLU6 fused, as the converters do), so that LiteRT can profile on any
agent with only ``ai-edge-litert`` (which ships the schema and ``flatbuffers``).
The result computes what the torch module computes (tests compare outputs).

Supported modules: a whole search-space network (``search_spaces.SingleNet``:
stem, cells, head, classifier; a skipped Zero cell is the identity, as its
residual makes it), ``Cell`` / ``MBConv``, ``nn.Sequential`` of
Conv2d [+ BatchNorm2d] [+ ReLU6], ``AdaptiveAvgPool2d(1)``, ``Flatten``,
``Linear``. Anything else raises ``UnsupportedModule``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import Cell, MBConv, Zero
from search_spaces.arch import SingleNet

_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
_BUFFER_ALIGNMENT = 16  # constant data aligned as the reference converter aligns it


class UnsupportedModule(ValueError, NotImplementedError):
    """The module holds a layer this writer cannot express; the message names it."""


def write_tflite(module: nn.Module, input_shape: tuple[int, ...], path: str | Path, *,
                 metadata: dict[str, bytes] | None = None) -> Path:
    """Write ``module``'s inference computation (BatchNorm with its running statistics, as in eval
    mode; the module itself is not changed) on an NCHW float32 input of ``input_shape`` as a TFLite
    model at ``path``.

    ``metadata``: named entries of the model's metadata table (the schema's
    ``Model.metadata``, name -> buffer), e.g. ``labels`` and ``preprocessing``
    as JSON bytes; LiteRT ignores names it does not know.

    The model takes and returns NHWC tensors (TFLite's layout): input
    ``(N, H, W, C)``; a 4-D output is NHWC, a 2-D one ``(N, features)``.
    """
    from ai_edge_litert import schema_py_generated as schema  # lazy: only LiteRT agents need it

    if len(input_shape) != 4:
        raise UnsupportedModule(f"write_tflite needs an NCHW input shape (4 numbers), got {tuple(input_shape)}")
    n, c, h, w = (int(v) for v in input_shape)
    graph = _Graph(schema)
    x = graph.tensor("input", [n, h, w, c])
    with torch.no_grad():
        y = graph.emit(module, x)
    path = Path(path)
    path.write_bytes(graph.finish(inputs=[x], outputs=[y], metadata=metadata or {}))
    return path


class _Graph:
    """One subgraph under construction: tensors (with their NHWC shapes), buffers, operators."""

    def __init__(self, schema: ModuleType) -> None:
        self.s = schema  # ai_edge_litert.schema_py_generated: generated classes, untyped (hence Any below)
        self.tensors: list[Any] = []
        self.shapes: list[list[int]] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty buffer every activation points at
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}  # builtin code -> index in the model's operator codes

    # -- tensors and operators -------------------------------------------------
    def tensor(self, name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        tensor = self.s.TensorT()
        tensor.name, tensor.shape = name, list(shape)
        is_int32 = data is not None and data.dtype == np.int32
        tensor.type = self.s.TensorType.INT32 if is_int32 else self.s.TensorType.FLOAT32
        tensor.buffer = 0
        if data is not None:
            buffer = _aligned_buffer_type()()
            buffer.data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            self.buffers.append(buffer)
            tensor.buffer = len(self.buffers) - 1
        self.tensors.append(tensor)
        self.shapes.append(list(shape))
        return len(self.tensors) - 1

    def constant(
        self, name: str, value: torch.Tensor | np.ndarray | list[Any], dtype: type[np.generic] = np.float32
    ) -> int:
        data: np.ndarray = np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value, dtype=dtype)
        return self.tensor(f"{name}_{len(self.tensors)}", list(data.shape), data)

    def op(self, code: int, inputs: list[int], out_shape: list[int], options_type: int, options: object) -> int:
        self.opcodes.setdefault(code, len(self.opcodes))
        out = self.tensor(f"activation_{len(self.tensors)}", out_shape)
        operator = self.s.OperatorT()
        operator.opcodeIndex, operator.inputs, operator.outputs = self.opcodes[code], inputs, [out]
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        self.operators.append(operator)
        return out

    # -- modules -----------------------------------------------------------------
    def emit(self, module: nn.Module, x: int) -> int:
        if isinstance(module, SingleNet):
            if any(len(block) > 1 for block in module.blocks):
                # Parallel branches summed per block (multi-branch spaces) are not written yet:
                # refusing beats writing them as a chain, which would be a different network.
                raise UnsupportedModule("write_tflite writes chain networks only; this one has parallel branches "
                                        "(a space with branches > 1): use an ONNX Runtime target")
            for cell in module.cells:
                if isinstance(cell.op, Zero) and not cell.residual:
                    raise UnsupportedModule("write_tflite cannot express a skipped (zero) cell without a residual")
            kept = [cell for cell in module.cells if not isinstance(cell.op, Zero)]  # zeros + input = input
            return self.emit_sequence([module.stem, *kept, module.head, module.classifier], x)
        if isinstance(module, Cell):
            out = self.emit(module.op, x)
            if module.residual:
                s = self.s
                add = s.BuiltinOperator.ADD
                out = self.op(add, [out, x], self.shapes[out], s.BuiltinOptions.AddOptions, s.AddOptionsT())
            return out
        if isinstance(module, MBConv):
            layers = [module.inverted_bottleneck, module.depth_conv, module.point_linear]
            return self.emit_sequence([layer for layer in layers if layer is not None], x)
        if isinstance(module, nn.Sequential):
            return self.emit_sequence(list(module), x)
        return self.emit_sequence([module], x)

    def emit_sequence(self, layers: list[nn.Module], x: int) -> int:
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Conv2d):
                following = layers[i + 1] if i + 1 < len(layers) else None
                bn = following if isinstance(following, nn.BatchNorm2d) else None
                j = i + 1 + (bn is not None)
                relu6 = j < len(layers) and isinstance(layers[j], nn.ReLU6)
                x = self.conv(layer, bn, relu6, x)
                i = j + relu6
            elif isinstance(layer, nn.AdaptiveAvgPool2d) and layer.output_size in (1, (1, 1)):
                x = self.global_mean(x)
                i += 1
            elif isinstance(layer, nn.Flatten) and len(self.shapes[x]) == 2:
                i += 1  # the pooled map is already (N, C)
            elif isinstance(layer, nn.Linear) and len(self.shapes[x]) == 2:
                x = self.linear(layer, x)
                i += 1
            elif isinstance(layer, (nn.Sequential, Cell, MBConv)):
                x = self.emit(layer, x)
                i += 1
            else:
                raise UnsupportedModule(
                    f"write_tflite cannot express {layer!r} (after a tensor of shape {self.shapes[x]}); "
                    "it writes Cell/MBConv, Conv2d [+BatchNorm2d] [+ReLU6], AdaptiveAvgPool2d(1), Flatten, Linear"
                )
        return x

    def conv(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu6: bool, x: int) -> int:
        s, op = self.s, self.s.BuiltinOperator
        n, h, w, c = self.shapes[x]
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedModule(f"write_tflite writes convs with zero padding and no dilation, got {conv!r}")
        depthwise = conv.groups > 1
        if conv.groups not in (1, c) or (depthwise and conv.in_channels != c):
            raise UnsupportedModule(f"write_tflite writes plain or depthwise convs, got groups={conv.groups}: {conv!r}")
        weight, bias = _folded(conv, bn)
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        out_hw = [(h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1]
        # Stride 1 with K // 2 padding is exactly TFLite's SAME; otherwise pad explicitly (as the
        # converters do) so that the output matches torch's symmetric padding element for element.
        if (sh, sw) == (1, 1) and (ph, pw) == (kh // 2, kw // 2) and kh % 2 == 1 and kw % 2 == 1:
            padding = s.Padding.SAME
        else:
            padding = s.Padding.VALID
            if ph or pw:
                pads = self.constant("paddings", [[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32)
                padded = [n, h + 2 * ph, w + 2 * pw, c]
                x = self.op(op.PAD, [x, pads], padded, s.BuiltinOptions.PadOptions, s.PadOptionsT())
        activation = s.ActivationFunctionType.RELU6 if relu6 else s.ActivationFunctionType.NONE
        if depthwise:
            options = s.DepthwiseConv2DOptionsT()
            options.depthMultiplier = conv.out_channels // c
            filters = weight.permute(1, 2, 3, 0)  # (C*M, 1, KH, KW) -> (1, KH, KW, C*M)
            code, options_type = op.DEPTHWISE_CONV_2D, s.BuiltinOptions.DepthwiseConv2DOptions
        else:
            options = s.Conv2DOptionsT()
            filters = weight.permute(0, 2, 3, 1)  # (O, I, KH, KW) -> (O, KH, KW, I)
            code, options_type = op.CONV_2D, s.BuiltinOptions.Conv2DOptions
        options.padding, options.strideH, options.strideW = padding, sh, sw
        options.dilationHFactor = options.dilationWFactor = 1
        options.fusedActivationFunction = activation
        inputs = [x, self.constant("filter", filters), self.constant("bias", bias)]
        return self.op(code, inputs, [n, *out_hw, conv.out_channels], options_type, options)

    def global_mean(self, x: int) -> int:
        s = self.s
        n, _, _, c = self.shapes[x]
        options = s.ReducerOptionsT()
        options.keepDims = False
        axes = self.constant("axes", [1, 2], np.int32)
        return self.op(s.BuiltinOperator.MEAN, [x, axes], [n, c], s.BuiltinOptions.ReducerOptions, options)

    def linear(self, linear: nn.Linear, x: int) -> int:
        s = self.s
        n, _ = self.shapes[x]
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        # TFLite's fully connected weights are (out, in), as torch stores them.
        inputs = [x, self.constant("weights", linear.weight), self.constant("bias", bias)]
        out_shape = [n, linear.out_features]
        options = s.FullyConnectedOptionsT()
        code, options_type = s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOptions.FullyConnectedOptions
        return self.op(code, inputs, out_shape, options_type, options)

    # -- the file ------------------------------------------------------------------
    def finish(self, inputs: list[int], outputs: list[int], metadata: dict[str, bytes]) -> bytes:
        import flatbuffers

        s = self.s
        entries = []
        for name, payload in metadata.items():
            buffer = s.BufferT()
            buffer.data = np.frombuffer(payload, np.uint8).copy()
            self.buffers.append(buffer)
            entry = s.MetadataT()
            entry.name, entry.buffer = name, len(self.buffers) - 1
            entries.append(entry)
        subgraph = s.SubGraphT()
        subgraph.tensors, subgraph.inputs, subgraph.outputs = self.tensors, inputs, outputs
        subgraph.operators, subgraph.name = self.operators, "main"
        model = s.ModelT()
        model.version, model.description = _SCHEMA_VERSION, "device_agents.profiling.tflite_writer"
        codes = sorted(self.opcodes, key=self.opcodes.__getitem__)
        model.operatorCodes = []
        for code in codes:
            opcode = s.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
            model.operatorCodes.append(opcode)
        model.subgraphs, model.buffers = [subgraph], self.buffers
        model.metadata = entries or None
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
        return bytes(builder.Output())


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv's weight and bias with the (eval-mode) BatchNorm folded in."""
    weight = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn is None:
        return weight, bias
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise UnsupportedModule("write_tflite folds BatchNorm2d's running statistics; this one keeps none "
                                "(track_running_stats=False)")
    scale = bn.weight.detach() / torch.sqrt(var + bn.eps)
    return weight * scale[:, None, None, None], bn.bias.detach() + (bias - mean) * scale


@functools.cache
def _aligned_buffer_type() -> type:
    from ai_edge_litert import schema_py_generated as schema

    class AlignedBufferT(schema.BufferT):
        """A BufferT whose bytes start on a 16-byte boundary (the generated Pack aligns uint8 data to 1)."""

        def Pack(self, builder: Any) -> int:  # noqa: N802 (flatbuffers' name); builder: flatbuffers.Builder, untyped
            payload = self.data.tobytes()
            builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
            schema.BufferStart(builder)
            schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)

    return AlignedBufferT
