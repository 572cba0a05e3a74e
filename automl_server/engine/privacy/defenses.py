"""Defenses against gradient leakage, as the DLG paper measures them, applied
to what is shared (a list of gradient tensors, or FedGKT's feature maps).

- ``prune``: in each tensor the given share of entries with the smallest
  magnitudes set to zero (DLG section 5, "gradient compression and
  sparsification"; per tensor, as DGC prunes per tensor).
- ``top_k``: DGC as the delayed-sgd pipeline sends it: tensors with more than
  one dimension keep only their top ``density`` share by magnitude, biases and
  BatchNorm parameters are sent densely (distributed/dgc.py).
- ``gaussian``: N(0, variance) added to every entry (DLG: variances 1e-4 to 1e-1).

A larger batch is a defense too; it is not a transform of the gradient but of
what is averaged, so the audit runs it by attacking a bigger batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from automl_server.engine.train.distributed.settings import ceil_k

Transform = Callable[[list[torch.Tensor], torch.Generator], list[torch.Tensor]]


def prune_tensor(tensor: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The tensor with its ``sparsity`` share of smallest-magnitude entries zeroed."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} must be in [0, 1)")
    n = tensor.numel()
    drop = int(round(n * sparsity))
    if drop == 0:
        return tensor.clone()
    flat = tensor.reshape(-1)
    smallest = torch.topk(flat.abs(), drop, largest=False, sorted=False).indices
    out = flat.clone()
    out[smallest] = 0.0
    return out.view_as(tensor)


def prune(gradients: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    return [prune_tensor(g, sparsity) for g in gradients]


def top_k(gradients: list[torch.Tensor], density: float) -> list[torch.Tensor]:
    """DGC's selection: multi-dimensional tensors keep ceil(numel * density) entries, the rest go dense."""
    out = []
    for g in gradients:
        if g.dim() <= 1:
            out.append(g.clone())
            continue
        keep = ceil_k(g.numel(), density)
        flat = g.reshape(-1)
        kept = torch.zeros_like(flat)
        idx = torch.topk(flat.abs(), keep, sorted=False).indices
        kept[idx] = flat[idx]
        out.append(kept.view_as(g))
    return out


def gaussian(gradients: list[torch.Tensor], variance: float, generator: torch.Generator) -> list[torch.Tensor]:
    std = variance ** 0.5
    return [g + std * torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in gradients]


@dataclass(frozen=True)
class Defense:
    """One defense at one setting: ``kind`` is prune, top_k, gaussian or batch; ``value`` its setting
    (sparsity, density, variance, images per batch)."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        labels = {"prune": "pruning {:.0%}", "top_k": "DGC top-k {:.2%}", "gaussian": "Gaussian noise var {:g}",
                  "batch": "batch of {:g}"}
        return labels[self.kind].format(self.value)

    def apply(self, tensors: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        if self.kind == "prune":
            return prune(tensors, self.value)
        if self.kind == "top_k":
            return top_k(tensors, self.value)
        if self.kind == "gaussian":
            return gaussian(tensors, self.value, generator)
        if self.kind == "batch":
            return [t.clone() for t in tensors]
        raise ValueError(f"unknown defense {self.kind!r}; accepted: prune, top_k, gaussian, batch")
