"""A small, valid TFLite model written without a converter.

No TFLite converter runs in this environment (no TensorFlow, no
ai-edge-torch), so the test model is assembled from LiteRT's own flatbuffer
schema (`ai_edge_litert.schema_py_generated`, object API + `flatbuffers`):
a two-layer perceptron, FULLY_CONNECTED(+ReLU) -> FULLY_CONNECTED, float32,
with fixed pseudo-random weights. It is a real model of a real op: LiteRT's
interpreter loads it and runs its kernels.
"""
from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

_FILE_IDENTIFIER = b"TFL3"  # what the interpreter checks in bytes 4..8
_SCHEMA_VERSION = 3


def _tensor(name: str, shape: list[int], buffer_index: int) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name = name
    tensor.shape = shape
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = buffer_index
    return tensor


def _data_buffer(values: np.ndarray) -> schema.BufferT:
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(values.astype("<f4").tobytes(), dtype=np.uint8)
    return buffer


def _fully_connected(inputs: list[int], output: int, activation: int) -> schema.OperatorT:
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = activation
    operator = schema.OperatorT()
    operator.opcodeIndex = 0
    operator.inputs = inputs
    operator.outputs = [output]
    operator.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    operator.builtinOptions = options
    return operator


def dense_model_bytes(features: int = 128, hidden: int = 512, seed: int = 0) -> bytes:
    """Flatbuffer bytes of input[1,features] -> FC+ReLU[hidden] -> FC[features]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, features)).astype(np.float32) / np.sqrt(features)
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.standard_normal((features, hidden)).astype(np.float32) / np.sqrt(hidden)
    b2 = np.zeros(features, np.float32)

    # Buffer 0 is the empty sentinel that activations point at, as converters write it.
    buffers = [schema.BufferT(), _data_buffer(w1), _data_buffer(b1), _data_buffer(w2), _data_buffer(b2)]
    tensors = [
        _tensor("input", [1, features], 0),
        _tensor("dense1/weights", [hidden, features], 1),
        _tensor("dense1/bias", [hidden], 2),
        _tensor("dense1/relu", [1, hidden], 0),
        _tensor("dense2/weights", [features, hidden], 3),
        _tensor("dense2/bias", [features], 4),
        _tensor("output", [1, features], 0),
    ]
    subgraph = schema.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = tensors
    subgraph.inputs = [0]
    subgraph.outputs = [6]
    subgraph.operators = [
        _fully_connected([0, 1, 2], 3, schema.ActivationFunctionType.RELU),
        _fully_connected([3, 4, 5], 6, schema.ActivationFunctionType.NONE),
    ]

    opcode = schema.OperatorCodeT()
    opcode.builtinCode = schema.BuiltinOperator.FULLY_CONNECTED
    opcode.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    opcode.version = 1

    model = schema.ModelT()
    model.version = _SCHEMA_VERSION
    model.description = "automl test: 2-layer MLP"
    model.operatorCodes = [opcode]
    model.subgraphs = [subgraph]
    model.buffers = buffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def write_dense_model(path: Path, **kwargs: int) -> Path:
    """Write `dense_model_bytes(**kwargs)` to `path`; returns `path`."""
    path.write_bytes(dense_model_bytes(**kwargs))
    return path
