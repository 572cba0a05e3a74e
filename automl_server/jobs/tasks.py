"""Celery tasks. They take ids, re-read the world from the database, and are
idempotent, because ``acks_late`` may deliver a message twice."""
from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task, shared_task
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import func, select

from automl_server.db.engine import Database, StorageError, database_unreachable, get_database, wait_until_reachable
from automl_server.db.models import Job, JobEvent
from automl_server.jobs import service, stages
from automl_server.jobs.context import LOST_MESSAGE
from device_agents.protocol import device_queue

RUN_STAGE = "automl.run_stage"
RECOVER = "automl.recover_stages"
log = logging.getLogger(__name__)


def queue_for(stage_name: str, device_name: str) -> str:
    queue = stages.get_stage(stage_name).queue
    return device_queue(device_name) if queue == "device" else queue


def dispatch_stage(app: Celery, job_id: str, stage_name: str, device_name: str, countdown_s: float = 0.0) -> None:
    """Send one stage to its queue. Call only after the job row is committed."""
    # Through the registered task (not send_task) so that an eager app runs it in-process.
    options: dict[str, Any] = {"queue": queue_for(stage_name, device_name)}
    if countdown_s > 0:
        if app.conf.task_always_eager:
            time.sleep(countdown_s)  # eager (tests): no broker to hold the message
        else:
            options["countdown"] = countdown_s
    app.tasks[RUN_STAGE].apply_async(args=(job_id, stage_name, device_name), **options)


def last_event_id(db: Database, job_id: str) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)) or 0)


def notify_state_changes(app: Celery, db: Database, job_id: str, after_event_id: int) -> None:
    """Send the job's webhook for every state event after ``after_event_id``."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or not job.webhook_url:
            return
        ids = list(session.scalars(select(JobEvent.id).where(
            JobEvent.job_id == job_id, JobEvent.id > after_event_id, JobEvent.kind == "state").order_by(JobEvent.id)))
    if ids:
        from automl_server.webhooks import notify

        notify(app, job_id, ids)


@shared_task(name=RUN_STAGE, bind=True, acks_late=True)
def run_stage(self: Task[Any, Any], job_id: str, stage_name: str, device_name: str) -> str | None:
    from automl_server.settings import settings_of

    settings = settings_of(self.app)
    db = get_database(settings.resolved_database_url)
    try:
        before = last_event_id(db, job_id)
        try:
            following = stages.run_stage(db, settings, job_id, stage_name, owner=self.request.id or "eager",
                                         celery=self.app)
        finally:
            notify_state_changes(self.app, db, job_id, before)
    except StorageError as exc:
        # The database went away (a restart) before or after the stage itself ran: once it is back, the
        # stage is sent again (idempotent: done stages are skipped); the message is not simply dropped.
        if not (database_unreachable(exc) and wait_until_reachable(db, stages.DATABASE_WAIT_S)):
            raise
        log.warning("job %s: stage %s could not reach the database; sending it again", job_id, stage_name)
        dispatch_stage(self.app, job_id, stage_name, device_name, 1.0)
        return stage_name
    if following is not None:
        dispatch_stage(self.app, job_id, following.stage, device_name, following.countdown_s)
        return following.stage
    return None


@shared_task(name=RECOVER, bind=True)
def recover_stages(self: Task[Any, Any]) -> list[str]:
    """Re-send the stages whose lease ran out (their worker died with the message),
    and every waiting stage when the broker lost its messages."""
    from automl_server.settings import settings_of

    db = get_database(settings_of(self.app).resolved_database_url)
    return recover(self.app, db)


# A key the recovery sweep keeps on a Redis broker, beside its queues. Redis without
# persistence comes back from a restart empty (so does one flushed, or a failover to
# an empty replica): the key is gone with every message that waited there, and the
# sweep re-sends the stages those messages would have run. A Redis that kept its data
# (``appendonly yes``) keeps the key too, so its restart re-sends nothing. (The key,
# rather than Redis's ``run_id``, which changes on every restart: a restart that kept
# the messages needs no duplicates, and the key also survives a restart of `automl
# serve` itself, whose sweep would not know the run_id from before.)
BROKER_MARKER = "automl:broker-marker"


def _redis_broker(app: Celery) -> Any:
    """A client of the broker when it is Redis, else None. The embedded default broker
    (kombu's SQLAlchemy transport on SQLite) keeps its messages in a file that a restart
    keeps, and RabbitMQ's queues that Celery declares are durable (its messages
    persistent): neither needs this."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def broker_lost_messages(app: Celery) -> bool:
    """True when the broker is a Redis that lost its data since the sweep last
    marked it (call ``mark_broker`` once the lost stages are sent again)."""
    client = _redis_broker(app)
    if client is None:
        return False
    try:
        return not client.exists(BROKER_MARKER)
    finally:
        client.close()


def mark_broker(app: Celery) -> None:
    client = _redis_broker(app)
    if client is None:
        return
    try:
        server = client.info("server")
        client.set(BROKER_MARKER, f"run_id {server.get('run_id')} marked at {time.time():.0f}")
    finally:
        client.close()


def recover(app: Celery, db: Database) -> list[str]:
    """Re-send what was lost: every waiting stage when the broker came back empty
    (duplicates are harmless: stages are idempotent and leased), and the stages whose
    lease ran out. Returns the ids of the jobs whose stage was sent again."""
    sent = []
    if broker_lost_messages(app):
        waiting = stages.unleased_stages(db)
        if waiting:
            log.warning("the broker (%s) came back empty: sending the waiting stages of %d job(s) again",
                        maybe_sanitize_url(str(app.conf.broker_url)), len(waiting))
        for job_id, stage_name, device_name in waiting:
            log.warning("job %s: the broker lost the message of stage %s; sending it again", job_id, stage_name)
            dispatch_stage(app, job_id, stage_name, device_name)
            with db.session() as session:
                job = session.get(Job, job_id)
                if job is not None:
                    service.record_event(session, job, "warning", LOST_MESSAGE, stage=stage_name,
                                         data={"broker_restarted": True})
            sent.append(job_id)
        # Marked only once every stage is sent: a sweep that failed half-way sends them all again.
        mark_broker(app)
    for job_id, stage_name, device_name in stages.orphaned_stages(db):
        if job_id in sent:
            continue
        log.warning("job %s: stage %s lost its worker; sending it again", job_id, stage_name)
        dispatch_stage(app, job_id, stage_name, device_name)
        sent.append(job_id)
    return sent
