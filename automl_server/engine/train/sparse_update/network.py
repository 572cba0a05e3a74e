"""The network as the sparse update trains it: a copy of the found network with
each conv + BatchNorm (+ ReLU6) unit replaced by a ``SparseConv`` (BN folded),
its conv layers listed in forward order with their shapes, a scheme applied
to it, and the trained values written back into the original network.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from automl_server.engine.train.sparse_update.scheme import ConvLayerInfo, LayerUpdate, SparseScheme
from automl_server.engine.train.sparse_update.sparse_conv import SparseConv, running_stats


class _ConvBnUnit(NamedTuple):
    """A ``conv_bn`` unit (a Sequential holding ``conv`` and ``bn``) and those two."""

    name: str
    unit: nn.Sequential
    conv: nn.Conv2d
    bn: nn.BatchNorm2d


def _conv_bn_units(model: nn.Module) -> list[_ConvBnUnit]:
    """Every ``conv_bn`` unit of ``model``, with its module path."""
    units = []
    for name, module in model.named_modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(module, nn.Sequential) and isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            units.append(_ConvBnUnit(name, module, conv, bn))
    return units


def _linear_classifier(model: nn.Module) -> nn.Linear:
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ValueError(f"SparseNet needs a model with a Linear 'classifier', got {type(classifier).__name__}")
    return classifier


class SparseNet(nn.Module):
    """A trainable copy of ``model`` (from ``build_model``) for sparse updates."""

    def __init__(self, model: nn.Module, resolution: int) -> None:
        super().__init__()
        self.net = copy.deepcopy(model)
        self.net.eval()  # folded BN: no statistics to update, no train/eval difference left
        by_module: dict[SparseConv, str] = {}
        for name, unit, conv, bn in _conv_bn_units(self.net):
            sparse = SparseConv(conv, bn, act=isinstance(getattr(unit, "act", None), nn.ReLU6))
            unit.conv = sparse
            unit.bn = nn.Identity()
            if hasattr(unit, "act"):
                unit.act = nn.Identity()  # folded into SparseConv, which saves a mask instead of its input
            by_module[sparse] = name
        _linear_classifier(self.net)
        self.layers, self.infos = self._trace(by_module, resolution)
        self.scheme: SparseScheme | None = None

    def _trace(self, names: dict[SparseConv, str], resolution: int) -> tuple[list[SparseConv], list[ConvLayerInfo]]:
        """Forward order and shapes, read from one forward pass of a single image."""
        order: list[tuple[SparseConv, int, int]] = []

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            assert isinstance(module, SparseConv)
            order.append((module, int(inputs[0].shape[-1]), int(output.shape[-1])))

        handles = [module.register_forward_hook(record) for module in names]
        try:
            in_ch = self._input_channels()
            with torch.no_grad():
                self.net(torch.zeros(1, in_ch, resolution, resolution))
        finally:
            for handle in handles:
                handle.remove()
        layers = [module for module, _, _ in order]
        infos = [ConvLayerInfo(index=i, name=names[m], in_ch=m.in_channels, out_ch=m.out_channels,
                               kernel=int(m.weight.shape[-1]), stride=m.stride, groups=m.groups, act=m.act,
                               input_hw=in_hw, output_hw=out_hw)
                 for i, (m, in_hw, out_hw) in enumerate(order)]
        return layers, infos

    def _input_channels(self) -> int:
        """The channels of the network's input: its stem's first conv's (3 without a stem)."""
        if not hasattr(self.net, "stem"):
            return 3
        first = self.net.get_submodule("stem.first_conv.conv")
        if not isinstance(first, (SparseConv, nn.Conv2d)):
            raise ValueError(f"SparseNet reads the input channels from stem.first_conv.conv, a conv; "
                             f"got {type(first).__name__}")
        return first.in_channels

    @property
    def classifier(self) -> nn.Linear:
        classifier = self.net.classifier
        assert isinstance(classifier, nn.Linear)
        return classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def apply_scheme(self, scheme: SparseScheme, *, plain_autograd: bool = False) -> None:
        """Make exactly the scheme's tensors trainable (the classifier always).
        ``plain_autograd`` runs PyTorch's own ops instead (the baseline)."""
        self.apply_updates(scheme.updates(len(self.layers)), plain_autograd=plain_autograd)
        self.scheme = scheme

    def apply_updates(self, updates: list[LayerUpdate], *, plain_autograd: bool = False) -> None:
        """Per-layer updates without the scheme's rule that weights train only where biases
        do (the contribution analysis measures a weight alone)."""
        for layer, update in zip(self.layers, updates, strict=True):
            layer.set_update(update.bias, update.weight_ratio)
            layer.plain_autograd = plain_autograd
        for param in self.classifier.parameters():
            param.requires_grad_(True)
        self.scheme = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The folded weights and biases and the classifier (to restart a short fine-tune from)."""
        for layer in self.layers:
            layer.sync_weight()
        return {name: value.detach().clone() for name, value in self.named_parameters()
                if not name.endswith("weight_part")}

    @torch.no_grad()
    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Back to a snapshot with every layer frozen (apply a scheme next): the partial
        weight copies are dropped first, or the next forward would copy them back."""
        for layer in self.layers:
            layer.set_update(False, 0.0)
        params = dict(self.named_parameters())
        for name, value in snapshot.items():
            params[name].copy_(value)
        self.scheme = None

    @torch.no_grad()
    def write_back(self, model: nn.Module) -> list[str]:
        """Write the trained layers and the classifier into ``model`` (same architecture);
        returns the layers written. A trained layer's BN becomes the identity (statistics
        0 and 1 - eps, scale 1) so that conv weight and bias carry the folded values;
        frozen layers keep their original conv and BN untouched."""
        units = {unit.name: unit for unit in _conv_bn_units(model)}
        written = []
        for layer, info in zip(self.layers, self.infos):
            update = self.scheme.updates(len(self.layers))[info.index] if self.scheme is not None else None
            if update is None or not (update.bias or update.weight_ratio > 0):
                continue
            layer.sync_weight()
            unit = units[info.name]
            unit.conv.weight.copy_(layer.weight)
            bn = unit.bn
            running_mean, running_var = running_stats(bn)
            running_mean.zero_()
            running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(layer.bias)
            written.append(info.name)
        target = _linear_classifier(model)
        target.weight.copy_(self.classifier.weight)
        target.bias.copy_(self.classifier.bias)
        return written
