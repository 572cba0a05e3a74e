"""The stages of a job and the runner that executes one stage idempotently.

A stage is a function ``(StageContext) -> dict`` registered in ``STAGES`` in
execution order, with the Celery queue it runs on. Later capabilities
(profile, search, train, deploy) register themselves here; the runner, the
state machine and the API stay as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy import select

from automl_server.datasets.ingest import DatasetRejected, UploadLimits, load_arrays
from automl_server.db.engine import Database
from automl_server.db.models import Artifact, Dataset, Job, JobState
from automl_server.files import sha256_of
from automl_server.jobs import service
from automl_server.settings import Settings


@dataclass
class StageContext:
    db: Database
    settings: Settings
    job_id: str
    stage: str
    stage_index: int

    def progress(self, fraction: float, message: str, **data: Any) -> None:
        """Report progress within this stage; raises JobCancelled if the user cancelled."""
        overall = (self.stage_index + min(max(fraction, 0.0), 1.0)) / len(STAGES)
        with self.db.session() as session:
            job = session.get_one(Job, self.job_id)
            if job.cancel_requested:
                raise service.JobCancelled()
            service.set_progress(session, job, overall, message, data)

    def job_dir(self) -> Path:
        directory = self.settings.artifacts_dir / self.job_id
        directory.mkdir(parents=True, exist_ok=True)
        return directory


@dataclass(frozen=True)
class Stage:
    name: str
    queue: str  # "default", "search" or "device" (the job's device queue)
    run: Callable[[StageContext], dict[str, Any]]


class StageFailed(Exception):
    """A stage found a problem the user must fix; the message says what."""


def validate_dataset(ctx: StageContext) -> dict[str, Any]:
    """Re-read the stored dataset, check it is intact, compute statistics and a
    fixed train / held-out split that the search and training stages share."""
    with ctx.db.session() as session:
        job = session.get_one(Job, ctx.job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise StageFailed(f"dataset {job.dataset_name!r} was deleted; submit the job again with another dataset")
        stored_path = ctx.settings.data_dir / dataset.file_path
        expected_sha, fmt, seed = dataset.sha256, dataset.format, int(job.params.get("seed", 0))
    if not stored_path.exists():
        raise StageFailed(f"the file of dataset {job.dataset_name!r} is missing from {stored_path}")
    ctx.progress(0.1, "checking dataset checksum")
    if sha256_of(stored_path) != expected_sha:
        raise StageFailed(f"dataset {job.dataset_name!r} changed on disk since upload (SHA-256 mismatch)")
    ctx.progress(0.3, "decoding images")
    limits = UploadLimits(
        max_upload_bytes=ctx.settings.max_upload_bytes,
        max_uncompressed_bytes=ctx.settings.max_uncompressed_bytes,
        max_entries=ctx.settings.max_archive_entries,
    )
    try:
        x, y, classes = load_arrays(stored_path, fmt, limits)
    except DatasetRejected as exc:
        raise StageFailed(f"dataset {job.dataset_name!r} no longer validates: {exc.detail}") from exc
    ctx.progress(0.7, "computing statistics", samples=int(len(y)))
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    counts = np.bincount(y, minlength=len(classes))
    # Imported here: the engine pulls in torch, which the web process does not need.
    from automl_server.engine.data import stratified_split

    train_idx, holdout_idx = stratified_split(y, holdout=0.2, seed=seed)
    arrays_path = ctx.job_dir() / "dataset.npz"
    tmp_path = arrays_path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp_path, x=x, y=y, classes=np.array(classes), train_idx=train_idx, holdout_idx=holdout_idx
    )
    tmp_path.replace(arrays_path)  # atomic: a re-run never leaves half a file
    stats = {
        "num_samples": int(len(y)),
        "num_classes": len(classes),
        "class_counts": {name: int(n) for name, n in zip(classes, counts)},
        "image_shape": [int(d) for d in x.shape[1:]],
        "pixel_mean": [round(float(v), 6) for v in pixels.mean(axis=0)],
        "pixel_std": [round(float(v), 6) for v in pixels.std(axis=0)],
        "train_samples": int(len(train_idx)),
        "holdout_samples": int(len(holdout_idx)),
        "imbalance_ratio": round(float(counts.max() / max(counts.min(), 1)), 4),
    }
    with ctx.db.session() as session:
        relative = str(arrays_path.relative_to(ctx.settings.data_dir))
        existing = session.scalar(select(Artifact).where(Artifact.job_id == ctx.job_id, Artifact.path == relative))
        if existing is None:
            existing = Artifact(job_id=ctx.job_id, kind="arrays", path=relative, size_bytes=0, sha256="")
            session.add(existing)
        existing.size_bytes = arrays_path.stat().st_size
        existing.sha256 = sha256_of(arrays_path)
        job = session.get_one(Job, ctx.job_id)
        service.record_event(session, job, "metric", "dataset statistics", stage=ctx.stage, data=stats)
    return stats


STAGES: list[Stage] = [Stage("validate", "default", validate_dataset)]


def stage_index(name: str) -> int:
    for index, stage in enumerate(STAGES):
        if stage.name == name:
            return index
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def run_stage(db: Database, settings: Settings, job_id: str, stage_name: str) -> str | None:
    """Run one stage of a job; returns the next stage to dispatch, or None.

    Idempotent, so that Celery's late acknowledgement may deliver it twice: a
    stage already recorded as done is skipped, a finished job is left alone.
    """
    index = stage_index(stage_name)
    stage = STAGES[index]
    next_stage = STAGES[index + 1].name if index + 1 < len(STAGES) else None
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or JobState(job.state).is_terminal:
            return None
        if stage_name in job.result.get("stages_done", []):
            return next_stage
        if job.cancel_requested:
            service.mark_cancelled(session, job)
            return None
        service.start_stage(session, job, stage_name, index / len(STAGES))
    ctx = StageContext(db, settings, job_id, stage_name, index)
    try:
        output = stage.run(ctx)
    except service.JobCancelled:
        with db.session() as session:
            service.mark_cancelled(session, session.get_one(Job, job_id))
        return None
    except StageFailed as exc:
        with db.session() as session:
            service.fail(session, session.get_one(Job, job_id), str(exc))
        return None
    except Exception as exc:  # an unexpected bug must still end the job visibly
        with db.session() as session:
            service.fail(session, session.get_one(Job, job_id), f"internal error in stage {stage_name}: {exc!r}")
        raise
    with db.session() as session:
        job = session.get_one(Job, job_id)
        # Assign new dicts: SQLAlchemy does not track in-place JSON mutation.
        job.result = {**job.result, stage_name: output, "stages_done": [*job.result.get("stages_done", []), stage_name]}
        if next_stage is None:
            service.succeed(session, job)
    return next_stage
