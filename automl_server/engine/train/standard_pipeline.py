"""``standard``: plain supervised training of the found network, registered.

The settings default to the job's budget (``epochs``) and batch size, so a job
that says nothing about the pipeline trains as it always did.
"""
from __future__ import annotations

import time

from pydantic import Field

from automl_server.engine.train.registry import (
    PipelineConfig,
    PipelineInputs,
    TrainCallbacks,
    TrainOutcome,
    register_pipeline,
)
from automl_server.engine.train.standard import StandardConfig, train_standard


class StandardSettings(PipelineConfig):
    epochs: int | None = Field(None, ge=1, le=10_000,
                               description="Training epochs; default: the job's budget.train_epochs.")
    lr: float = Field(0.05, gt=0, le=10, description="Peak learning rate of SGD with Nesterov momentum "
                      "(cosine schedule per step), as ProxylessNAS trains its found networks.")
    weight_decay: float = Field(4e-5, ge=0, le=0.1, description="Weight decay (ProxylessNAS: 4e-5).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing (ProxylessNAS: 0.1).")


def run_standard(inputs: PipelineInputs, settings: StandardSettings, callbacks: TrainCallbacks) -> TrainOutcome:
    """Supervised training from scratch (SGD, Nesterov, cosine, label smoothing)."""
    config = StandardConfig(epochs=settings.epochs or inputs.epochs, batch_size=inputs.batch_size,
                            lr=settings.lr, weight_decay=settings.weight_decay,
                            label_smoothing=settings.label_smoothing, seed=inputs.seed)
    started = time.monotonic()
    epochs_run: list[int] = []  # epochs run by this call (a resumed one starts later)

    def on_epoch(row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        epochs_run.append(epoch)
        callbacks.metric(f"train epoch {epoch}/{config.epochs}", phase="train", total_epochs=config.epochs, **row)
        eta = (time.monotonic() - started) / len(epochs_run) * (config.epochs - epoch)
        shown = (f"holdout accuracy {row['holdout_accuracy']:.3f}" if row["holdout_accuracy"] is not None
                 else f"training accuracy {row['train_accuracy']:.3f} (train + holdout)")
        callbacks.progress(epoch / config.epochs, f"epoch {epoch}/{config.epochs}: {shown}", eta_s=eta)

    result = train_standard(inputs.model, inputs.data, config, checkpoint_path=inputs.work_dir / "train.ckpt",
                            on_step=callbacks.check_cancelled, on_epoch=on_epoch, should_stop=callbacks.should_stop)
    if result.epochs < config.epochs:
        callbacks.log(f"training stopped after {result.epochs} of {config.epochs} epochs: "
                      "the budget's minutes ran out")
    holdout = result.history[-1]["holdout_accuracy"] if result.history else None
    return TrainOutcome(model=inputs.model, epochs=result.epochs, history=result.history,
                        holdout_accuracy=holdout)


register_pipeline("standard", StandardSettings, run_standard, params_key="standard", title="Standard",
                  description="Supervised training of the found network from scratch on the job's data.")
