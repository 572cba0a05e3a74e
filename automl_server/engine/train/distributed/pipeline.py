"""``delayed-sgd``: the found network trained by J data-parallel workers with
delayed and temporally sparse updates and Deep Gradient Compression.

The job's process writes a spec file into ``work_dir/dts/``, starts torchrun
(one host; see ``worker`` for the multi-host command), follows rank 0's
events (progress, and per epoch: loss, accuracy, bytes sent per step, share
of time waiting on communication) and loads rank 0's trained weights into
``inputs.model``. Rank 0 checkpoints every epoch; a rerun of the stage (or a
torchrun restart after a failed worker) resumes from that checkpoint.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from automl_server.engine.train.distributed.launch import Node, run_workers, torchrun_command, write_spec
from automl_server.engine.train.distributed.settings import DelayedSGDSettings, check_settings, steps_per_epoch
from automl_server.engine.train.registry import (
    DataFacts,
    InvalidPipelineSettings,
    PipelineInputs,
    TrainCallbacks,
    TrainOutcome,
    register_pipeline,
)
from automl_server.engine.train.standard import evaluate


def run_delayed_sgd(inputs: PipelineInputs, settings: DelayedSGDSettings,
                    callbacks: TrainCallbacks) -> TrainOutcome:
    """Data-parallel training with delayed and temporally sparse SGD and DGC."""
    epochs = settings.epochs or inputs.epochs
    batch_size = settings.batch_size or inputs.batch_size
    data = inputs.data
    check_settings(settings, DataFacts(len(data.y_train), data.num_classes, data.resolution, epochs), batch_size)
    out_dir = inputs.work_dir / "dts"
    spec = write_spec(out_dir / "spec.pt", model=inputs.model,
                      data={"x_train": data.x_train, "y_train": data.y_train, "x_holdout": data.x_holdout,
                            "y_holdout": data.y_holdout},
                      settings=settings.model_dump(), epochs=epochs, batch_size=batch_size, seed=inputs.seed,
                      max_shift=max(1, data.resolution // 8))
    (out_dir / "final.pt").unlink(missing_ok=True)
    (out_dir / "stop").unlink(missing_ok=True)
    steps = steps_per_epoch(len(data.y_train), settings.workers, batch_size)
    history: list[dict[str, Any]] = []
    started = time.monotonic()

    def on_event(event: dict[str, Any]) -> None:
        kind = event.pop("type")
        if kind == "progress":
            done = event["epoch"] + event["step"] / event["steps"]
            callbacks.progress(done / epochs, f"epoch {event['epoch'] + 1}/{epochs}, step "
                               f"{event['step']}/{event['steps']}")
        elif kind == "epoch":
            history.append(event)
            epoch = int(event["epoch"])
            callbacks.metric(f"train epoch {epoch}/{epochs}: loss {event['train_loss']:.3f}, "
                             f"{event['bytes_sent_per_step']:.0f} B sent per step, "
                             f"{event['comm_wait_share']:.0%} of the time waiting on communication",
                             phase="train", total_epochs=epochs, **event)
            eta = (time.monotonic() - started) / max(len(history), 1) * (epochs - epoch)
            callbacks.progress(epoch / epochs, f"epoch {epoch}/{epochs}", eta_s=eta)
            if epoch < epochs and callbacks.should_stop():
                # The workers see it at their next epoch's end (they are already in it).
                (out_dir / "stop").touch()

    callbacks.log(f"delayed-sgd: {settings.workers} workers, delay {settings.delay}, period {settings.period}, "
                  f"compression {settings.compression}, {steps} steps per epoch of {settings.workers} x "
                  f"{batch_size} images")
    command = torchrun_command(spec, nproc_per_node=settings.workers, max_restarts=settings.max_restarts)
    run_workers([Node(command)], out_dir, on_event=on_event, check_cancelled=callbacks.check_cancelled)
    inputs.model.load_state_dict(torch.load(out_dir / "final.pt", weights_only=True))
    checkpoint = torch.load(out_dir / "dts.ckpt", weights_only=False)
    full_history = checkpoint["history"]  # every epoch, also those of an earlier, resumed run
    if len(full_history) < epochs:
        callbacks.log(f"training stopped after {len(full_history)} of {epochs} epochs: the budget's minutes ran out")
    holdout = full_history[-1]["holdout_accuracy"] if full_history else None
    if len(data.y_holdout) and holdout is None:
        holdout = evaluate(inputs.model, data.x_holdout, data.y_holdout)
    report = {"workers": settings.workers, "delay": settings.delay, "period": settings.period,
              "compression": settings.compression, "steps_per_epoch": steps,
              "bytes_sent_per_step": full_history[-1]["bytes_sent_per_step"] if full_history else None,
              "comm_wait_share": full_history[-1]["comm_wait_share"] if full_history else None}
    return TrainOutcome(model=inputs.model, epochs=len(full_history), history=full_history, report=report,
                        holdout_accuracy=holdout)


def _check(settings: Any, facts: DataFacts) -> None:
    check_settings(settings, facts)


register_pipeline("delayed-sgd", DelayedSGDSettings, run_delayed_sgd, params_key="distributed",
                  title="Delayed SGD (DTS + DGC)",
                  description="Data-parallel training on J workers with delayed and temporally sparse updates "
                  "and Deep Gradient Compression: keeps scaling over slow, distant links.", check=_check)

__all__ = ["DelayedSGDSettings", "InvalidPipelineSettings", "run_delayed_sgd"]
