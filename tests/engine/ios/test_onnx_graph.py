"""The operator graph read from an exported ONNX model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from automl_server.engine.deploy.ios import blocks, export_module_onnx, graph_from_onnx, is_mergeable


def conv_relu(cin: int, cout: int, kernel: tuple[int, int], stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=(kernel[0] // 2, kernel[1] // 2)),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Module(nn.Module):
    """stem, then four branches reading the stem (one strided), concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_relu(3, 8, (3, 3))
        self.b1 = conv_relu(8, 4, (1, 1))
        self.b3 = conv_relu(8, 4, (3, 3))
        self.b17 = conv_relu(8, 4, (1, 7))
        self.strided = conv_relu(8, 4, (3, 3), stride=2)
        self.pool = nn.MaxPool2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b3(x), self.b17(x), self.pool(x)], 1)
        return torch.cat([nn.functional.max_pool2d(y, 2), self.strided(x)], 1)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return export_module_onnx(Module().eval(), (1, 3, 16, 16))


def test_ops_are_compute_nodes_with_their_activations_and_blocks_close_at_the_concat(model):
    graph = graph_from_onnx(model)

    kinds = [[node.split("/")[-1].rsplit("_output", 1)[0] for node in op.nodes] for op in graph.ops]
    assert ["Conv", "Relu"] in kinds and ["MaxPool"] in kinds and ["Concat"] in kinds
    assert len(graph) == 9  # stem, 3 branch convs, pool, concat, pool, strided conv, concat
    assert [len(b) for b in blocks(graph)] == [1, 8]  # only the stem cuts: the strided conv spans the rest


def test_convs_reading_one_tensor_merge_only_with_equal_stride_and_centred_kernels(model):
    graph = graph_from_onnx(model)
    by_name = {op.name.split("/")[1]: i for i, op in enumerate(graph.ops) if "/" in op.name}

    def mask(*names: str) -> int:
        return sum(1 << by_name[n] for n in names)

    assert is_mergeable(graph, mask("b1", "b3", "b17"))  # 1x1, 3x3 and 1x7 all stay centred
    assert not is_mergeable(graph, mask("b1", "strided"))  # another stride
    assert not is_mergeable(graph, mask("b1", "pool"))  # not a convolution
    assert graph.ops[by_name["b1"]].signature != graph.ops[by_name["b3"]].signature


def test_weights_named_through_identity_nodes_are_constants_not_operators():
    # The TorchScript exporter routes shared weights through Identity nodes.
    weight = onnx.numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    nodes = [onnx.helper.make_node("Identity", ["w"], ["w_shared"]),
             onnx.helper.make_node("Conv", ["x", "w_shared"], ["y"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["y"], ["z"])]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4, 5, 5])], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])

    ops = graph_from_onnx(model).ops

    assert [op.nodes for op in ops] == [("y", "z")]
    assert ops[0].conv is not None and ops[0].conv.kernel == (3, 3)
