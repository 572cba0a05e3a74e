"""Stage "train": the chosen architecture trained with the job's pipeline.

One generic stage for every registered pipeline (``engine.train.registry``):
it loads the job's splits, seeds and builds the network, hands the pipeline
its settings, callbacks (progress, metrics, cancel, budget) and the job's
directory, then evaluates what the pipeline returns once on the test split no
earlier stage has seen, and saves it for the export stage. A pipeline never
touches the database, the queue or the artifact store itself.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from automl_server.engine.data import SplitData, split_arrays
from automl_server.engine.train import evaluate
from automl_server.engine.train.registry import InvalidPipelineSettings, PipelineInputs, get_pipeline
from automl_server.jobs.context import StageContext, StageFailed
from automl_server.jobs.search_stage import chosen_arch, deadline, load_split
from automl_server.jobs.spec import JobSpec
from search_spaces import Arch, build_model


class StageCallbacks:
    """The ``TrainCallbacks`` of a pipeline run inside a job's stage."""

    def __init__(self, ctx: StageContext, ends: float | None) -> None:
        self.ctx = ctx
        self.ends = ends

    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        self.ctx.progress(fraction, message, eta_s=eta_s, **data)

    def metric(self, message: str, **data: Any) -> None:
        self.ctx.event("metric", message, **data)

    def log(self, message: str, **data: Any) -> None:
        self.ctx.event("log", message, **data)

    def check_cancelled(self) -> None:
        self.ctx.check_cancelled()

    def should_stop(self) -> bool:
        return self.ends is not None and time.monotonic() > self.ends

    def store_artifact(self, kind: str, path: Path) -> None:
        self.ctx.store_artifact(kind, path)


def fit_split(ctx: StageContext, spec: JobSpec) -> tuple[SplitData, Any]:
    """The job's splits for the final training: with ``final_fit`` "train+holdout"
    the holdout split joins the training split and none is held out."""
    if spec.final_fit == "train":
        data, arrays = load_split(ctx)
        return data, arrays
    arrays = np.load(ctx.job_dir() / "dataset.npz")
    both = np.concatenate([arrays["train_idx"], arrays["holdout_idx"]])
    data = split_arrays(arrays["x"], arrays["y"], train_idx=both, holdout_idx=np.array([], dtype=both.dtype))
    return data, arrays


def start_from_parent(ctx: StageContext, model: torch.nn.Module) -> None:
    """Load the adopted parent's trained weights; tensors whose shape differs
    (the classifier, when the classes differ) keep their fresh initialisation."""
    saved = torch.load(ctx.job_dir() / "parent.pt", weights_only=False)["state_dict"]
    own = model.state_dict()
    kept = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    fresh = sorted(k for k in own if k not in kept)
    ctx.event("log", f"starting from job {ctx.results['adopt']['parent_job']}'s weights"
              + (f"; re-initialised for this dataset's classes: {', '.join(fresh)}" if fresh else ""),
              parent_job=ctx.results["adopt"]["parent_job"], reinitialised=fresh)


def train_network(ctx: StageContext) -> dict[str, Any]:
    arch_dict = chosen_arch(ctx.results)
    path: Path = ctx.job_dir() / "arch.json"
    path.write_text(json.dumps(arch_dict, indent=2))
    ctx.store_artifact("arch", path)
    trained = train_arch(ctx, Arch.from_dict(arch_dict), ctx.job_dir(), StageCallbacks)
    weights = ctx.job_dir() / "model.pt"
    torch.save({"arch": arch_dict, "state_dict": trained.model.state_dict(), "mean": trained.data.mean,
                "std": trained.data.std}, weights)
    ctx.store_artifact("weights", weights)
    return trained.output


@dataclass
class Trained:
    """A network trained by the job's pipeline: the model, its splits, and the train stage's output."""

    model: torch.nn.Module
    data: SplitData
    output: dict[str, Any]


def train_arch(ctx: StageContext, arch: Arch, work_dir: Path,
               callbacks: Callable[[StageContext, float | None], StageCallbacks]) -> Trained:
    """``arch`` trained as the job trains its network: the job's pipeline and settings, seed,
    splits (``final_fit``) and train budget (``train_epochs``, or the train stage's share of
    ``budget.minutes``), then tested once on the test split; checkpoints in ``work_dir``.
    The train stage and the baselines stage (jobs/baselines.py) both train through it."""
    spec = JobSpec.from_params(ctx.params)
    name = ctx.params["pipeline"]
    try:
        pipeline = get_pipeline(name)
    except KeyError as exc:
        raise StageFailed(str(exc.args[0])) from None
    try:
        settings = pipeline.parse(ctx.params.get(pipeline.params_key))
    except ValidationError as exc:  # submission validated them; a changed pipeline may not accept them now
        raise StageFailed(f"params.{pipeline.params_key}: {exc.errors()[0]['msg']}") from None
    data, arrays = fit_split(ctx, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(arch)
    if "adopt" in ctx.results:
        start_from_parent(ctx, model)
    x_test = data.normalise(arrays["x"][arrays["test_idx"]])
    y_test = torch.from_numpy(arrays["y"][arrays["test_idx"]].astype("int64"))
    inputs = PipelineInputs(arch=arch, model=model, data=data, x_test=x_test, y_test=y_test,
                            epochs=spec.budget.train_epochs, batch_size=spec.batch_size, seed=spec.seed,
                            work_dir=work_dir)
    started = time.monotonic()
    try:
        outcome = pipeline.run(inputs, settings, callbacks(ctx, deadline(ctx, spec, "train")))
    except InvalidPipelineSettings as exc:
        raise StageFailed(f"{pipeline.field_path(exc.field)}: {exc.detail}") from None
    test_accuracy = evaluate(outcome.model, x_test, y_test)
    holdout = outcome.holdout_accuracy
    output = {"pipeline": name, "settings": settings.model_dump(mode="json"),
              "test_accuracy": round(test_accuracy, 6),
              "holdout_accuracy": None if holdout is None else round(holdout, 6),
              "trained_on": spec.final_fit, "train_samples": int(len(data.y_train)),
              "epochs": outcome.epochs, "test_samples": int(len(y_test)),
              "train_seconds": round(time.monotonic() - started, 3),
              "normalisation": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"},
              **({name: outcome.report} if outcome.report else {})}
    return Trained(outcome.model, data, output)
