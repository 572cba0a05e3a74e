"""Celery tasks. They take ids, re-read the world from the database, and are
idempotent, because ``acks_late`` may deliver a message twice."""
from __future__ import annotations

from celery import Celery, shared_task

from automl_server.db.engine import get_database
from automl_server.jobs import stages

RUN_STAGE = "automl.run_stage"


def queue_for(stage_name: str, device_name: str) -> str:
    queue = stages.STAGES[stages.stage_index(stage_name)].queue
    return f"device.{device_name}" if queue == "device" else queue


def dispatch_stage(app: Celery, job_id: str, stage_name: str, device_name: str) -> None:
    """Send one stage to its queue. Call only after the job row is committed."""
    # Through the registered task (not send_task) so that an eager app runs it in-process.
    app.tasks[RUN_STAGE].apply_async(args=[job_id, stage_name, device_name], queue=queue_for(stage_name, device_name))


@shared_task(name=RUN_STAGE, bind=True, acks_late=True)
def run_stage(self, job_id: str, stage_name: str, device_name: str) -> str | None:  # type: ignore[no-untyped-def]
    from automl_server.celery_app import settings_of

    settings = settings_of(self.app)
    db = get_database(settings.resolved_database_url)
    next_stage = stages.run_stage(db, settings, job_id, stage_name)
    if next_stage is not None:
        dispatch_stage(self.app, job_id, next_stage, device_name)
    return next_stage
