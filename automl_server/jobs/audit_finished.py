"""The privacy audit of a job that has already finished (``automl audit JOB_ID``).

Runs the audit stage's function on the job's stored weights and splits, in
this process, against the service's own database and artifacts folder; then
records the result as the job's ``audit`` output and, when the job has a
report, its ``privacy`` section. The job's state, its trained model and every
other stage's output stay as they were.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from automl_server.db.engine import Database
from automl_server.db.models import Job, JobState
from automl_server.jobs.audit import audit_privacy
from automl_server.jobs.context import StageContext
from automl_server.settings import Settings


class AuditRefused(ValueError):
    """The job cannot be audited (unknown, not finished, never trained); the message says why."""


@dataclass
class FinishedJobContext(StageContext):
    """A stage context for a finished job: progress goes to ``report`` instead of the
    job's progress (a finished job's progress stays at its end), cancel is Ctrl-C."""

    report: Callable[[float, str], None] | None = None

    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        if self.report is not None:
            self.report(fraction, message)

    def check_cancelled(self, every_s: float = 1.0) -> None:
        return None


def audit_finished_job(db: Database, settings: Settings, job_id: str, overrides: dict[str, Any],
                       report: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Audit a finished job with its own settings, ``overrides`` on top; returns the privacy section."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise AuditRefused(f"no job {job_id!r}; give a job id from `automl jobs` or GET /api/v1/jobs")
        if not JobState(job.state).is_terminal:
            raise AuditRefused(f"job {job_id} is still {job.state}; audit it once it has finished")
        if "train" not in job.result:
            raise AuditRefused(f"job {job_id} has no trained network to audit (it {job.state} "
                               f"{'at stage ' + job.stage if job.stage else 'before training'})")
        given = job.params.get("privacy_audit")
        base = {"enabled": given} if isinstance(given, bool) else dict(given or {})
        params = {**job.params, "pipeline": job.pipeline, "privacy_audit": {**base, **overrides, "enabled": True}}
        results = dict(job.result)
    ctx = FinishedJobContext(db=db, settings=settings, job_id=job_id, stage="audit", stage_index=0, stage_count=1,
                             lease_owner="automl-audit", params=params, results=results, report=report)
    section = audit_privacy(ctx)
    with db.session() as session:
        job = session.get_one(Job, job_id, with_for_update=True)
        updated = {**job.result, "audit": section}  # a new dict: JSON columns do not track in-place changes
        if isinstance(updated.get("report"), dict):
            updated["report"] = {**updated["report"], "privacy": section}
            path = settings.artifacts_dir / job_id / "report.json"
            if path.exists():
                path.write_text(json.dumps(updated["report"], indent=2))
        job.result = updated
    return section
