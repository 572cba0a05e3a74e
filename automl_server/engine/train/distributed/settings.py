"""Settings of the ``delayed-sgd`` pipeline and their checks against a job's data.

Defaults follow the papers: DTS (Zhu et al., 2019) reports (delay, period,
compression) = (4, 4, 1%) within half a point of synchronous SGD on ImageNet;
DGC (Lin et al., ICLR 2018) uses momentum 0.9 and a sparsity warm-up of
0.25, 0.063, 0.015, 0.004, 0.001 (share of entries sent) over the first epochs.
The pipeline defaults to DTS's (4, 4, 1%) with DGC's warm-up; (0, 1, null) is synchronous SGD.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from automl_server.engine.train.registry import DataFacts, InvalidPipelineSettings, PipelineConfig

# DGC's warm-up: the density (share of each compressed tensor sent) in the first
# epochs, before the target density applies (Lin et al. 2018, section 3.3).
DGC_WARMUP_DENSITIES = (0.25, 0.063, 0.015, 0.004, 0.001)

class DelayedSGDSettings(PipelineConfig):
    workers: int = Field(2, ge=1, le=64, description="Data-parallel worker processes J (torchrun --nproc-per-node "
                         "on one host). Each worker trains on its own batch of batch_size images (weak scaling, "
                         "as in DTS and DGC).")
    delay: int = Field(4, ge=0, le=1000, description="Delay d in steps: the local update is applied at once and "
                       "corrected when the global average of step n-d arrives (DTS; 0 = synchronous). Default 4: "
                       "DTS's (4, 4, 1%) setting.")
    period: int = Field(4, ge=1, le=1000, description="Period p: gradients are accumulated and synchronised every p "
                        "steps (temporally sparse update; 1 = every step). Default 4: DTS's (4, 4, 1%).")
    compression: float | None = Field(0.01, gt=0, le=1, description="Deep Gradient Compression: the share of each "
                                      "multi-dimensional tensor's entries sent per synchronisation (0.01 = top 1% "
                                      "as in DTS's (4, 4, 1%)); null sends every gradient densely.")
    sparsity_warmup_epochs: int = Field(4, ge=0, le=5, description="Epochs of DGC's sparsity warm-up, walking "
                                        "0.25, 0.063, 0.015, 0.004 (DGC uses 4 epochs then 0.001); 0 = none.")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend: gloo on CPU, "
                                                      "NCCL where every worker has a CUDA device; auto picks.")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Training epochs; default: the job's "
                               "budget.train_epochs.")
    batch_size: int | None = Field(None, ge=1, le=4096, description="Images per worker per step; default: the "
                                   "job's batch_size.")
    lr: float = Field(0.05, gt=0, le=10, description="Peak learning rate (cosine per epoch), as the standard "
                      "pipeline trains ProxylessNAS networks.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (DGC: 0.9, applied as momentum correction).")
    weight_decay: float = Field(4e-5, ge=0, le=0.1, description="Weight decay (ProxylessNAS: 4e-5).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing (ProxylessNAS: 0.1).")
    collective_timeout_s: float = Field(120.0, ge=5, le=3600, description="A collective not finished in this "
                                        "time fails the group (a killed peer never leaves the others hanging).")
    max_restarts: int = Field(1, ge=0, le=10, description="torchrun restarts of the whole group after a failed "
                              "worker; the restarted group resumes from the last epoch's checkpoint.")


def steps_per_epoch(train_samples: int, workers: int, batch_size: int) -> int:
    """Synchronised steps in one epoch: every worker takes its own batch per step."""
    return max(train_samples // (workers * batch_size), 1) if train_samples >= workers else 0


def density_for_epoch(settings: DelayedSGDSettings, epoch: int) -> float | None:
    """The share of entries DGC sends in ``epoch`` (0-based); None when uncompressed."""
    if settings.compression is None:
        return None
    if epoch < settings.sparsity_warmup_epochs:
        # Never denser than asked: a 30% target stays 30% during the warm-up.
        return max(DGC_WARMUP_DENSITIES[epoch], settings.compression)
    return settings.compression


def check_settings(settings: Any, facts: DataFacts, batch_size: int | None = None) -> None:
    """Refuse settings this job's data cannot run, naming the field."""
    assert isinstance(settings, DelayedSGDSettings)
    per_worker = settings.batch_size or batch_size or facts.batch_size
    if facts.train_samples < settings.workers:
        raise InvalidPipelineSettings("distributed.workers", f"{settings.workers} workers need at least as many "
                                      f"training images; this job has {facts.train_samples}")
    steps = steps_per_epoch(facts.train_samples, settings.workers, per_worker)
    # The delay pipeline drains at each epoch's end (checkpoints hold no message
    # in flight), so a delay or period must fit in one epoch.
    if settings.delay >= steps:
        raise InvalidPipelineSettings("distributed.delay", f"a delay of {settings.delay} steps is not shorter than "
                                      f"an epoch ({steps} steps of {settings.workers} x {per_worker} images); "
                                      f"use at most {steps - 1}")
    if settings.period > steps:
        raise InvalidPipelineSettings("distributed.period", f"a period of {settings.period} steps is longer than an "
                                      f"epoch ({steps} steps); use at most {steps}")


def ceil_k(numel: int, density: float) -> int:
    """Entries DGC sends of a tensor: at least one, never more than it has."""
    return min(numel, max(1, math.ceil(numel * density)))
