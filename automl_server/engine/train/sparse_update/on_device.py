"""The server's side of an on-device fine-tune: the files for the device
(``plan_device_run``), the same steps in PyTorch from the same weights on the
same batches, and the report comparing the two loss curves (``device_report``).

The device (``device_agents.ort_training``) trains with plain SGD at a fixed
learning rate on batches taken in order (step k: samples k*B .. k*B+B-1,
wrapping around); ``torch_steps`` repeats exactly that with the sparse-update
network and its updater, so the curves differ only by float rounding.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.ort_export import export_for_ort_training, write_step_data
from automl_server.engine.train.sparse_update.scheme import SparseScheme
from automl_server.engine.train.sparse_update.training import train_step
from automl_server.engine.train.sparse_update.updater import SparseUpdater

# Largest |device loss - PyTorch loss| at any step accepted as the same fine-tune: float32
# rounding of two runtimes (different conv and reduction orders) grows over the steps. Measured
# on the tiny test network (digits, batch 8): 1.2e-7 after 8 steps at lr 0.05, 1.3e-5 after 40
# steps at lr 0.1; 1e-3 leaves room for larger networks and longer runs while a wrong gradient,
# learning rate or batch shows at once (the loss moves by ~1e-2 per step there).
LOSS_TOLERANCE = 1e-3
DEVICE_MODULE = "device_agents.ort_training"  # run by name in its own environment, never imported here


def batch_indices(step: int, batch: int, n_samples: int) -> torch.Tensor:
    """The device's batch order (``device_agents.ort_training.finetune.batch_indices``)."""
    return (step * batch + torch.arange(batch)) % n_samples


@dataclass
class TorchSteps:
    losses: list[float]
    accuracies: list[float]
    net: SparseNet  # the fine-tuned copy


def torch_steps(net: SparseNet, scheme: SparseScheme, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
                batch: int) -> TorchSteps:
    """Fine-tune a copy of ``net`` as the device does: plain SGD (no momentum), fixed ``lr``."""
    copied = copy.deepcopy(net)
    copied.apply_scheme(scheme)
    updater = SparseUpdater(copied.trainable_parameters(), lr=lr, momentum=0.0, reorder=True)
    losses, accuracies = [], []
    try:
        for step in range(steps):
            index = batch_indices(step, batch, len(y))
            loss, correct = train_step(copied, updater, x[index], y[index])
            losses.append(loss)
            accuracies.append(correct / batch)
    finally:
        updater.close()
    for layer in copied.layers:
        layer.sync_weight()
    return TorchSteps(losses, accuracies, copied)


def compare_loss_curves(torch_losses: list[float], device_losses: list[float],
                        tolerance: float = LOSS_TOLERANCE) -> dict[str, Any]:
    """For the report: the largest per-step difference and whether it is within ``tolerance``."""
    if len(torch_losses) != len(device_losses):
        raise ValueError(f"{len(torch_losses)} PyTorch steps against {len(device_losses)} on the device")
    diffs = np.abs(np.asarray(torch_losses, dtype=np.float64) - np.asarray(device_losses, dtype=np.float64))
    max_diff = float(diffs.max()) if len(diffs) else 0.0
    return {"steps": len(diffs), "max_abs_loss_diff": max_diff, "tolerance": tolerance,
            "within_tolerance": bool(max_diff <= tolerance)}


@dataclass(frozen=True)
class DeviceRunPlan:
    """Files and settings of one on-device fine-tune (what the job sends to the device)."""

    model_path: Path
    data_path: Path
    trainable: list[str]
    steps: int
    lr: float
    batch: int

    def argv(self, python: str, out: Path, params_out: Path | None = None) -> list[str]:
        """The device's command line (``python -m device_agents.ort_training``), run from the
        repository root in the training environment; it writes the result JSON to ``out``."""
        command = [python, "-m", DEVICE_MODULE, "--model", str(self.model_path), "--trainable",
                   ",".join(self.trainable), "--data", str(self.data_path), "--steps", str(self.steps),
                   "--lr", repr(self.lr), "--batch", str(self.batch), "--out", str(out)]
        return command + (["--params-out", str(params_out)] if params_out is not None else [])


def plan_device_run(net: SparseNet, scheme: SparseScheme, folder: Path, x: torch.Tensor, y: torch.Tensor, *,
                    steps: int, lr: float, batch: int) -> DeviceRunPlan:
    """Export the model with the scheme's tensors trainable and write the samples, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    export = export_for_ort_training(net, scheme, folder / "sparse_update.onnx")
    data = write_step_data(folder / "sparse_update_data.npz", x, y)
    return DeviceRunPlan(export.model_path, data, export.trainable, steps, lr, min(batch, len(y)))


PLAN_FILE = "device_plan.json"


def write_device_plan(net: SparseNet, scheme: SparseScheme, folder: Path, x: torch.Tensor, y: torch.Tensor, *,
                      steps: int, lr: float, batch: int) -> dict[str, Any]:
    """What a job sends to its device's agent, in ``folder``: the model, the samples, the
    settings, and PyTorch's losses over the same steps from the same weights (computed
    now, so that the stage that waits for the device needs no PyTorch). Returns the plan."""
    plan = plan_device_run(net, scheme, folder, x, y, steps=steps, lr=lr, batch=batch)
    reference = torch_steps(net, scheme, x, y, steps=plan.steps, lr=plan.lr, batch=plan.batch)
    written = {"model_file": plan.model_path.name, "data_file": plan.data_path.name, "trainable": plan.trainable,
               "steps": plan.steps, "lr": plan.lr, "batch": plan.batch,
               "pytorch": {"losses": reference.losses, "accuracies": reference.accuracies}}
    tmp = folder / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(written))
    os.replace(tmp, folder / PLAN_FILE)
    return written


def report_from_plan(plan: dict[str, Any], result: dict[str, Any],
                     tolerance: float = LOSS_TOLERANCE) -> dict[str, Any]:
    """The report's on-device section from a plan (``write_device_plan``) and the device's result."""
    device_losses = [float(step["loss"]) for step in result["steps"]]
    return {
        "runtime": result.get("runtime"), "steps": plan["steps"], "lr": plan["lr"], "batch": plan["batch"],
        "trainable": plan["trainable"],
        "device": {"losses": device_losses, "accuracies": [step["accuracy"] for step in result["steps"]],
                   "final_loss": result.get("final_loss"), "final_accuracy": result.get("final_accuracy"),
                   "peak_rss_kb": result.get("peak_rss_kb"), "rss_before_kb": result.get("rss_before_kb"),
                   "seconds": result.get("seconds"), "frozen_max_abs_change": result.get("frozen_max_abs_change")},
        "pytorch": plan["pytorch"],
        "comparison": compare_loss_curves(plan["pytorch"]["losses"], device_losses, tolerance),
    }


def device_report(net: SparseNet, scheme: SparseScheme, x: torch.Tensor, y: torch.Tensor, plan: DeviceRunPlan,
                  result: dict[str, Any], tolerance: float = LOSS_TOLERANCE) -> dict[str, Any]:
    """The report's on-device section: the device's figures, PyTorch's same steps, and the comparison."""
    reference = torch_steps(net, scheme, x, y, steps=plan.steps, lr=plan.lr, batch=plan.batch)
    as_plan = {"steps": plan.steps, "lr": plan.lr, "batch": plan.batch, "trainable": plan.trainable,
               "pytorch": {"losses": reference.losses, "accuracies": reference.accuracies}}
    return report_from_plan(as_plan, result, tolerance)


class DeviceRunFailed(RuntimeError):
    pass


def run_in_training_env(plan: DeviceRunPlan, python: Path, folder: Path, *, cwd: Path,
                        check_cancelled: Callable[[], None] | None = None, timeout_s: float = 600.0,
                        params_out: bool = False) -> dict[str, Any]:
    """Run the device's fine-tune here, in the training environment ``python`` (an agent host's
    ``.venv-ort-training``), from ``cwd`` (the directory holding ``device_agents``); returns its
    result JSON. A cancellation raised by ``check_cancelled`` (polled every 0.2 s) or the timeout
    ends the whole process group, the artifact generator's child included."""
    # Written twice, here and in device_agents.ort_training_runner._run (the agent's side): why not shared there.
    out = folder / "device_result.json"
    argv = plan.argv(str(python), out, folder / "device_params.npz" if params_out else None)
    log_path = folder / "device_log.txt"
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while process.poll() is None:
                if check_cancelled is not None:
                    check_cancelled()
                if time.monotonic() - started > timeout_s:
                    raise DeviceRunFailed(f"the on-device fine-tune ran past {timeout_s:.0f} s")
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if process.returncode != 0:
        raise DeviceRunFailed(f"the on-device fine-tune failed (exit {process.returncode}): "
                              f"{log_path.read_text()[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result
