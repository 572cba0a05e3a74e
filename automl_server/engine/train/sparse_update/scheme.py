"""A sparse-update scheme: which conv layers train their bias, which train the
weights of a ratio of channels; the classifier always trains.

The shape follows the reference (mit-han-lab/tiny-training,
``algorithm/core/utils/partial_backward.py``): ``n_bias_update`` biases of the
last conv layers, ``manual_weight_idx`` conv layers whose weights train, each
with a ``weight_update_ratio``; weight layers lie among the bias layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The ratios of channels a weight may update (the reference's scripts use 1, 1/2, 1/4, 1/8).
WEIGHT_RATIOS = (0.125, 0.25, 0.5, 1.0)
SCHEME_KINDS = ("auto", "bias-only", "last-k", "full")


@dataclass(frozen=True)
class ConvLayerInfo:
    """One conv layer of the network in forward order, with its shapes."""

    index: int
    name: str  # module path of the conv_bn unit in the original network
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    groups: int
    act: bool  # followed by ReLU6
    input_hw: int
    output_hw: int

    @property
    def depthwise(self) -> bool:
        return self.groups > 1

    @property
    def channels(self) -> int:
        """Channels a weight-ratio update chooses from: input channels, or the filters of a depthwise conv."""
        return self.out_ch if self.depthwise else self.in_ch

    def kept_channels(self, ratio: float) -> int:
        if ratio >= 1.0:
            return self.channels
        return max(int(self.channels * ratio), 1) if ratio > 0 else 0

    def weight_numel(self, ratio: float = 1.0) -> int:
        kept = self.kept_channels(ratio)
        per_channel = self.kernel * self.kernel * (1 if self.depthwise else self.out_ch)
        return kept * per_channel


@dataclass(frozen=True)
class LayerUpdate:
    bias: bool
    weight_ratio: float  # 0: weight frozen


@dataclass(frozen=True)
class SparseScheme:
    """Biases of the last ``bias_layers`` conv layers train; each (layer, ratio) of
    ``weight_ratios`` trains that share of the layer's weight channels."""

    bias_layers: int
    weight_ratios: tuple[tuple[int, float], ...] = ()
    kind: str = "custom"  # how it was chosen: auto, bias-only, last-k, full, custom

    def __post_init__(self) -> None:
        if self.bias_layers < 0:
            raise ValueError(f"bias_layers must be >= 0, got {self.bias_layers}")
        ratios = tuple(sorted((int(i), float(r)) for i, r in self.weight_ratios if r > 0))
        for index, ratio in ratios:
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"weight ratio of layer {index} must be in (0, 1], got {ratio}")
        if len({i for i, _ in ratios}) != len(ratios):
            raise ValueError(f"a layer appears twice in weight_ratios {ratios}")
        object.__setattr__(self, "weight_ratios", ratios)

    def updates(self, n_layers: int) -> list[LayerUpdate]:
        """Per conv layer in forward order; ValueError when a weight layer is not among the bias layers."""
        if self.bias_layers > n_layers:
            raise ValueError(f"scheme updates the biases of {self.bias_layers} layers; the network has {n_layers}")
        ratios = dict(self.weight_ratios)
        first_bias = n_layers - self.bias_layers
        for index in ratios:
            if not first_bias <= index < n_layers:
                raise ValueError(f"weight layer {index} is not among the last {self.bias_layers} (bias) layers "
                                 f"of {n_layers}; the reference updates weights only where biases update")
        return [LayerUpdate(bias=i >= first_bias, weight_ratio=ratios.get(i, 0.0)) for i in range(n_layers)]

    def first_updated(self, n_layers: int) -> int | None:
        """Index of the earliest trained conv layer: the backward pass stops there."""
        return n_layers - self.bias_layers if self.bias_layers else None

    def describe(self, layers: list[ConvLayerInfo]) -> list[dict[str, Any]]:
        """One row per conv layer (for the report and the job page): its update and channels."""
        rows = []
        for info, update in zip(layers, self.updates(len(layers))):
            kind = "weight" if update.weight_ratio > 0 else "bias" if update.bias else "frozen"
            rows.append({"index": info.index, "layer": info.name, "update": kind,
                         "weight_ratio": update.weight_ratio,
                         "channels_updated": info.kept_channels(update.weight_ratio), "channels": info.channels})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "bias_layers": self.bias_layers,
                "weight_ratios": [[i, r] for i, r in self.weight_ratios]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SparseScheme:
        return cls(bias_layers=int(raw["bias_layers"]),
                   weight_ratios=tuple((int(i), float(r)) for i, r in raw.get("weight_ratios", [])),
                   kind=str(raw.get("kind", "custom")))


def bias_only(n_bias: int) -> SparseScheme:
    return SparseScheme(n_bias, (), kind="bias-only")


def last_k(n_layers: int, k: int) -> SparseScheme:
    """Weights and biases of the last k conv layers."""
    return SparseScheme(k, tuple((i, 1.0) for i in range(n_layers - k, n_layers)), kind="last-k")


def full(n_layers: int) -> SparseScheme:
    return SparseScheme(n_layers, tuple((i, 1.0) for i in range(n_layers)), kind="full")


def classifier_only() -> SparseScheme:
    return SparseScheme(0, (), kind="last-layer")
