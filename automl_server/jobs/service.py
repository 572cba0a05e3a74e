"""The job state machine and its timeline, on a SQLAlchemy session.

    queued -> running (stage X, progress) -> succeeded | failed | cancelled

Every transition writes a JobEvent, so the timeline the UI and the API show is
the same record the state came from. Nothing here knows about Flask or Celery.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from automl_server.db.models import Job, JobEvent, JobState, utcnow


class JobCancelled(Exception):
    """Raised inside a stage when the user asked to cancel the job."""


class InvalidTransition(Exception):
    """A transition the state machine does not allow (e.g. cancelling a finished job)."""


def record_event(
    session: Session, job: Job, kind: str, message: str, *, stage: str | None = None, data: dict[str, Any] | None = None
) -> JobEvent:
    event = JobEvent(job_id=job.id, kind=kind, stage=stage, message=message, data=data or {})
    session.add(event)
    session.flush()
    return event


def start_stage(session: Session, job: Job, stage: str, progress: float) -> None:
    if JobState(job.state).is_terminal:
        raise InvalidTransition(f"job {job.id} is {job.state}; it cannot start stage {stage}")
    job.state = JobState.RUNNING.value
    job.stage = stage
    job.progress = max(job.progress, progress)
    job.started_at = job.started_at or utcnow()
    record_event(session, job, "state", f"stage {stage} started", stage=stage, data={"state": job.state})


def set_progress(
    session: Session, job: Job, progress: float, message: str, data: dict[str, Any] | None = None
) -> None:
    job.progress = min(1.0, max(job.progress, progress))
    payload = {"progress": round(job.progress, 4), **(data or {})}
    record_event(session, job, "progress", message, stage=job.stage, data=payload)


def succeed(session: Session, job: Job) -> None:
    """Succeeded: the job's network is trained and exported. When its measured latency
    missed the target (``result.target_met`` false, jobs/promise.py) the state stays
    ``succeeded`` and the event says the miss, with ``target_met: false`` in its data
    (and so in the webhook)."""
    job.state = JobState.SUCCEEDED.value
    job.progress = 1.0
    job.finished_at = utcnow()
    data: dict[str, Any] = {"state": job.state}
    message = "job succeeded"
    if "target_met" in (job.result or {}):
        data["target_met"] = bool(job.result["target_met"])
        if not data["target_met"]:
            detail = str((job.result.get("verify") or {}).get("missed") or "latency target missed")
            message = f"job succeeded, but {detail}"
    record_event(session, job, "state", message, stage=job.stage, data=data)


def fail(session: Session, job: Job, error: str) -> None:
    job.state = JobState.FAILED.value
    job.error = error
    job.finished_at = utcnow()
    record_event(session, job, "state", f"job failed: {error}", stage=job.stage, data={"state": job.state, "error": error})


def mark_cancelled(session: Session, job: Job) -> None:
    job.state = JobState.CANCELLED.value
    job.finished_at = utcnow()
    record_event(session, job, "state", "job cancelled", stage=job.stage, data={"state": job.state})


def request_cancel(session: Session, job: Job) -> None:
    """Cancel a queued job now; ask a running one to stop at its next checkpoint."""
    state = JobState(job.state)
    if state.is_terminal:
        raise InvalidTransition(f"job {job.id} already {job.state}; only queued or running jobs can be cancelled")
    job.cancel_requested = True
    if state is JobState.QUEUED:
        mark_cancelled(session, job)
    else:
        record_event(session, job, "state", "cancellation requested", stage=job.stage, data={"cancel_requested": True})
