"""Fine-tuning a finished job's network: stage "adopt".

A pipeline whose settings name a ``parent_job`` (``sparse-update`` does:
fine-tune on the device what was searched and trained before) takes the
parent's trained network instead of searching one: the plan runs ``adopt``
in place of ``search`` and ``tune``, and the train stage starts from the
parent's weights. The new dataset may have other classes (a transfer task
such as digits 0-4 -> 5-9): the classifier is then re-initialised for them.
The input (resolution, channels) and the space must match the parent's.
"""
from __future__ import annotations

import shutil
from typing import Any

from sqlalchemy.orm import Session

from automl_server.db.models import Dataset, Job, JobState
from automl_server.engine.latency import arch_latency_ms
from automl_server.engine.train.registry import pipelines
from automl_server.jobs.context import StageContext, StageFailed
from automl_server.jobs.profile import job_layout
from automl_server.jobs.search_stage import chosen_arch, latency_model
from search_spaces import Arch


def parent_of(params: dict[str, Any]) -> str | None:
    """The parent job named in the chosen pipeline's settings, if any."""
    pipeline = pipelines().get(str(params.get("pipeline")))
    if pipeline is None:
        return None
    settings = params.get(pipeline.params_key) or {}
    parent = settings.get("parent_job") if isinstance(settings, dict) else None
    return str(parent) if parent else None


def parent_problem(session: Session, parent_id: str, dataset: Dataset, space: str) -> str | None:
    """Why ``parent_id`` cannot be fine-tuned on ``dataset``, or None when it can."""
    parent = session.get(Job, parent_id)
    if parent is None:
        return f"no job {parent_id!r}; give the id of a finished job from GET /api/v1/jobs"
    if parent.state != JobState.SUCCEEDED.value or "train" not in parent.result:
        return (f"job {parent_id} is {parent.state} and has no trained network; give a job that "
                "succeeded (or ran at least its train stage)")
    if parent.space != space:
        return f"job {parent_id} searched space {parent.space!r}; set space to {parent.space!r} to fine-tune it"
    arch = chosen_arch(parent.result)
    if (arch["resolution"], arch["in_channels"]) != (dataset.image_height, dataset.channels):
        return (f"job {parent_id}'s network takes {arch['resolution']}x{arch['resolution']}x{arch['in_channels']} "
                f"images; dataset {dataset.name!r} has {dataset.image_height}x{dataset.image_width}x"
                f"{dataset.channels}: choose a dataset of the parent's image size")
    return None


def adopt_parent(ctx: StageContext) -> dict[str, Any]:
    """Take the parent's architecture (with this dataset's classes) and weights."""
    parent_id = parent_of(ctx.params)
    if parent_id is None:
        raise StageFailed("stage adopt needs a parent_job in the pipeline's settings")
    with ctx.db.session() as session:
        parent = session.get(Job, parent_id)
        if parent is None:
            raise StageFailed(f"parent job {parent_id} no longer exists")
        arch_dict = dict(chosen_arch(parent.result))
        parent_accuracy = (parent.result.get("train") or {}).get("test_accuracy")
        parent_dataset = parent.dataset_name
    weights = ctx.settings.artifacts_dir / parent_id / "model.pt"
    if not weights.exists():
        raise StageFailed(f"parent job {parent_id}'s trained weights are gone ({weights.name}); re-run it")
    shutil.copyfile(weights, ctx.job_dir() / "parent.pt")
    num_classes = int(ctx.results["validate"]["num_classes"])
    classes_changed = int(arch_dict["num_classes"]) != num_classes
    arch_dict["num_classes"] = num_classes
    arch = Arch.from_dict(arch_dict)
    layout = job_layout(ctx)
    predicted = arch_latency_ms(arch, latency_model(ctx, layout))
    ctx.progress(1.0, f"fine-tuning job {parent_id}'s network (trained on {parent_dataset})")
    return {"arch": arch.to_dict(), "predicted_ms": round(predicted, 6), "holdout_accuracy": None,
            "parent_job": parent_id, "parent_dataset": parent_dataset, "parent_test_accuracy": parent_accuracy,
            "classifier_reinitialised": classes_changed}
