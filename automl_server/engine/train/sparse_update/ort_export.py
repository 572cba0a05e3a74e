"""The sparse-update network as an inference ONNX model that ONNX Runtime training
can fine-tune on the device, with the names of the tensors the scheme trains.

ONNX Runtime training (``onnxruntime.training.artifacts.generate_artifacts``)
marks whole initializers trainable (``requires_grad``) or frozen; it builds the
gradient graph only for the trainable ones, its counterpart of the paper's
compile-time pruned backward graph. Initializers keep the PyTorch parameter
names of ``SparseNet`` (TorchScript exporter, no constant folding), so a name
here addresses the same tensor on both sides.

A weight updated at a ratio of channels cannot be one initializer (it would be
all trainable or all frozen), so the export splits it: ``weight_part`` (the kept
channels, trainable, the same tensor as ``SparseConv.weight_part``) and
``weight_rest`` (the other channels, frozen), put back in channel order by a
Concat and a Gather inside the graph. The gradient then reaches the kept
channels only, as in the paper; no weight is trained fully in their place.

BatchNorm is folded, as in ``SparseNet``: the exported graph has conv + bias
(+ ReLU6) per layer and nothing that behaves differently in training.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.scheme import SparseScheme
from automl_server.engine.train.sparse_update.sparse_conv import SparseConv

ONNX_OPSET = 17  # what ONNX Runtime 1.19 trains, and what the engine's other exports use
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class _ExportConv(nn.Module):
    """One ``SparseConv`` with its trainable channels as their own initializer."""

    def __init__(self, layer: SparseConv) -> None:
        super().__init__()
        layer.sync_weight()
        weight = layer.weight.detach().clone()
        self.stride, self.padding, self.groups, self.act = layer.stride, layer.padding, layer.groups, layer.act
        self.bias = nn.Parameter(layer.bias.detach().clone())
        self.weight: nn.Parameter | None = None
        self.weight_part: nn.Parameter | None = None
        self.weight_rest: nn.Parameter | None = None
        self.dim = 0 if layer.depthwise else 1
        self.channel_order: torch.Tensor | None
        self.register_buffer("channel_order", None)
        if layer.weight_part is None or layer.keep is None:
            self.weight = nn.Parameter(weight)
            return
        keep = layer.keep
        kept = set(keep.tolist())
        rest = torch.tensor([c for c in range(weight.shape[self.dim]) if c not in kept], dtype=torch.long)
        self.weight_part = nn.Parameter(layer.weight_part.detach().clone())
        if len(rest):
            self.weight_rest = nn.Parameter(weight.index_select(self.dim, rest))
            # Position of each original channel in cat([part, rest]).
            self.channel_order = torch.argsort(torch.cat([keep, rest]))

    def full_weight(self) -> torch.Tensor:
        if self.weight is not None:
            return self.weight
        assert self.weight_part is not None
        if self.weight_rest is None or self.channel_order is None:
            return self.weight_part
        return torch.cat([self.weight_part, self.weight_rest], self.dim).index_select(self.dim, self.channel_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.conv2d(x, self.full_weight(), self.bias, self.stride, self.padding, 1, self.groups)
        return F.relu6(pre) if self.act else pre


@dataclass(frozen=True)
class OrtTrainingExport:
    """What the device needs: the model, the names to train, and the graph's I/O names."""

    model_path: Path
    trainable: list[str]  # initializer names that ONNX Runtime training updates
    frozen: list[str]  # every other float initializer (unchanged by the fine-tune)
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME


def _schemed_copy(net: SparseNet, scheme: SparseScheme) -> SparseNet:
    """A copy with the scheme applied: the kept channels are chosen as the PyTorch
    fine-tune chooses them (by weight norm), from the same values."""
    copied = copy.deepcopy(net)
    copied.apply_scheme(scheme)
    return copied


def trainable_names(net: SparseNet, scheme: SparseScheme) -> list[str]:
    """The scheme's trained tensors by ``SparseNet`` parameter name: biases, whole weights,
    ``weight_part`` of partially updated weights, and the classifier."""
    return [name for name, param in _schemed_copy(net, scheme).named_parameters() if param.requires_grad]


def export_for_ort_training(net: SparseNet, scheme: SparseScheme, path: Path) -> OrtTrainingExport:
    """Write the inference model (batch dimension dynamic) to ``path``; ``net`` is not changed."""
    schemed = _schemed_copy(net, scheme)
    trainable = [name for name, param in schemed.named_parameters() if param.requires_grad]
    exported = copy.deepcopy(schemed)
    for module_name, module in list(exported.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SparseConv):
                setattr(module, child_name, _ExportConv(child))
    # Training mode: the TorchScript exporter then merges only initializers that are the same
    # tensor; in eval mode it merges equal values too (two zero biases would become one name).
    # Nothing in the graph behaves differently in training: BN is folded and there is no dropout.
    exported.train()
    example = torch.zeros(1, *_input_shape(net))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        # No constant folding: it would fold weight_part/weight_rest into one constant.
        torch.onnx.export(exported, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          training=torch.onnx.TrainingMode.TRAINING,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    import onnx  # the server's export dependency; imported here so the module loads without it

    # Names as written (the exporter may rename or merge initializers): check, never assume.
    written = [init.name for init in onnx.load(str(path), load_external_data=False).graph.initializer
               if init.data_type == onnx.TensorProto.FLOAT]
    missing = sorted(set(trainable) - set(written))
    if missing:
        raise RuntimeError(f"trainable tensors missing from the exported initializers: {missing}")
    return OrtTrainingExport(model_path=path, trainable=trainable,
                             frozen=[name for name in written if name not in set(trainable)])


def _input_shape(net: SparseNet) -> tuple[int, int, int]:
    first = net.layers[0]
    return first.in_channels, net.infos[0].input_hw, net.infos[0].input_hw


def write_step_data(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    """The .npz the on-device fine-tune reads: x float32 NCHW, y int64."""
    np.savez(path, x=x.detach().numpy().astype(np.float32), y=y.detach().numpy().astype(np.int64))
    return path


@torch.no_grad()
def load_trained_values(net: SparseNet, scheme: SparseScheme, values: dict[str, np.ndarray]) -> list[str]:
    """Apply ``scheme`` to ``net`` and write the device's trained tensors (by name) into it,
    so that ``net.write_back(model)`` carries them into the job's network; returns the names set."""
    net.apply_scheme(scheme)
    params = dict(net.named_parameters())
    expected = {name for name, param in params.items() if param.requires_grad}
    unknown = sorted(set(values) - expected)
    if unknown:
        raise ValueError(f"not trained by scheme {scheme.to_dict()}: {unknown}")
    for name, value in values.items():
        params[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    for layer in net.layers:
        layer.sync_weight()
    return sorted(values)
