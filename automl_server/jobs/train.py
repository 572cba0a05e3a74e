"""Stage "train": the chosen architecture trained from scratch with the job's
pipeline (``automl_server.engine.train``), validated on the holdout split
every epoch, and evaluated once on the test split no earlier stage has seen.

Pipelines register in ``PIPELINES``; the federated, delayed-SGD and
sparse-update pipelines plug in here with the same signature.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from automl_server.jobs.context import StageContext, StageFailed
from automl_server.jobs.search_stage import chosen_arch, deadline, load_split
from automl_server.jobs.spec import JobSpec


def train_standard(ctx: StageContext, spec: JobSpec, arch_dict: dict[str, Any]) -> dict[str, Any]:
    import torch

    from automl_server.engine.train import StandardConfig, evaluate
    from automl_server.engine.train import train_standard as train
    from search_spaces import Arch, build_model

    data, arrays = fit_split(ctx, spec)
    arch = Arch.from_dict(arch_dict)
    config = StandardConfig(epochs=spec.budget.train_epochs, batch_size=spec.batch_size, seed=spec.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(arch)
    ends = deadline(ctx, spec, "train")
    started = time.monotonic()
    epochs_run: list[int] = []  # epochs run by this call (a resumed one starts later)

    def on_epoch(row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        epochs_run.append(epoch)
        ctx.event("metric", f"train epoch {epoch}/{config.epochs}", phase="train", total_epochs=config.epochs, **row)
        eta = (time.monotonic() - started) / len(epochs_run) * (config.epochs - epoch)
        shown = (f"holdout accuracy {row['holdout_accuracy']:.3f}" if row["holdout_accuracy"] is not None
                 else f"training accuracy {row['train_accuracy']:.3f} (train + holdout)")
        ctx.progress(epoch / config.epochs, f"epoch {epoch}/{config.epochs}: {shown}", eta_s=eta)

    result = train(model, data, config, checkpoint_path=ctx.job_dir() / "train.ckpt", on_step=ctx.check_cancelled,
                   on_epoch=on_epoch, should_stop=(lambda: time.monotonic() > ends) if ends else None)
    if result.epochs < config.epochs:
        ctx.event("log", f"training stopped after {result.epochs} of {config.epochs} epochs: "
                  "the budget's minutes ran out")
    x_test = data.normalise(arrays["x"][arrays["test_idx"]])
    y_test = torch.from_numpy(arrays["y"][arrays["test_idx"]].astype("int64"))
    test_accuracy = evaluate(model, x_test, y_test)
    weights = ctx.job_dir() / "model.pt"
    torch.save({"arch": arch.to_dict(), "state_dict": model.state_dict(), "mean": data.mean, "std": data.std}, weights)
    ctx.store_artifact("weights", weights)
    holdout = result.history[-1]["holdout_accuracy"]
    return {"test_accuracy": round(test_accuracy, 6),
            "holdout_accuracy": None if holdout is None else round(holdout, 6),
            "trained_on": spec.final_fit, "train_samples": int(len(data.y_train)),
            "epochs": result.epochs, "test_samples": int(len(y_test)),
            "train_seconds": round(time.monotonic() - started, 3),
            "normalisation": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"}}


def fit_split(ctx: StageContext, spec: JobSpec):  # type: ignore[no-untyped-def]
    """The job's splits for the final training: with ``final_fit`` "train+holdout"
    the holdout split joins the training split and none is held out."""
    import numpy as np

    from automl_server.engine.data import split_arrays

    if spec.final_fit == "train":
        return load_split(ctx)
    arrays = np.load(ctx.job_dir() / "dataset.npz")
    both = np.concatenate([arrays["train_idx"], arrays["holdout_idx"]])
    data = split_arrays(arrays["x"], arrays["y"], train_idx=both, holdout_idx=np.array([], dtype=both.dtype))
    return data, arrays


PIPELINES: dict[str, Callable[[StageContext, JobSpec, dict[str, Any]], dict[str, Any]]] = {
    "standard": train_standard,
}


def train_network(ctx: StageContext) -> dict[str, Any]:
    spec = JobSpec.from_params(ctx.params)
    pipeline = ctx.params["pipeline"]
    if pipeline not in PIPELINES:
        raise StageFailed(f"pipeline {pipeline!r} is not available in this version; available: "
                          f"{', '.join(PIPELINES)}")
    arch = chosen_arch(ctx.results)
    path: Path = ctx.job_dir() / "arch.json"
    path.write_text(json.dumps(arch, indent=2))
    ctx.store_artifact("arch", path)
    return {"pipeline": pipeline, **PIPELINES[pipeline](ctx, spec, arch)}
