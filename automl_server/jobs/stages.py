"""The stages of a job, in order, and the runner that executes one stage.

    validate -> profile -> search -> tune -> train -> export -> verify -> report

Each stage runs as its own Celery task on its queue and sends the next one
when it is done (a chain built as it goes, so a stage may also re-send itself
later while it waits for a device). The runner makes every delivery safe:

* idempotent: a stage recorded as done is skipped, a finished job left alone;
* leased: the task running a stage holds a lease on the job, renewed by its
  progress reports; a second delivery of another message finds the lease held
  and leaves, a re-delivery of the same message (its worker died, Celery's
  ``acks_late`` + ``reject_on_worker_lost``) or any delivery after the lease
  ran out takes the stage over and resumes it from its checkpoint;
* cancellable: progress reports raise JobCancelled once the user cancelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from automl_server.db.engine import Database
from automl_server.db.models import Job, JobState, utcnow
from automl_server.jobs import service
from automl_server.jobs.context import LEASE_S, Stage, StageContext, StageFailed, StageWait
from automl_server.jobs.deploy import export_model, verify_on_device
from automl_server.jobs.profile import profile_target
from automl_server.jobs.report import build_report
from automl_server.jobs.search_stage import search_architecture, tune_latency_loss
from automl_server.jobs.train import train_network
from automl_server.jobs.validate import validate_dataset
from automl_server.settings import Settings

__all__ = ["STAGES", "Dispatch", "StageContext", "StageFailed", "StageWait", "run_stage", "stage_index"]

STAGES: list[Stage] = [
    Stage("validate", "default", validate_dataset, "Check the dataset and fix the splits"),
    Stage("profile", "default", profile_target, "Measure the space's operators on the device"),
    Stage("search", "search", search_architecture, "ProxylessNAS search"),
    Stage("tune", "search", tune_latency_loss, "Tune the latency loss with Optuna"),
    Stage("train", "search", train_network, "Train the found network from scratch"),
    Stage("export", "search", export_model, "Export to ONNX (and TFLite)"),
    Stage("verify", "default", verify_on_device, "Measure the exported model on the device"),
    Stage("report", "default", build_report, "Write the report"),
]
STAGE_NAMES = tuple(s.name for s in STAGES)
WAITING = "waiting"  # lease owner of a stage that re-sent itself with a countdown


@dataclass(frozen=True)
class Dispatch:
    """What the task must send next: a stage, now or after ``countdown_s``."""

    stage: str
    countdown_s: float = 0.0


def stage_index(name: str) -> int:
    try:
        return STAGE_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}") from None


def last_stage_of(job: Job) -> int:
    """Index of the job's last stage (``params.stop_after`` ends a job early)."""
    stop_after = job.params.get("stop_after")
    return stage_index(stop_after) if stop_after else len(STAGES) - 1


def _take_lease(session: Any, job: Job, stage_name: str, owner: str) -> bool:
    """True when this delivery may run the stage; records a take-over of a lost one."""
    now = utcnow()
    held = job.stage == stage_name and job.lease_owner not in (None, WAITING, owner)
    if held and job.lease_until is not None and job.lease_until > now:
        return False  # a live worker runs it; this message is a duplicate
    lost = job.stage == stage_name and job.lease_owner not in (None, WAITING)
    if lost:
        job.recoveries += 1
        service.record_event(session, job, "log", f"stage {stage_name} resumed: its worker was lost",
                             stage=stage_name, data={"recoveries": job.recoveries})
    job.lease_owner = owner
    job.lease_until = now + timedelta(seconds=LEASE_S)
    return True


def _release(job: Job) -> None:
    job.lease_owner = None
    job.lease_until = None


def run_stage(db: Database, settings: Settings, job_id: str, stage_name: str, *, owner: str = "local",
              celery: Any = None) -> Dispatch | None:
    """Run one stage of a job; returns what to send next, or None."""
    index = stage_index(stage_name)
    stage = STAGES[index]
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or JobState(job.state).is_terminal:
            return None
        last = last_stage_of(job)
        following = Dispatch(STAGES[index + 1].name) if index < last else None
        if stage_name in job.result.get("stages_done", []):
            return following
        if job.cancel_requested:
            service.mark_cancelled(session, job)
            _release(job)
            return None
        fresh = not (job.stage == stage_name and job.lease_owner is not None)
        if not _take_lease(session, job, stage_name, owner):
            return None
        if fresh:
            service.start_stage(session, job, stage_name, index / (last + 1))
        params = {**job.params, "dataset": job.dataset_name, "device": job.device_name, "runtime": job.runtime,
                  "space": job.space, "pipeline": job.pipeline, "latency_target_ms": job.latency_target_ms,
                  "comparison_id": job.comparison_id}
        results = dict(job.result)
    ctx = StageContext(db, settings, job_id, stage_name, index, last + 1, owner, params, results, celery)
    try:
        output = stage.run(ctx)
    except StageWait as wait:
        with db.session() as session:
            job = session.get_one(Job, job_id)
            job.lease_owner = WAITING
            # The sweep re-sends the stage if the delayed message is lost with its worker.
            job.lease_until = utcnow() + timedelta(seconds=wait.seconds + LEASE_S)
        return Dispatch(stage_name, wait.seconds)
    except service.JobCancelled:
        with db.session() as session:
            job = session.get_one(Job, job_id)
            service.mark_cancelled(session, job)
            _release(job)
        return None
    except StageFailed as exc:
        with db.session() as session:
            job = session.get_one(Job, job_id)
            service.fail(session, job, str(exc))
            _release(job)
        return None
    except Exception as exc:  # an unexpected bug must still end the job visibly
        with db.session() as session:
            job = session.get_one(Job, job_id)
            service.fail(session, job, f"internal error in stage {stage_name}: {exc!r}")
            _release(job)
        raise
    with db.session() as session:
        job = session.get_one(Job, job_id)
        if JobState(job.state).is_terminal:
            return None
        # Assign new dicts: SQLAlchemy does not track in-place JSON mutation.
        job.result = {**job.result, stage_name: output, "stages_done": [*job.result.get("stages_done", []), stage_name]}
        _release(job)
        if following is None:
            service.succeed(session, job)
        else:
            job.stage = following.stage  # queued; its start_stage records the transition
    return following


def orphaned_stages(db: Database) -> list[tuple[str, str, str]]:
    """(job id, stage, device) of running jobs whose stage lease ran out: their
    worker or their delayed message was lost. ``jobs.tasks.recover`` re-sends them."""
    now = utcnow()
    with db.session() as session:
        rows = session.execute(
            select(Job.id, Job.stage, Job.device_name, Job.lease_until, Job.lease_owner)
            .where(Job.state == JobState.RUNNING.value)
        ).all()
    # A stage queued behind other work holds no lease (its message is on the
    # broker); only a lease that ran out means something was lost.
    return [(job_id, stage, device) for job_id, stage, device, until, _owner in rows
            if stage and until is not None and until < now]
