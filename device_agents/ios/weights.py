"""The agent's half of the "onnx-weightless" model format (device_agents/protocol.py): the
initializers the server sent without data are filled with seeded random values.

Values are He-like, normal with standard deviation 1 / sqrt(fan in) (fan in = elements / first
dim: a convolution's in-channels x kernel, a Gemm's inputs), so activations stay finite through a
deep network and the schedules' outputs can still be compared with the sequential run's.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from device_agents.protocol import WEIGHTLESS_MIN_ELEMENTS, ModelFile


def _is_empty(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_type == onnx.TensorProto.FLOAT and math.prod(tensor.dims) >= WEIGHTLESS_MIN_ELEMENTS
            and not tensor.raw_data and not tensor.float_data)


def filled_model(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` with every data-less large float initializer filled (in place; returned)."""
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if _is_empty(tensor):
            dims = tuple(int(d) for d in tensor.dims)
            fan_in = max(1, math.prod(dims) // max(1, dims[0]))
            values = (rng.standard_normal(dims) / math.sqrt(fan_in)).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return model


def load_model_file(model_file: ModelFile) -> onnx.ModelProto:
    """The ONNX model a task shipped, "onnx" as is, "onnx-weightless" with its weights filled."""
    if model_file.format not in ("onnx", "onnx-weightless"):
        raise ValueError(f"model_file.format must be 'onnx' or 'onnx-weightless' for an IOS task, "
                         f"got {model_file.format!r}")
    model = onnx.load_from_string(model_file.data())
    return filled_model(model) if model_file.format == "onnx-weightless" else model
