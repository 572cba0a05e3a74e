"""The fine-tuning loop of a sparse update: plain SGD with a cosine schedule per
step on the scheme's tensors, checkpointed every epoch and resumed exactly.

Deviations from the reference trainer (``algorithm/core/trainer``): no warm-up
epochs (the reference warms up 5 of 50 epochs; our fine-tunes are a few
epochs long), no random-resized-crop/colour augmentation (images here are as
small as 8 px), no quantization-aware scaling (fp32 graphs need none).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from automl_server.engine.data import BatchStream
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.updater import SparseUpdater
from automl_server.engine.train.standard import evaluate


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    reorder: bool = True
    seed: int = 0


@dataclass
class FineTuneResult:
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def train_step(net: SparseNet, updater: SparseUpdater, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """One step; returns (loss, correct predictions)."""
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    updater.step(loss)
    return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())


def train_batches(net: SparseNet, batches: list[tuple[torch.Tensor, torch.Tensor]], config: FineTuneConfig,
                  on_step: Callable[[], None] | None = None) -> None:
    """A short fine-tune over fixed batches (contribution analysis: every candidate sees the same ones)."""
    updater = SparseUpdater(net.trainable_parameters(), lr=config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay, reorder=config.reorder)
    try:
        for step, (x, y) in enumerate(batches):
            updater.set_lr(cosine_lr(config.lr, step, len(batches)))
            train_step(net, updater, x, y)
            if on_step is not None:
                on_step()
    finally:
        updater.close()


def fine_tune(net: SparseNet, x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor,
              y_eval: torch.Tensor, config: FineTuneConfig, *, checkpoint_path: Path | None = None,
              checkpoint_extra: dict[str, Any] | None = None, on_step: Callable[[], None] | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> FineTuneResult:
    """Fine-tune the trainable tensors of ``net`` (its scheme applied) for ``config.epochs``,
    resuming from ``checkpoint_path`` when it exists. ``eval`` accuracy is None when the
    evaluation split is empty."""
    stream = BatchStream(x_train, y_train, config.batch_size, config.seed + 21)
    steps = stream.batches_per_epoch
    total = config.epochs * steps
    updater = SparseUpdater(net.trainable_parameters(), lr=config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay, reorder=config.reorder)
    epoch, history = 0, []
    try:
        if checkpoint_path is not None and checkpoint_path.exists():
            state = torch.load(checkpoint_path, weights_only=False)
            net.load_state_dict(state["net"])
            updater.load_state_dict(state["updater"])
            stream.load_state_dict(state["stream"])
            epoch, history = state["epoch"], state["history"]
        while epoch < config.epochs:
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps):
                updater.set_lr(cosine_lr(config.lr, epoch * steps + step, total))
                x, y = stream.next()
                loss, right = train_step(net, updater, x, y)
                loss_sum, correct, seen = loss_sum + loss * len(y), correct + right, seen + len(y)
                if on_step is not None:
                    on_step()
            epoch += 1
            history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                            "holdout_accuracy": evaluate(net, x_eval, y_eval) if len(y_eval) else None})
            if checkpoint_path is not None:
                tmp = checkpoint_path.with_name(checkpoint_path.name + ".tmp")
                torch.save({"net": net.state_dict(), "updater": updater.state_dict(), "stream": stream.state_dict(),
                            "epoch": epoch, "history": history, **(checkpoint_extra or {})}, tmp)
                os.replace(tmp, checkpoint_path)  # atomic: a crash mid-write keeps the previous checkpoint
            if on_epoch is not None:
                on_epoch(history[-1])
            if should_stop is not None and should_stop():
                break
    finally:
        updater.close()
    return FineTuneResult(epoch, history)
