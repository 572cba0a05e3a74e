"""What a stage of a job sees: the job's settings, its earlier stages' outputs,
progress reporting (which also notices a cancellation) and the job's directory of artifacts.

A stage is a function ``(StageContext) -> dict`` (its output, stored in
``job.result[stage]``). It may raise ``StageFailed`` (the user must fix
something; the message says what), ``StageWait`` (come back later without
holding a worker, e.g. while a device measures) or ``JobCancelled`` (raised
for it by ``progress`` / ``check_cancelled``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from automl_server.db.engine import Database
from automl_server.db.models import Artifact, Job, JobEvent
from automl_server.files import sha256_of
from automl_server.jobs import service
from automl_server.settings import Settings

# The warning the recovery sweep records on a job whose waiting stage it sent again
# because the broker came back empty (jobs.tasks.recover).
LOST_MESSAGE = "the broker restarted and lost this stage's message; sent again"


class StageFailed(Exception):
    """A stage found a problem the user must fix; the message says what."""


class StageWait(Exception):
    """Come back in ``seconds``: the stage waits for work elsewhere (a device)
    without blocking a worker. The runner re-sends the stage with a countdown."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.message = message


@dataclass
class StageContext:
    db: Database
    settings: Settings
    job_id: str
    stage: str
    stage_index: int
    stage_count: int
    lease_owner: str
    params: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    celery: Any = None  # the Celery app, for stages that send work to devices
    # A training stage's share of this machine's cores (device_agents.cores): every
    # check_cancelled, i.e. every weight step, pauses while the local agent measures.
    cores: Any = None
    _last_check: float = 0.0

    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        """Report progress within this stage (0..1), with an ETA of the stage
        when known; raises JobCancelled if the user cancelled. (The lease is kept by the
        stage's heartbeat, jobs/lease.py, not by these calls.)"""
        overall = (self.stage_index + min(max(fraction, 0.0), 1.0)) / self.stage_count
        payload = dict(data)
        payload["stage_progress"] = round(min(max(fraction, 0.0), 1.0), 4)
        if eta_s is not None:
            payload["eta_s"] = round(max(eta_s, 0.0), 1)
        with self.db.session() as session:
            job = session.get_one(Job, self.job_id)
            if job.cancel_requested:
                raise service.JobCancelled()
            service.set_progress(session, job, overall, message, payload)
        self._last_check = time.monotonic()

    def event(self, kind: str, message: str, **data: Any) -> None:
        """A metric or log entry on the job's timeline."""
        with self.db.session() as session:
            job = session.get_one(Job, self.job_id)
            service.record_event(session, job, kind, message, stage=self.stage, data=data)

    def event_once(self, kind: str, message: str, **data: Any) -> None:
        """``event``, unless this stage's timeline holds one of that kind and message already:
        for reports that a resumed stage may repeat (an epoch reported, then the worker lost
        or the database's answer to the commit lost, before its checkpoint was written)."""
        with self.db.session() as session:
            if session.scalar(select(JobEvent.id).where(
                    JobEvent.job_id == self.job_id, JobEvent.stage == self.stage, JobEvent.kind == kind,
                    JobEvent.message == message).limit(1)) is not None:
                return
            job = session.get_one(Job, self.job_id)
            service.record_event(session, job, kind, message, stage=self.stage, data=data)

    def check_cancelled(self, every_s: float = 1.0) -> None:
        """Cheap to call in inner loops: looks at the database at most every ``every_s``
        (and, in a training stage, pauses while the machine's agent measures)."""
        if self.cores is not None:
            self.cores.step()
        now = time.monotonic()
        if now - self._last_check < every_s:
            return
        self._last_check = now
        # Only reads (no write lock on SQLite): the lease is the heartbeat's (jobs/lease.py).
        with self.db.read_session() as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise service.JobCancelled()

    def broker_lost_since(self, sent_at: float | None) -> bool:
        """Whether the broker came back empty after ``sent_at`` (a ``time.time()``), as the
        recovery sweep recorded on this stage: work the stage sent to a device's queue
        before then was lost with it, and must be sent again now, not after its timeout."""
        if not sent_at:
            return False
        with self.db.session() as session:
            return session.scalar(select(JobEvent.id).where(
                JobEvent.job_id == self.job_id, JobEvent.stage == self.stage, JobEvent.kind == "warning",
                JobEvent.message == LOST_MESSAGE,
                JobEvent.created_at > datetime.fromtimestamp(sent_at, timezone.utc)).limit(1)) is not None

    def job_dir(self) -> Path:
        directory = self.settings.artifacts_dir / self.job_id
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def store_artifact(self, kind: str, path: Path) -> dict[str, Any]:
        """Record (or refresh) a file of the job directory as a downloadable artifact."""
        relative = str(path.relative_to(self.settings.data_dir))
        with self.db.session() as session:
            artifact = session.scalar(select(Artifact).where(Artifact.job_id == self.job_id,
                                                             Artifact.path == relative))
            if artifact is None:
                artifact = Artifact(job_id=self.job_id, kind=kind, path=relative, size_bytes=0, sha256="")
                session.add(artifact)
            artifact.kind = kind
            artifact.size_bytes = path.stat().st_size
            artifact.sha256 = sha256_of(path)
            session.flush()
            return {"id": artifact.id, "kind": kind, "size_bytes": artifact.size_bytes, "sha256": artifact.sha256}


@dataclass(frozen=True)
class Stage:
    name: str
    queue: str  # "default", "search" or "device" (the job's device queue)
    run: Callable[[StageContext], dict[str, Any]]
    title: str = ""
