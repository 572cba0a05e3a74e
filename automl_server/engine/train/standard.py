"""Standard supervised training, as the ProxylessNAS paper trains its found
networks: SGD with Nesterov momentum, a cosine schedule per step, label
smoothing 0.1, weight decay 4e-5; plus small random translations as
augmentation (our addition for small datasets). Checkpointed every epoch and
resumed bit-for-bit from the checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.data import BatchStream, SplitData


@dataclass(frozen=True)
class StandardConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    seed: int = 0


@dataclass
class TrainResult:
    epochs: int  # epochs run in all (a stop may end it early)
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: losses and accuracies


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate the batch by up to ``max_shift`` pixels (zero padding), one offset per batch."""
    if max_shift <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / max(len(x), 1)


def train_standard(
    model: nn.Module,
    data: SplitData,
    config: StandardConfig,
    *,
    checkpoint_path: Path | None = None,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train on ``data``'s training split, validating on its holdout split every
    epoch (``holdout_accuracy`` is None when the holdout split is empty). ``on_step`` runs after every step and may raise to abandon training
    (the last epoch's checkpoint stays); ``should_stop`` is asked after every epoch."""
    stream = BatchStream(data.x_train, data.y_train, config.batch_size, config.seed + 11)
    steps = stream.batches_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs * steps, 1))
    generator = torch.Generator().manual_seed(config.seed + 12)
    max_shift = max(1, data.resolution // 8)
    epoch, history = 0, []
    if checkpoint_path is not None and checkpoint_path.exists():
        state: dict[str, Any] = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        generator.set_state(state["generator"])
        epoch, history = state["epoch"], state["history"]
    while epoch < config.epochs:
        model.train()
        correct = seen = 0
        loss_sum = 0.0
        for _ in range(steps):
            x, y = stream.next()
            logits = model(random_shift(x, generator, max_shift))
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if on_step is not None:
                on_step()
        epoch += 1
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "holdout_accuracy": evaluate(model, data.x_holdout, data.y_holdout) if len(data.y_holdout)
                        else None})
        if checkpoint_path is not None:
            tmp = checkpoint_path.with_name(checkpoint_path.name + ".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "stream": stream.state_dict(),
                        "generator": generator.get_state(), "epoch": epoch, "history": history}, tmp)
            os.replace(tmp, checkpoint_path)  # atomic: a crash mid-write keeps the previous checkpoint
        if on_epoch is not None:
            on_epoch(history[-1])
        if should_stop is not None and should_stop():
            break
    return TrainResult(epochs=epoch, history=history)
