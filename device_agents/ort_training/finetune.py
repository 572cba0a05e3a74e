"""Fine-tuning steps with ONNX Runtime training's on-device API (CheckpointState,
Module, Optimizer): per step the loss, the batch's accuracy and the process's
peak resident memory so far.

Batches are taken in order, without shuffling or augmentation: step k trains on
samples k*B .. k*B+B-1 (wrapping around), so that the server can repeat the same
steps in PyTorch and compare the loss curves.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from device_agents.ort_training._runtime import training_api
from device_agents.ort_training.artifacts import ArtifactPaths
from device_agents.ort_training.memory import peak_rss_kb, rss_kb


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    accuracy: float  # of the step's batch, from the logits before the update
    peak_rss_kb: int | None


@dataclass
class FineTuneRun:
    steps: list[StepRecord] = field(default_factory=list)
    final_loss: float | None = None  # over all samples, after the last step (eval model)
    final_accuracy: float | None = None
    rss_before_kb: int | None = None  # after loading the runtime, before the training session
    peak_rss_kb: int | None = None
    seconds: float = 0.0
    trainable: list[str] = field(default_factory=list)
    frozen_max_abs_change: float = 0.0  # 0: no frozen parameter moved
    parameters: dict[str, np.ndarray] = field(default_factory=dict)  # every checkpoint parameter at the end

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("parameters")
        out["steps"] = [asdict(s) for s in self.steps]
        return out


def batch_indices(step: int, batch: int, n_samples: int) -> np.ndarray:
    return (step * batch + np.arange(batch)) % n_samples


def _parameters(state: Any) -> dict[str, tuple[np.ndarray, bool]]:
    # Iterating Parameters yields (name, Parameter) pairs.
    return {name: (np.array(param.data, copy=True), bool(param.requires_grad)) for name, param in state.parameters}


def fine_tune(paths: ArtifactPaths, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float, batch: int,
              threads: int = 1, on_step: Callable[[StepRecord], None] | None = None) -> FineTuneRun:
    if x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"x must be float32 NCHW, got {x.dtype} with shape {x.shape}")
    if y.shape != (len(x),) or y.dtype != np.int64:
        raise ValueError(f"y must be int64 of shape ({len(x)},), got {y.dtype} {y.shape}")
    if steps < 1 or batch < 1 or lr <= 0:
        raise ValueError(f"steps and batch must be >= 1 and lr > 0, got {steps}, {batch}, {lr}")
    api = training_api()
    run = FineTuneRun(rss_before_kb=rss_kb())
    started = time.perf_counter()
    state = api.CheckpointState.load_checkpoint(str(paths.checkpoint))
    before = _parameters(state)
    run.trainable = sorted(name for name, (_, trainable) in before.items() if trainable)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the session logs every graph pass at INFO
    options.intra_op_num_threads = threads
    module = api.Module(str(paths.training_model), state, str(paths.eval_model), device="cpu",
                        session_options=options)
    optimizer = api.Optimizer(str(paths.optimizer_model), module)
    optimizer.set_learning_rate(lr)
    module.train()
    for step in range(steps):
        index = batch_indices(step, batch, len(x))
        labels = y[index]
        loss, logits = module(np.ascontiguousarray(x[index]), labels)
        optimizer.step()
        # Module accumulates gradients across calls (gradient accumulation graph): reset
        # them, or the next step would add this step's gradient again.
        module.lazy_reset_grad()
        record = StepRecord(step=step, loss=float(loss), accuracy=float((logits.argmax(1) == labels).mean()),
                            peak_rss_kb=peak_rss_kb())
        run.steps.append(record)
        if on_step is not None:
            on_step(record)
    module.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch):
        chunk_y = y[start:start + batch]
        loss, logits = module(np.ascontiguousarray(x[start:start + batch]), chunk_y)
        total_loss += float(loss) * len(chunk_y)  # the eval loss is a batch mean
        correct += int((logits.argmax(1) == chunk_y).sum())
    run.final_loss, run.final_accuracy = total_loss / len(x), correct / len(x)
    run.seconds = time.perf_counter() - started
    run.peak_rss_kb = peak_rss_kb()
    after = _parameters(state)
    run.frozen_max_abs_change = max((float(np.abs(after[name][0] - value).max()) for name, (value, trainable)
                                     in before.items() if not trainable and value.size), default=0.0)
    run.parameters = {name: value for name, (value, _) in after.items()}
    return run
