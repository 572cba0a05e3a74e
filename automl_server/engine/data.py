"""Arrays in, tensors out: what the search and training loops eat.

The engine takes plain numpy arrays (uint8 NHWC images and integer labels),
so it does not care whether they came from an upload, a bundled dataset or
a job's validated ``dataset.npz``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch


@dataclass
class SplitData:
    """Normalised NCHW float tensors for the weight split and the held-out split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_holdout: torch.Tensor
    y_holdout: torch.Tensor
    num_classes: int
    resolution: int
    in_channels: int
    # Per-channel statistics of the training split (of pixels scaled to [0, 1]);
    # the same normalisation must be applied to any image the model sees later.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def normalise(self, x: np.ndarray) -> torch.Tensor:
        """uint8 NHWC images as the model's input tensor."""
        return to_tensor(x, np.asarray(self.mean), np.asarray(self.std))


def stratified_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class split, so every class appears on both sides (small classes too)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout fraction {holdout} must be between 0 and 1 (exclusive)")
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < 2:
            train.append(members)
            continue
        n_held = min(max(int(round(len(members) * holdout)), 1), len(members) - 1)
        held_out.append(members[:n_held])
        train.append(members[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out) if held_out else np.array([], int))


def to_tensor(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    images = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    images = images.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return (images - torch.from_numpy(mean).float().view(1, -1, 1, 1)) / torch.from_numpy(std).float().view(1, -1, 1, 1)


def split_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    train_idx: np.ndarray | None = None,
    holdout_idx: np.ndarray | None = None,
) -> SplitData:
    """Normalise with the training split's per-channel statistics and split.

    ``x`` is uint8 (N, H, W, C) with square images; ``y`` integer labels 0..K-1.
    Pass ``train_idx``/``holdout_idx`` to reuse a split fixed elsewhere (a job's
    validation stage fixes one so that search and training agree).
    """
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise ValueError(f"images must be square NHWC arrays; got shape {x.shape}")
    if train_idx is None or holdout_idx is None:
        train_idx, holdout_idx = stratified_split(y, holdout, seed)
    train_pixels = x[train_idx].reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    mean = train_pixels.mean(axis=0)
    std = np.maximum(train_pixels.std(axis=0), 1e-3)
    labels = torch.from_numpy(y.astype(np.int64))
    return SplitData(
        x_train=to_tensor(x[train_idx], mean, std),
        y_train=labels[torch.from_numpy(train_idx)],
        x_holdout=to_tensor(x[holdout_idx], mean, std),
        y_holdout=labels[torch.from_numpy(holdout_idx)],
        num_classes=int(y.max()) + 1,
        resolution=int(x.shape[1]),
        in_channels=int(x.shape[3]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


class BatchStreamState(TypedDict):
    """What a search checkpoint keeps of a BatchStream to resume it mid-epoch."""

    generator: torch.Tensor  # torch.Generator.get_state()
    order: torch.Tensor  # this epoch's permutation
    pos: int  # index of the next batch's first sample in `order`


class BatchStream:
    """Endless shuffled mini-batches with their own generator, so the order is
    reproducible and its state can be checkpointed and restored."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        if len(x) == 0:
            raise ValueError("cannot draw batches from an empty split")
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(len(x), generator=self.generator)
        self._pos = 0

    @property
    def batches_per_epoch(self) -> int:
        return max(len(self.x) // self.batch_size, 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.x), generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.x[idx], self.y[idx]

    def state_dict(self) -> BatchStreamState:
        return {"generator": self.generator.get_state(), "order": self._order.clone(), "pos": self._pos}

    def load_state_dict(self, state: BatchStreamState) -> None:
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()
        self._pos = int(state["pos"])
