"""Stages whose message the broker lost are sent again, and a stage delivered
twice still runs once.

A Redis broker without persistence comes back from a restart empty: the message
of every stage that waited on it (a queued job's first stage, a running job's
next stage queued behind other work, a countdown) is gone, and nobody holds a
lease that would run out. The recovery sweep (``jobs.tasks.recover``) notices the
broker came back empty and re-sends those stages; the real restart, with
`automl serve`, is in test_fault_processes.py. The re-sent stages may duplicate a
message that survived: the runner must then still run each stage once."""
from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, text

from automl_server.celery_app import make_celery
from automl_server.db.engine import Database, get_database
from automl_server.db.migrate import upgrade
from automl_server.db.models import Job, JobEvent, utcnow
from automl_server.jobs import stages, tasks
from automl_server.jobs.context import Stage, StageContext
from automl_server.settings import Settings
from tests.conftest import REDIS_URL, _forget_database, make_settings, need_service

RUNS: list[tuple[str, str]] = []  # (job id, stage) of every run of the test stages


def _count(ctx: StageContext) -> dict[str, Any]:
    RUNS.append((ctx.job_id, ctx.stage))
    return {"ran": True}


PLAN = ["t-first", "t-next", "t-last"]


@pytest.fixture(autouse=True)
def test_stages() -> Iterator[None]:
    """Three cheap stages: the first on the default queue, the others on the search queue."""
    RUNS.clear()
    stages.register_stage(Stage("t-first", "default", _count))
    stages.register_stage(Stage("t-next", "search", _count))
    stages.register_stage(Stage("t-last", "search", _count))
    yield
    for name in PLAN:
        stages.unregister_stage(name)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
    db = get_database(url)
    upgrade(db)
    yield db
    _forget_database(url)


def make_job(db: Database, state: str = "queued", stage: str | None = None, lease_owner: str | None = None,
             lease_s: float = 0.0, done: tuple[str, ...] = ()) -> str:
    with db.session() as session:
        job = Job(dataset_name="digits", device_name="cpu-1", runtime="onnxruntime", space="tiny",
                  pipeline="standard", params={}, state=state, stage=stage, lease_owner=lease_owner,
                  lease_until=utcnow() + timedelta(seconds=lease_s) if lease_owner else None,
                  result={"plan": PLAN, "stages_done": list(done)})
        session.add(job)
        session.flush()
        return job.id


def timeline(db: Database, job_id: str) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)
                                    .order_by(JobEvent.id)))


def queued_messages(client: redis.Redis, queue: str) -> list[list[Any]]:
    """The (job id, stage, device) of every run_stage message waiting on a Redis queue, oldest
    first (kombu pushes on the left and pops on the right)."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    return [json.loads(base64.b64decode(m["body"]))[0] for m in messages]


@pytest.fixture
def redis_settings(tmp_path: Path, sqlite_db: Database) -> Iterator[tuple[Settings, redis.Redis]]:
    url = need_service(REDIS_URL, "AUTOML_TEST_REDIS_URL")
    client = redis.Redis.from_url(url)
    client.flushdb()  # this test's own database (12 in the helpers' runs): empty, like a Redis just restarted
    yield make_settings(tmp_path, str(sqlite_db.engine.url), broker_url=url), client
    client.flushdb()
    client.close()


@pytest.mark.redis
def test_a_redis_broker_that_came_back_empty_gets_every_waiting_stage_again(redis_settings, sqlite_db):
    settings, client = redis_settings
    celery = make_celery(settings)
    db = sqlite_db
    queued = make_job(db)  # its first stage's message was on the broker
    behind = make_job(db, "running", "t-next", done=("t-first",))  # waiting behind another job's work
    counting_down = make_job(db, "running", "t-next", stages.WAITING, 2.0, done=("t-first",))
    running = make_job(db, "running", "t-next", "task-A", 100.0, done=("t-first",))  # a worker runs it
    finished = make_job(db, "succeeded", "t-last", done=tuple(PLAN))

    before = time.time()
    assert tasks.recover(celery, db) == [queued, behind, counting_down]
    after = time.time()

    assert queued_messages(client, "default") == [[queued, "t-first", "cpu-1"]]
    assert queued_messages(client, "search") == [[behind, "t-next", "cpu-1"], [counting_down, "t-next", "cpu-1"]]
    for job_id in (queued, behind, counting_down):
        assert tasks.LOST_MESSAGE in timeline(db, job_id)
    for job_id in (running, finished):
        assert tasks.LOST_MESSAGE not in timeline(db, job_id)

    # A stage that sent work to a device's queue before the loss sends it again (profile,
    # schedule, verify, device fine-tune ask this of their context); work sent after it waits.
    def lost_since(job_id: str, sent_at: float) -> bool:
        return StageContext(db, settings, job_id, "t-next", 1, 3, "task-B").broker_lost_since(sent_at)

    assert lost_since(counting_down, before) and not lost_since(counting_down, after)
    assert not lost_since(running, before)

    # The same broker, its messages kept: the next sweeps send nothing.
    assert tasks.recover(celery, db) == []
    assert client.llen("default") == 1 and client.llen("search") == 2

    # Emptied again (as a restart without persistence does): sent again.
    client.flushdb()
    assert tasks.recover(celery, db) == [queued, behind, counting_down]
    assert timeline(db, queued).count(tasks.LOST_MESSAGE) == 2


def test_the_embedded_broker_keeps_its_messages_and_nothing_is_sent_again(tmp_path, sqlite_db):
    # The default broker (kombu's SQLAlchemy transport on SQLite) keeps messages in a file.
    settings = make_settings(tmp_path, str(sqlite_db.engine.url), broker_url="")
    queued = make_job(sqlite_db)

    assert tasks.recover(make_celery(settings), sqlite_db) == []
    assert tasks.LOST_MESSAGE not in timeline(sqlite_db, queued)


def run(db: Database, settings: Settings, job_id: str, stage: str, owner: str) -> str | None:
    following = stages.run_stage(db, settings, job_id, stage, owner=owner)
    return following.stage if following else None


def test_a_duplicate_of_a_queued_jobs_first_stage_runs_it_once(tmp_path, sqlite_db):
    settings = make_settings(tmp_path, str(sqlite_db.engine.url))
    job_id = make_job(sqlite_db)

    assert run(sqlite_db, settings, job_id, "t-first", "message-1") == "t-next"
    # The re-sent copy, while the next stage still waits on the broker: the next stage is sent
    # again (its message may be the one lost), the first stage does not run again.
    assert run(sqlite_db, settings, job_id, "t-first", "message-2") == "t-next"
    assert run(sqlite_db, settings, job_id, "t-next", "message-3") == "t-last"
    # Once the next stage has run, a late copy of an earlier one ends at once.
    assert run(sqlite_db, settings, job_id, "t-first", "message-4") is None
    assert run(sqlite_db, settings, job_id, "t-next", "message-5") == "t-last"  # t-last has not started
    assert run(sqlite_db, settings, job_id, "t-last", "message-6") is None
    assert run(sqlite_db, settings, job_id, "t-next", "message-7") is None

    assert RUNS == [(job_id, "t-first"), (job_id, "t-next"), (job_id, "t-last")]
    assert timeline(sqlite_db, job_id).count("stage t-first started") == 1


def test_a_duplicate_of_a_stage_queued_behind_other_work_runs_it_once(tmp_path, sqlite_db):
    settings = make_settings(tmp_path, str(sqlite_db.engine.url))
    job_id = make_job(sqlite_db, "running", "t-next", done=("t-first",))

    assert run(sqlite_db, settings, job_id, "t-next", "message-1") == "t-last"
    assert run(sqlite_db, settings, job_id, "t-next", "message-2") == "t-last"
    assert run(sqlite_db, settings, job_id, "t-last", "message-3") is None
    assert run(sqlite_db, settings, job_id, "t-next", "message-4") is None

    assert RUNS == [(job_id, "t-next"), (job_id, "t-last")]
    with sqlite_db.session() as session:
        assert session.get_one(Job, job_id).state == "succeeded"


@pytest.mark.postgres
def test_two_copies_taken_by_two_workers_at_once_run_the_stage_once(tmp_path, database_url, monkeypatch):
    """The first copy has read the job and is about to take the lease when the second arrives."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises the two deliveries already")
    db = get_database(database_url)
    settings = make_settings(tmp_path, database_url)
    job_id = make_job(db, "running", "t-next", done=("t-first",))
    first_read, go = threading.Event(), threading.Event()
    take_lease = stages._take_lease

    def paused_take_lease(session: Any, job: Job, stage_name: str, owner: str, lease_s: float) -> bool:
        if owner == "worker-1":
            first_read.set()
            assert go.wait(60)
        return take_lease(session, job, stage_name, owner, lease_s)

    monkeypatch.setattr(stages, "_take_lease", paused_take_lease)
    results: dict[str, str | None] = {}
    one = threading.Thread(target=lambda: results.update(one=run(db, settings, job_id, "t-next", "worker-1")))
    two = threading.Thread(target=lambda: results.update(two=run(db, settings, job_id, "t-next", "worker-2")))
    one.start()
    assert first_read.wait(60)
    two.start()
    # The second waits for the first's decision (a row lock), or, without one, runs the stage itself.
    deadline = time.monotonic() + 60
    while two.is_alive() and time.monotonic() < deadline:
        with db.engine.connect() as conn:
            if conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND datname = current_database()")):
                break
    go.set()
    one.join(60)
    two.join(60)

    assert RUNS == [(job_id, "t-next")]
    assert results == {"one": "t-last", "two": None}
