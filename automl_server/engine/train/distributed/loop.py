"""One worker's training loop: its shard of every global batch, the DTS update,
per-epoch statistics over all workers, and rank 0's checkpoint.

Sharding: every epoch all ranks draw the same permutation (seeded by seed and
epoch) and cut it into global batches of J x batch_size images; rank j takes
the j-th slice of each. The average of the workers' mean losses is then the
mean loss of the combined batch, so d = 0, p = 1 without compression is one
process training on the combined batch (up to BatchNorm, whose batch
statistics stay local to a worker, as in plain DDP; running statistics are
averaged over the workers at each epoch's end).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.train.distributed.collective import Collective
from automl_server.engine.train.distributed.settings import DelayedSGDSettings, density_for_epoch, steps_per_epoch
from automl_server.engine.train.distributed.update_rule import DelayedSparseSGD, StepStats
from automl_server.engine.train.standard import evaluate, random_shift


@dataclass(frozen=True)
class LoopSpec:
    settings: DelayedSGDSettings
    epochs: int
    batch_size: int  # per worker
    seed: int
    max_shift: int  # random translation in pixels (0: none)
    checkpoint_dir: Path | None = None


def cosine_lr(peak: float, step: int, total_steps: int) -> float:
    """Cosine from ``peak`` to 0 over the run, per step (as the standard pipeline)."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write keeps the previous file


def _average_buffers(model: nn.Module, collective: Collective) -> None:
    """BatchNorm running statistics: the mean over workers (each saw its own batches)."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(collective.all_reduce_sum(buffer.detach().clone()).wait()[0] / collective.world_size)


def train_worker(model: nn.Module, data: dict[str, torch.Tensor], spec: LoopSpec, collective: Collective, *,
                 on_step: Callable[[int, int, int], None] | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 stop_requested: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Train this rank's share; returns the per-epoch history (the same on every rank).

    ``on_step(epoch, step, steps)`` runs after every step (raise to abandon);
    ``on_epoch(row)`` after every epoch on every rank (rank 0 reports it);
    ``stop_requested()`` is asked on rank 0 at every epoch's end and, if true,
    every rank stops there together (the job's budget of minutes is spent)."""
    s, rank, world = spec.settings, collective.rank, collective.world_size
    x_train, y_train = data["x_train"], data["y_train"]
    steps = steps_per_epoch(len(x_train), world, spec.batch_size)
    if s.delay >= steps or s.period > steps:
        raise ValueError(f"delay {s.delay} / period {s.period} must fit in an epoch of {steps} steps")
    rule = DelayedSparseSGD(list(model.parameters()), collective, momentum=s.momentum,
                            weight_decay=s.weight_decay, delay=s.delay, period=s.period,
                            compress=s.compression is not None)
    generator = torch.Generator().manual_seed(spec.seed * 1000 + rank)  # augmentation: each worker its own
    epoch, history = 0, []
    main_ckpt = spec.checkpoint_dir / "dts.ckpt" if spec.checkpoint_dir else None
    rank_ckpt = spec.checkpoint_dir / f"dts-rank{rank}.state" if spec.checkpoint_dir else None
    if main_ckpt is not None and main_ckpt.exists():
        saved = torch.load(main_ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        epoch, history = saved["epoch"], saved["history"]
        rule.step_index = saved["step_index"]
        if rank_ckpt is not None and rank_ckpt.exists():
            local = torch.load(rank_ckpt, weights_only=False)
            if local["epoch"] == epoch and local["world_size"] == world:
                rule.load_state_dict(local["rule"])  # else: fresh momentum and residual
    total_steps = spec.epochs * steps
    while epoch < spec.epochs:
        model.train()
        density = density_for_epoch(s, epoch)
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(spec.seed * 7919 + epoch))
        totals = StepStats()
        loss_sum = correct = compute_s = 0.0
        epoch_started = time.perf_counter()
        for step in range(steps):
            started = time.perf_counter()
            start = step * world * spec.batch_size + rank * spec.batch_size
            idx = order[start:start + spec.batch_size]
            x, y = x_train[idx], y_train[idx]
            logits = model(random_shift(x, generator, spec.max_shift))
            loss = F.cross_entropy(logits, y, label_smoothing=s.label_smoothing)
            model.zero_grad(set_to_none=True)
            loss.backward()
            stats = rule.step(cosine_lr(s.lr, epoch * steps + step, total_steps), density)
            totals.bytes_sent += stats.bytes_sent
            totals.wait_s += stats.wait_s
            compute_s += time.perf_counter() - started - stats.wait_s
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            if on_step is not None:
                on_step(epoch, step, steps)
        end = rule.flush(cosine_lr(s.lr, (epoch + 1) * steps - 1, total_steps), density)
        totals.bytes_sent += end.bytes_sent
        totals.wait_s += end.wait_s
        epoch_s = time.perf_counter() - epoch_started  # every step and the drain: what throughput divides by
        _average_buffers(model, collective)
        stop = float(rank == 0 and stop_requested is not None and stop_requested())
        summed = collective.all_reduce_sum(torch.tensor(
            [loss_sum, correct, steps * spec.batch_size, totals.bytes_sent, compute_s, totals.wait_s, stop],
            dtype=torch.float64, device=rule.params.flat.device)).wait()[0].tolist()  # NCCL: on the GPU
        epoch += 1
        seen = summed[2]
        # Rank 0's weights are the ones exported; only it evaluates them.
        holdout = (evaluate(model, data["x_holdout"], data["y_holdout"]) if rank == 0 and len(data["y_holdout"])
                   else None)
        history.append({
            "epoch": epoch, "train_loss": summed[0] / seen, "train_accuracy": summed[1] / seen,
            "holdout_accuracy": holdout,
            "bytes_sent_per_step": summed[3] / world / steps,  # per worker
            "comm_wait_share": summed[5] / max(summed[4] + summed[5], 1e-12),
            "compute_s": summed[4] / world, "comm_wait_s": summed[5] / world,
            "density": density, "steps": steps, "workers": world, "epoch_s": epoch_s,
            "images_per_s": steps * spec.batch_size * world / max(epoch_s, 1e-9),
        })
        if rank_ckpt is not None:
            _save_atomic({"epoch": epoch, "world_size": world, "rule": rule.state_dict()}, rank_ckpt)
        if main_ckpt is not None and rank == 0:
            _save_atomic({"model": model.state_dict(), "epoch": epoch, "history": history,
                          "step_index": rule.step_index}, main_ckpt)
        if on_epoch is not None:
            on_epoch(history[-1])
        if summed[6] > 0:  # rank 0's word, the same on every rank
            break
    return history
