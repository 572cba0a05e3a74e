"""The operator graph of an ONNX model (the exported network, or any uploaded one).

ONNX rather than torch.fx: the schedule travels with the ONNX file the device
already receives, and the device-side executor (``device_agents/ios``) names
nodes exactly as this module does, so the schedule JSON needs no other model
format. The exporter has already folded BatchNorm into the convolutions.

A node is identified by its first output tensor (unique in an ONNX graph, which
node names are not required to be). Cheap element-wise nodes (activations,
BatchNorm, flatten, dropout) join the operator of the node that feeds them when
that node feeds nothing else, as the reference fuses activations into ``Conv``.
"""
from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from automl_server.engine.deploy.ios.graph import ConvSpec, Op, OpGraph

# Nodes cheap enough to run inside the operator that feeds them.
LIGHT_OPS = frozenset({"Relu", "Clip", "BatchNormalization", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu",
                       "Tanh", "Identity", "Dropout", "Flatten"})
ACTIVATIONS = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh"})
ONNX_OPSET = 17  # as automl_server.engine.deploy.export


def node_id(node: onnx.NodeProto) -> str:
    return node.output[0]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            # The TorchScript exporter names shared weights through Identity nodes: constants, not ops.
            values[node.output[0]] = values[node.input[0]]
    return values


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        # A named dimension is the batch of a dynamic-batch export: the schedule is made and
        # measured at batch 1, so its keys are those of the same network exported at batch 1.
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 if d.HasField("dim_param") else -1
                                  for d in dims)
    return shapes


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, (list, tuple)):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        elif not isinstance(value, (int, float, str)):
            value = str(type(value).__name__)  # tensors/graphs: their kind only
        out[attr.name] = value
    return out


def _node_signature(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> str:
    const_inputs = []
    for name in node.input:
        if name in constants:
            array = constants[name]
            # Small constants (Clip bounds, Reshape targets) change what the node
            # computes, so their values enter the signature; weights only by shape.
            const_inputs.append(array.tolist() if array.size <= 8 else list(array.shape))
    return f"{node.op_type}{json.dumps(_attrs(node), sort_keys=True)}{json.dumps(const_inputs)}"


def _conv_spec(nodes: list[onnx.NodeProto], data_inputs: list[str], shapes: dict[str, tuple[int, ...]],
               constants: dict[str, np.ndarray], signatures: list[str]) -> ConvSpec | None:
    """A ConvSpec when the op is Conv (+ one activation) that the reference would merge:
    a dense conv (group 1) with explicit symmetric padding."""
    conv = nodes[0]
    if conv.op_type != "Conv" or len(data_inputs) != 1 or len(nodes) > 2:
        return None
    if len(nodes) == 2 and nodes[1].op_type not in ACTIVATIONS:
        return None
    attrs = _attrs(conv)
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    weight = constants.get(conv.input[1])
    if weight is None or weight.ndim != 4:
        return None
    pads = attrs.get("pads", [0, 0, 0, 0])
    if pads[0] != pads[2] or pads[1] != pads[3]:
        return None
    return ConvSpec(
        input=data_inputs[0],
        kernel=(int(weight.shape[2]), int(weight.shape[3])),
        stride=tuple(attrs.get("strides", [1, 1])),
        dilation=tuple(attrs.get("dilations", [1, 1])),
        pads=(int(pads[0]), int(pads[1])),
        out_channels=int(weight.shape[0]),
        activation=signatures[1] if len(nodes) == 2 else "",
    )


def graph_from_onnx(model: onnx.ModelProto) -> OpGraph:
    """The operator graph of ``model`` (its nodes are topologically sorted, as ONNX requires)."""
    constants = _constants(model)
    shapes = _shapes(model)
    compute = [n for n in model.graph.node if n.op_type != "Constant" and n.output[0] not in constants]
    consumers: dict[str, int] = {}
    for node in compute:
        for name in node.input:
            if name and name not in constants:
                consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in model.graph.output}

    # Group nodes into operators: a light node with one data input joins the op
    # whose last node produced it, when that tensor has no other reader.
    members: list[list[onnx.NodeProto]] = []
    op_of_tensor: dict[str, int] = {}
    for node in compute:
        data_inputs = [name for name in node.input if name and name not in constants]
        if (node.op_type in LIGHT_OPS and len(data_inputs) == 1 and data_inputs[0] in op_of_tensor
                and consumers.get(data_inputs[0], 0) == 1 and data_inputs[0] not in outputs):
            owner = op_of_tensor[data_inputs[0]]
            if members[owner][-1].output[0] == data_inputs[0]:
                members[owner].append(node)
                for out in node.output:
                    op_of_tensor[out] = owner
                continue
        members.append([node])
        for out in node.output:
            op_of_tensor[out] = len(members) - 1

    ops: list[Op] = []
    preds: list[frozenset[int]] = []
    for index, nodes in enumerate(members):
        produced = {out for n in nodes for out in n.output}
        data_inputs = list(dict.fromkeys(
            name for n in nodes for name in n.input if name and name not in constants and name not in produced))
        signatures = [_node_signature(n, constants) for n in nodes]
        last = nodes[-1].output[0]
        signature = (f"in={[list(shapes.get(name, ())) for name in data_inputs]} "
                     + " > ".join(signatures) + f" out={list(shapes.get(last, ()))}")
        ops.append(Op(node_id(nodes[0]), tuple(node_id(n) for n in nodes), signature,
                      _conv_spec(nodes, data_inputs, shapes, constants, signatures)))
        preds.append(frozenset(op_of_tensor[name] for name in data_inputs if name in op_of_tensor
                               and op_of_tensor[name] != index))
    return OpGraph(tuple(ops), tuple(preds))


def export_module_onnx(module: Any, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """``module`` exported in memory the way the deploy stage exports it (opset 17,
    TorchScript exporter, static batch-1 shapes, input "input")."""
    import torch

    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        # arg-type: the stubs name only paths, but the TorchScript exporter (dynamo=False) writes to a buffer too.
        torch.onnx.export(module, (torch.zeros(input_shape),), buffer,  # type: ignore[arg-type]
                          dynamo=False, opset_version=ONNX_OPSET, input_names=["input"], output_names=["output"])
    return onnx.load_from_string(buffer.getvalue())
