"""``sparse-update``: fine-tune a trained network under a training-memory budget
with the Tiny Training Engine's sparse update (Lin et al., NeurIPS 2022),
registered as a training pipeline.

The run: fold BN, choose the scheme (contribution analysis + evolutionary
search for ``auto``), fine-tune only the scheme's tensors with operator
reordering (checkpointed every epoch, resumable; the chosen scheme is kept in
``sparse_update_plan.json`` so a resumed run does not search again), then for
the report fine-tune the full-update and last-layer-only baselines for the
same epochs and measure one step of each variant's training memory. The
trained values are written back into the job's network, which the job exports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from automl_server.engine.train.registry import (
    InvalidPipelineSettings,
    PipelineConfig,
    PipelineInputs,
    TrainCallbacks,
    TrainOutcome,
    register_pipeline,
)
from automl_server.engine.train.sparse_update.comparison import comparison_variants, memory_comparison
from automl_server.engine.train.sparse_update.contribution import Contributions
from automl_server.engine.train.sparse_update.network import SparseNet
from automl_server.engine.train.sparse_update.on_device import write_device_plan
from automl_server.engine.train.sparse_update.peak_rss import measure_peak_rss_kb
from automl_server.engine.train.sparse_update.scheme import SparseScheme, classifier_only, full
from automl_server.engine.train.sparse_update.search import BudgetTooSmall
from automl_server.engine.train.sparse_update.selection import choose_scheme, figures_fn
from automl_server.engine.train.sparse_update.training import FineTuneConfig, FineTuneResult, fine_tune
from automl_server.engine.train.standard import evaluate

PARAMS_KEY = "sparse_update"
DEVICE_FOLDER = "on_device"  # in the job's directory: what the device-finetune stage ships to the agent
PLAN_FILE = "sparse_update_plan.json"
CHECKPOINT_FILE = "sparse_update.ckpt"


class SparseUpdateSettings(PipelineConfig):
    parent_job: str | None = Field(None, description="A finished job whose trained network is fine-tuned "
                                   "(resolved by the job layer); none: this job's own search and training first.")
    memory_budget_kb: float = Field(256.0, gt=0, le=16_000_000, description="Training memory of one step "
                                    "(activations saved for backward + gradients + optimizer state, fp32, at the "
                                    "job's batch size). Default 256 kB: the paper's microcontroller SRAM.")
    scheme: Literal["auto", "bias-only", "last-k", "full"] = Field(
        "auto", description="auto: contribution analysis + evolutionary search under the budget (the paper); "
        "bias-only / last-k: the most bias layers / fully trained last layers that fit; full: everything.")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Fine-tuning epochs; default: the job's "
                               "budget.train_epochs.")
    batch_size: int = Field(8, ge=1, le=4096, description="Fine-tuning batch size, which the memory budget is "
                            "counted at. Small, as on a device (the paper fine-tunes with batch 1 on a "
                            "microcontroller); 8 (ours) keeps epochs short while a 256 kB budget fits small "
                            "networks (the tiny space on 8x8 images needs ~41 kB for its smallest scheme).")
    on_device: bool = Field(False, description="Also run the scheme's fine-tuning steps on the job's device: its "
                            "agent runs them with ONNX Runtime training in its training environment (make "
                            "ort-training-venv next to the agent); the job compares the loss curve, accuracy and "
                            "peak memory with PyTorch's same steps (stage device-finetune).")
    on_device_steps: int = Field(20, ge=1, le=10_000, description="Steps of the on-device run (plain SGD at "
                                 "lr, batches in order, as the device trains).")
    lr: float = Field(0.05, gt=0, le=10, description="Peak learning rate of plain SGD, cosine per step. The "
                      "reference fine-tunes with SGD at 0.025-0.1 (scripts/sparse_update.sh: 0.1 without momentum).")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum; 0 as the reference's on-device setting "
                            "(sgd_nomom; no momentum memory).")
    reorder: bool = Field(True, description="Operator reordering: update each tensor as soon as its gradient "
                          "exists and free the gradient (the paper's in-place update).")
    analysis_steps: int = Field(20, ge=1, le=10_000, description="Batches of each short fine-tune of the "
                                "contribution analysis (ours: the paper fine-tunes each candidate fully). Too few "
                                "rank noise: on digits at batch 32, 3 steps gave every candidate a gain of 0 or "
                                "one image, one epoch chose a scheme as accurate as full update (README).")
    compare_baselines: bool = Field(True, description="Also fine-tune full update and last layer only for the same "
                                    "epochs, for the report's accuracy comparison.")
    measure_peak_rss: bool = Field(True, description="Measure each variant's peak resident memory of a step in "
                                   "a fresh process (Linux).")


def _on_device(net: SparseNet, scheme: SparseScheme, inputs: PipelineInputs, settings: SparseUpdateSettings,
               config: FineTuneConfig, callbacks: TrainCallbacks) -> dict[str, Any]:
    """Prepare the scheme's steps for the device, from the starting weights: the model with
    the scheme's tensors trainable, the samples and PyTorch's losses over the same steps.
    The job's ``device-finetune`` stage sends them to the device's agent, which runs them
    with ONNX Runtime training, and compares the two loss curves."""
    callbacks.progress(0.25, f"preparing the on-device fine-tune: {settings.on_device_steps} steps")
    folder = inputs.work_dir / DEVICE_FOLDER
    plan = write_device_plan(net, scheme, folder, inputs.data.x_train, inputs.data.y_train,
                             steps=settings.on_device_steps, lr=settings.lr, batch=config.batch_size)
    return {"stage": "device-finetune", "steps": plan["steps"], "lr": plan["lr"], "batch": plan["batch"],
            "trainable": plan["trainable"], "pytorch": plan["pytorch"]}


def _adapt_classifier(model: nn.Module, num_classes: int, callbacks: TrainCallbacks) -> None:
    """A parent trained on other classes gets a fresh classifier for this job's (transfer learning)."""
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear) and classifier.out_features != num_classes:
        callbacks.log(f"new classifier: the network predicted {classifier.out_features} classes, "
                      f"this job has {num_classes}")
        model.classifier = nn.Linear(classifier.in_features, num_classes)
        arch = getattr(model, "arch", None)
        if dataclasses.is_dataclass(arch) and not isinstance(arch, type) and hasattr(arch, "num_classes"):
            # setattr: nn.Module's typed __setattr__ takes tensors and modules, not a plain dataclass.
            setattr(model, "arch", dataclasses.replace(arch, num_classes=num_classes))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _plan(net: SparseNet, inputs: PipelineInputs, settings: SparseUpdateSettings, config: FineTuneConfig,
          callbacks: TrainCallbacks) -> dict[str, Any]:
    """The chosen scheme (read back when resuming) and its analysis."""
    path = inputs.work_dir / PLAN_FILE
    if path.exists():
        plan: dict[str, Any] = json.loads(path.read_text())
        callbacks.log(f"resuming with the scheme chosen before: {plan['scheme']}")
        return plan
    data = inputs.data
    budget = int(settings.memory_budget_kb * 1024)

    def on_candidate(done: int, total: int) -> None:
        callbacks.progress(0.25 * done / total, f"contribution analysis: {done}/{total} candidates")

    started = time.monotonic()
    try:
        scheme, gains = choose_scheme(settings.scheme, net, data.x_train, data.y_train, data.x_holdout,
                                      data.y_holdout, config, budget, analysis_steps=settings.analysis_steps,
                                      on_candidate=on_candidate)
    except BudgetTooSmall as exc:
        raise InvalidPipelineSettings(f"{PARAMS_KEY}.memory_budget_kb",
                                      f"{exc}; set memory_budget_kb to at least "
                                      f"{exc.needed_bytes / 1024:.1f}") from None
    predicted = figures_fn(net, config.batch_size, config.momentum)(scheme)
    plan = {"scheme": scheme.to_dict(), "contributions": gains.to_dict() if isinstance(gains, Contributions) else None,
            "predicted_memory": predicted.to_dict(), "budget_bytes": budget,
            "selection_s": round(time.monotonic() - started, 2)}
    if settings.scheme == "full" and predicted.total(config.reorder) > budget:
        callbacks.log(f"scheme 'full' needs {predicted.total(config.reorder) / 1024:.1f} kB per step, over the "
                      f"budget of {settings.memory_budget_kb} kB: run as asked")
    _write_json(path, plan)
    return plan


def _baseline(model: nn.Module, inputs: PipelineInputs, scheme: SparseScheme, config: FineTuneConfig, name: str,
              plain: bool, callbacks: TrainCallbacks) -> tuple[SparseNet, FineTuneResult]:
    """A comparison fine-tune from the same starting network (``model`` is not written
    back before the baselines run), with its own checkpoint."""
    net = SparseNet(model, inputs.data.resolution)
    net.apply_scheme(scheme, plain_autograd=plain)
    data = inputs.data
    return net, fine_tune(net, data.x_train, data.y_train, data.x_holdout, data.y_holdout, config,
                     checkpoint_path=inputs.work_dir / f"sparse_update_{name}.ckpt", on_step=callbacks.check_cancelled)


def _accuracies(net: SparseNet, inputs: PipelineInputs, result: FineTuneResult) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    return {"epochs": result.epochs, "holdout_accuracy": last.get("holdout_accuracy"),
            "test_accuracy": evaluate(net, inputs.x_test, inputs.y_test) if len(inputs.y_test) else None}


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def run_sparse_update(inputs: PipelineInputs, settings: SparseUpdateSettings,
                      callbacks: TrainCallbacks) -> TrainOutcome:
    """Fine-tune only the parts of the network that matter, within a training-memory budget."""
    data, model = inputs.data, inputs.model
    _adapt_classifier(model, data.num_classes, callbacks)
    model.eval()  # BN statistics are folded: fine-tuning never updates them
    config = FineTuneConfig(epochs=settings.epochs or inputs.epochs, batch_size=min(settings.batch_size,
                            len(data.y_train)), lr=settings.lr, momentum=settings.momentum, reorder=settings.reorder,
                            seed=inputs.seed)
    net = SparseNet(model, data.resolution)
    plan = _plan(net, inputs, settings, config, callbacks)
    scheme = SparseScheme.from_dict(plan["scheme"])
    on_device = _on_device(net, scheme, inputs, settings, config, callbacks) if settings.on_device else None
    net.apply_scheme(scheme)
    rows = scheme.describe(net.infos)
    trained = [r for r in rows if r["update"] != "frozen"]
    callbacks.log(f"scheme {scheme.kind}: {len(trained)} of {len(rows)} conv layers trained "
                  f"({sum(r['update'] == 'weight' for r in rows)} with weights), predicted "
                  f"{plan['predicted_memory']['total_reordered_bytes' if config.reorder else 'total_bytes'] / 1024:.1f}"
                  f" kB per step", scheme=plan["scheme"])

    started = time.monotonic()
    share = 0.45 if settings.compare_baselines else 0.7

    def on_epoch(row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        callbacks.metric(f"sparse-update epoch {epoch}/{config.epochs}", phase="train",
                         total_epochs=config.epochs, **row)
        eta = (time.monotonic() - started) / max(epoch, 1) * (config.epochs - epoch)
        callbacks.progress(0.25 + share * epoch / config.epochs, f"epoch {epoch}/{config.epochs}", eta_s=eta)

    result = fine_tune(net, data.x_train, data.y_train, data.x_holdout, data.y_holdout, config,
                       checkpoint_path=inputs.work_dir / CHECKPOINT_FILE, on_step=callbacks.check_cancelled,
                       on_epoch=on_epoch, should_stop=callbacks.should_stop)
    if result.epochs < config.epochs:
        callbacks.log(f"fine-tuning stopped after {result.epochs} of {config.epochs} epochs: the budget's minutes "
                      "ran out")
    accuracy: dict[str, Any] = {"sparse_update": _accuracies(net, inputs, result)}
    if settings.compare_baselines and result.epochs == config.epochs:
        baselines = (("full_update", full(len(net.layers)), True), ("last_layer_only", classifier_only(), False))
        for index, (name, baseline_scheme, plain) in enumerate(baselines):
            callbacks.progress(0.7 + 0.12 * index, f"baseline for the report: {name.replace('_', ' ')}")
            baseline_net, baseline = _baseline(model, inputs, baseline_scheme, config, name, plain, callbacks)
            accuracy[name] = _accuracies(baseline_net, inputs, baseline)
    callbacks.progress(0.95, "measuring training memory")
    # Copies, not views: a saved view would keep (and be counted as) the whole training split.
    x, y = data.x_train[:config.batch_size].clone(), data.y_train[:config.batch_size].clone()
    memory = memory_comparison(net, scheme, x, y, lr=config.lr, momentum=config.momentum)
    if settings.measure_peak_rss:
        peaks = measure_peak_rss_kb(net, comparison_variants(scheme, len(net.layers)), x, y, lr=config.lr,
                                    momentum=config.momentum, check_cancelled=callbacks.check_cancelled)
        for label, row in memory.items():
            row["peak_rss_step_kb"] = None if peaks is None else peaks.get(label)
    written = net.write_back(model)
    report = {
        "scheme": {**plan["scheme"], "layers": rows, "layers_written": written},
        "budget_kb": settings.memory_budget_kb, "batch_size": config.batch_size,
        "predicted_memory": plan["predicted_memory"], "memory": memory,
        "memory_saving_vs_full_update": _ratio(memory["full_update"]["measured_bytes"],
                                               memory["scheme"]["measured_bytes"]),
        "reordering_saving": _ratio(memory["scheme_without_reordering"]["measured_bytes"],
                                    memory["scheme"]["measured_bytes"]),
        # The same two ratios for the peak of a step (what the device must really hold).
        "peak_saving_vs_full_update": _ratio(memory["full_update"]["peak_bytes"], memory["scheme"]["peak_bytes"]),
        "reordering_peak_saving": _ratio(memory["scheme_without_reordering"]["peak_bytes"],
                                         memory["scheme"]["peak_bytes"]),
        "accuracy": accuracy, "contributions": plan["contributions"], "parent_job": settings.parent_job,
        **({"on_device": on_device} if on_device is not None else {}),
    }
    return TrainOutcome(model=model, epochs=result.epochs, history=result.history, report=report,
                        holdout_accuracy=result.history[-1]["holdout_accuracy"] if result.history else None)


register_pipeline("sparse-update", SparseUpdateSettings, run_sparse_update, params_key=PARAMS_KEY,
                  title="Sparse update (TTE)",
                  description="Fine-tune a trained network within a training-memory budget: only the biases and "
                  "weight channels that matter most are updated (Tiny Training Engine, Lin et al. 2022).")
