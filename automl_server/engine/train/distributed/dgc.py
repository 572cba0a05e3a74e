"""Deep Gradient Compression (Lin et al., ICLR 2018) on a flat velocity accumulator.

DGC keeps, per worker, the momentum buffer ``u`` and the accumulated velocity
``v``: every step ``u = m * u + g`` and ``v = v + u`` (momentum correction:
what is accumulated is the velocity, not the raw gradient). At a
synchronisation the top-k entries of ``|v|`` of each tensor are sent as
(index, value) pairs, then zeroed in ``v`` (the rest stays as the residual, to
be sent later) and in ``u`` (momentum factor masking, so stale momentum does
not keep pushing coordinates that were just applied globally). Only tensors
with more than one dimension are compressed (biases and BatchNorm parameters
are sent densely, as in the paper).

Deviation from the paper: DGC estimates the threshold by sampling 0.1-1% of
the entries (and refines it when too many pass); we take the exact top-k with
``torch.topk``, which sends exactly k entries per tensor so every worker's
payload has the same size and one ``all_gather`` exchanges it. DGC's local
gradient clipping is not applied.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from automl_server.engine.train.distributed.settings import ceil_k


@dataclass(frozen=True)
class Segments:
    """Where each compressed tensor lives in the flat vector of compressed entries."""

    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def k_total(self, density: float) -> int:
        return sum(ceil_k(n, density) for n in self.lengths)


def top_k_indices(accumulated: torch.Tensor, segments: Segments, density: float) -> torch.Tensor:
    """Flat indices (into ``accumulated``) of each segment's top-k entries by magnitude."""
    picked = []
    for start, length in zip(segments.starts, segments.lengths):
        k = ceil_k(length, density)
        picked.append(torch.topk(accumulated[start:start + length].abs(), k, sorted=False).indices + start)
    if not picked:
        return torch.empty(0, dtype=torch.long, device=accumulated.device)
    return torch.cat(picked)


def take_sparse(accumulated: torch.Tensor, momentum: torch.Tensor, segments: Segments,
                density: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Select what to send: returns (indices, values) and, in place, leaves the
    residual in ``accumulated`` and masks ``momentum`` at the sent indices.

    ``momentum`` is the momentum buffer restricted to the same compressed entries
    (a tensor of the same length as ``accumulated``)."""
    indices = top_k_indices(accumulated, segments, density)
    values = accumulated[indices].clone()
    accumulated[indices] = 0.0  # the residual keeps everything not sent
    momentum[indices] = 0.0  # momentum factor masking
    return indices, values


def densify(gathered_indices: list[torch.Tensor], gathered_values: list[torch.Tensor], length: int) -> torch.Tensor:
    """The sum of every worker's sparse payload as a dense vector (overlaps add up)."""
    total = torch.zeros(length, dtype=gathered_values[0].dtype if gathered_values else torch.float32,
                        device=gathered_values[0].device if gathered_values else None)
    for indices, values in zip(gathered_indices, gathered_values):
        total.index_add_(0, indices.long(), values)
    return total
