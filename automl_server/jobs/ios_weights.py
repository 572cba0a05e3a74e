"""The server's half of the "onnx-weightless" model format (device_agents/protocol.py).

An IOS schedule needs the time of each candidate stage, and the time of a dense
float kernel does not depend on its weights' values. The stage measurements go
to the device in chunks, each carrying the model; with its weights, a model like
Inception-v3 (95 MB) would cross the broker hundreds of times. So the large
float initializers travel as name, type and dims only, and the agent fills them
(``device_agents.ios.weights.filled_model``). Integer tensors (shapes, indices)
and small float ones (biases, scales) travel whole: they can change what runs.
"""
from __future__ import annotations

import math

from device_agents.protocol import WEIGHTLESS_MIN_ELEMENTS


def weightless_onnx(data: bytes) -> bytes:
    """``data`` (a serialized ONNX model) with its large float initializers' data left out."""
    import onnx

    model = onnx.load_from_string(data)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and math.prod(tensor.dims) >= WEIGHTLESS_MIN_ELEMENTS:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    return model.SerializeToString()
