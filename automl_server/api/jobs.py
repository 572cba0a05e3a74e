"""/api/v1/jobs: long-running jobs as operation resources (202, poll, cancel)."""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from flask import Response, request, stream_with_context
from pydantic import Field
from sqlalchemy import Row, Text, cast, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.pagination import bad_token, decode_token, encode_token, newest_first_rows
from automl_server.api.problems import ProblemError, not_found
from automl_server.api.schemas import (
    JOB_STATES,
    Strict,
    JobCreate,
    JobEventList,
    JobEventOut,
    JobLinks,
    JobList,
    JobListQuery,
    JobOut,
    PageQuery,
    one_of,
)
from automl_server.db.engine import StorageError
from automl_server.db.models import Device, Job, JobEvent, JobState
from automl_server.jobs import service
from automl_server.jobs.stages import plan_of
from automl_server.jobs.submit import InvalidRequest, UnknownReference, request_of, submit_job
from automl_server.jobs.submit import fingerprint as submitted_fingerprint
from automl_server.jobs.tasks import dispatch_stage
from automl_server.service_state import state

_MAX_KEY_LENGTH = 200


def to_out(job: Job | Row[Any] | SimpleNamespace, *, with_secret: bool = False) -> JobOut:
    """The operation resource of a job (an ORM object or a row of the jobs table).
    Built without validation (model_construct): every value comes typed from the
    database, and validating 50 of them was a third of a list's time."""
    base = f"/api/v1/jobs/{job.id}"
    return JobOut.model_construct(
        recoveries=job.recoveries or 0, comparison_id=job.comparison_id, rerun_of=job.rerun_of,
        webhook_url=job.webhook_url, webhook_secret=job.webhook_secret if with_secret else None,
        id=job.id, state=one_of(job.state, JOB_STATES), stage=job.stage, progress=round(job.progress, 4),
        done=JobState(job.state).is_terminal, error=job.error, dataset_id=job.dataset_id,
        dataset_name=job.dataset_name, device_name=job.device_name, runtime=job.runtime, space=job.space,
        pipeline=job.pipeline, latency_target_ms=job.latency_target_ms, params=job.params, result=job.result,
        cancel_requested=job.cancel_requested, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at,
        links=JobLinks.model_construct(self=base, events=f"{base}/events", stream=f"{base}/events/stream", cancel=f"{base}/cancel",
                       report=f"{base}/report", rerun=f"{base}/rerun"),
    )


def _replay(session: Session, key: str, fingerprint: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.idempotency_key == key))
    if job is not None and job.request_fingerprint != fingerprint:
        raise ProblemError(
            422, "Idempotency key reused",
            f"Idempotency-Key {key!r} was already used for a different request (job {job.id}); "
            "use a new key for a new request", field="Idempotency-Key", slug="idempotency-key-reused",
        )
    return job


def invalid(exc: InvalidRequest) -> ProblemError:
    """A refused submission as a 422 problem naming the field; a request naming
    something that does not exist gets its own type (``unknown-reference``), so a
    client (and the contract test) can tell it from a request the schema refuses."""
    slug = "unknown-reference" if isinstance(exc, UnknownReference) else "validation-error"
    return ProblemError(422, "Invalid request", exc.detail, field=exc.field, slug=slug)


def submit(session: Session, body: JobCreate, **kwargs: Any) -> Job:
    kwargs.setdefault("allow_private_webhooks", state().settings.webhook_allow_private)
    try:
        return submit_job(session, body, **kwargs)
    except InvalidRequest as exc:
        raise invalid(exc) from None


def queue_job(job_id: str, device_name: str) -> None:
    """Send a committed job's first stage; fail it (503) if the broker refuses."""
    from automl_server.jobs.tasks import notify_state_changes

    s = state()
    notify_state_changes(s.celery, s.db, job_id, 0)  # "job queued"
    try:
        with s.db.session() as session:
            first = plan_of(session.get_one(Job, job_id))[0]
        _dispatch_with_retries(s.celery, job_id, first, device_name)
    except Exception as exc:
        # Never leave a job "queued" that no worker will ever see.
        with s.db.session() as session:
            service.fail(session, session.get_one(Job, job_id), f"could not queue the job: {exc}")
        raise ProblemError(503, "Service unavailable", f"the job {job_id} could not be queued ({exc}); "
                           "check the broker (AUTOML_BROKER_URL) and submit again", slug="broker-unavailable") from exc


# A broker refusing once is often transient: the embedded SQLite broker is
# briefly locked while `automl serve`'s worker and agent start (a job submitted
# right then got a 503 in one CI run). A repeated message is harmless (stages
# are idempotent and leased), a lost one is not: try again before failing.
DISPATCH_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)


def _dispatch_with_retries(celery: Any, job_id: str, stage: str, device_name: str) -> None:
    for delay in DISPATCH_RETRY_DELAYS_S:
        try:
            dispatch_stage(celery, job_id, stage, device_name)
            return
        except Exception:  # noqa: BLE001 - the last attempt below raises what the broker said
            time.sleep(delay)
    dispatch_stage(celery, job_id, stage, device_name)


@registry.operation(
    api_blueprint, "/jobs", "POST", scope="submit", summary="Submit a job", tag="jobs", body=JobCreate,
    responses={202: JobOut, 200: JobOut}, errors=(409, 503),
)
def create_job(body: JobCreate) -> tuple[JobOut, int, dict[str, str]]:
    """Answers 202 with the operation resource. With an ``Idempotency-Key``
    header, a retry of the same request returns the same job (200) instead of
    starting a second one."""
    s = state()
    key = request.headers.get("Idempotency-Key", "").strip() or None
    if key is not None and len(key) > _MAX_KEY_LENGTH:
        raise ProblemError(422, "Invalid request", f"Idempotency-Key is longer than {_MAX_KEY_LENGTH} characters",
                           field="Idempotency-Key", slug="validation-error")
    fingerprint = submitted_fingerprint(body)
    try:
        with s.db.session() as session:
            existing = _replay(session, key, fingerprint) if key else None
            if existing is not None:
                return to_out(existing), 200, {"Location": f"/api/v1/jobs/{existing.id}"}
            job = submit(session, body, idempotency_key=key)
            out = to_out(job, with_secret=True)
    except StorageError as exc:
        # Two retries raced with the same key: the loser replays the winner.
        if key is None or not isinstance(exc.__cause__, IntegrityError):
            raise
        with s.db.session() as session:
            existing = _replay(session, key, fingerprint)
            assert existing is not None
            return to_out(existing), 200, {"Location": f"/api/v1/jobs/{existing.id}"}
    # Sent after the commit, so a fast worker never looks for a job not yet visible.
    queue_job(out.id, out.device_name)
    return out, 202, {"Location": f"/api/v1/jobs/{out.id}"}


@registry.operation(
    api_blueprint, "/jobs", "GET", scope="read", summary="List jobs, newest first", tag="jobs", query=JobListQuery,
    responses={200: JobList},
)
def list_jobs(query: JobListQuery) -> Response:
    # The table's columns, not ORM objects: a list only reads (see newest_first_rows). The JSON
    # columns come as their text, so that a row is a hashable key of its job's JSON (_job_json).
    stmt = select(*_LIST_COLUMNS)
    if query.state:
        stmt = stmt.where(Job.state == query.state)
    if query.device:
        stmt = stmt.where(Job.device_name == query.device)
    with state().db.read_session() as session:
        rows, token = newest_first_rows(session, stmt, Job, query.page_size, query.page_token)
    # What JobList(jobs=..., next_page_token=token).model_dump_json() writes, byte for byte
    # (tests/server/test_api_jobs.py checks it), from each job's JSON cached by its row.
    jobs = ",".join(_job_json(tuple(row)) for row in rows)
    return Response(f'{{"jobs":[{jobs}],"next_page_token":{json.dumps(token)}}}', mimetype="application/json")


# The jobs table's columns for a list, the JSON ones as text (CAST: PostgreSQL's driver
# would parse json itself).
_JSON_COLUMNS = ("params", "result")
_LIST_COLUMNS = [cast(column, Text).label(column.name) if column.name in _JSON_COLUMNS else column
                 for column in Job.__table__.columns]
_LIST_NAMES = [column.name for column in Job.__table__.columns]


@lru_cache(maxsize=4096)
def _job_json(values: tuple[Any, ...]) -> str:
    """One job's JSON in a list, cached by every value of its row: a job that changed in any
    column is another key (so never stale); the 4096 most recent keys are kept (a few MB).
    A page of 50 unchanged jobs then costs its query, not 50 JSON parses and serialisations."""
    job = dict(zip(_LIST_NAMES, values))
    for name in _JSON_COLUMNS:
        job[name] = json.loads(job[name]) if job[name] is not None else None
    return to_out(SimpleNamespace(**job)).model_dump_json()


def _get(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@registry.operation(
    api_blueprint, "/jobs/<job_id>", "GET", scope="read", summary="Get a job (the operation resource)", tag="jobs",
    responses={200: JobOut}, errors=(404,),
)
def get_job(job_id: str) -> JobOut:
    with state().db.session() as session:
        return to_out(_get(session, job_id))


@registry.operation(
    api_blueprint, "/jobs/<job_id>/cancel", "POST", scope="submit", summary="Cancel a job", tag="jobs",
    responses={202: JobOut}, errors=(404, 409),
)
def cancel_job(job_id: str) -> tuple[JobOut, int]:
    """A queued job is cancelled at once; a running one stops at its next checkpoint."""
    with state().db.session() as session:
        job = _get(session, job_id)
        try:
            service.request_cancel(session, job)
        except service.InvalidTransition as exc:
            raise ProblemError(409, "Conflict", str(exc), field="state", slug="conflict") from None
        return to_out(job), 202


def _events_after(session: Session, job_id: str, after_id: int, limit: int) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id)
    return list(session.scalars(stmt.limit(limit)))


def _event_out(event: JobEvent) -> JobEventOut:
    return JobEventOut(id=event.id, kind=event.kind, stage=event.stage, message=event.message, data=event.data,
                       created_at=event.created_at)


@registry.operation(
    api_blueprint, "/jobs/<job_id>/events", "GET", scope="read", summary="A job's timeline, oldest first", tag="jobs",
    query=PageQuery, responses={200: JobEventList}, errors=(404,),
)
def list_job_events(job_id: str, query: PageQuery) -> JobEventList:
    after = 0
    if query.page_token:
        (after,) = decode_token(query.page_token, 1)
        if not isinstance(after, int):
            raise bad_token(query.page_token)
    with state().db.session() as session:
        _get(session, job_id)
        rows = _events_after(session, job_id, after, query.page_size + 1)
    token = None
    if len(rows) > query.page_size:
        rows = rows[: query.page_size]
        token = encode_token([rows[-1].id])
    return JobEventList(events=[_event_out(e) for e in rows], next_page_token=token)


class StreamQuery(Strict):
    after: int = Field(0, ge=0, description="Send only events after this event id (what Last-Event-ID says, "
                                           "for clients that cannot set headers).")


# Seconds of silence after which a stream sends a comment, so that proxies keep a quiet stream open.
STREAM_KEEPALIVE_S = 15.0


@registry.operation(
    api_blueprint, "/jobs/<job_id>/events/stream", "GET", scope="read", summary="Live timeline (Server-Sent Events)", tag="jobs",
    query=StreamQuery, responses={200: None}, streams="text/event-stream", stream_event=JobEventOut, errors=(404,),
    headers={"Last-Event-ID": {"schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                               "description": "The id of the last event received; the stream resumes after it."}},
)
def stream_job_events(job_id: str, query: StreamQuery) -> Response:
    """Sends every event as an SSE message (``id`` is the event id, so a
    reconnecting client resumes with ``Last-Event-ID``) and closes once the
    job has finished and its last event was sent."""
    s = state()
    with s.db.session() as session:
        _get(session, job_id)
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if last_event_id and not (last_event_id.isascii() and last_event_id.isdigit()):
        raise ProblemError(400, "Bad request", f"Last-Event-ID {last_event_id!r} is not an event id; send the "
                           "`id` of the last event received (an integer), or omit it to start from the first",
                           field="Last-Event-ID", slug="bad-request")
    after = int(last_event_id) if last_event_id else query.after

    def generate() -> Iterator[str]:
        nonlocal after
        idle_since = time.monotonic()
        yield "retry: 2000\n\n"
        while True:
            # A short session per poll: a stream must never hold a transaction open.
            # State first: a job seen finished has committed its last event
            # already, so the events read next include it (read committed too).
            with s.db.session() as session:
                finished = JobState(session.get_one(Job, job_id).state).is_terminal
                events = _events_after(session, job_id, after, 200)
            for event in events:
                after = event.id
                yield f"id: {event.id}\nevent: {event.kind}\ndata: {_event_out(event).model_dump_json()}\n\n"
            if events:
                idle_since = time.monotonic()
            elif finished:
                yield "event: end\ndata: {}\n\n"
                return
            elif time.monotonic() - idle_since > STREAM_KEEPALIVE_S:
                yield ": keep-alive\n\n"  # keeps proxies from closing a quiet stream
                idle_since = time.monotonic()
            time.sleep(0.5 if not events else 0.0)

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@registry.operation(
    api_blueprint, "/jobs/<job_id>/report", "GET", scope="read", summary="The finished job's report", tag="jobs",
    responses={200: None}, errors=(404, 409),
)
def get_job_report(job_id: str) -> Response:
    """Accuracy, predicted and measured latency, size, cost, architecture and
    downloads. 409 while the report stage has not run (the detail says where the job is)."""
    with state().db.session() as session:
        job = _get(session, job_id)
        report = job.result.get("report")
        if report is None:
            where = f"is {job.state}" + (f" (stage {job.stage})" if job.stage else "")
            why = f": {job.error}" if job.error else ""
            raise ProblemError(409, "Report not ready", f"job {job_id} {where}{why}; the report exists once the "
                               "report stage has run", field="state", slug="report-not-ready")
    return Response(json.dumps(report, indent=2), mimetype="application/json")


# Each kind of file: its name in a download and its media type, set explicitly (Python's
# mimetypes reads the system's table, where .pt is "application/vnd.snesdev-page-table").
# ONNX, TFLite and PyTorch files have no registered media type (IANA lists none; "application/onnx"
# is unregistered and few clients know it), so they are application/octet-stream: what a
# browser saves as a file and any HTTP client reads as bytes.
ARTIFACT_FILES = {
    "onnx": ("model.onnx", "application/octet-stream"),
    "tflite": ("model.tflite", "application/octet-stream"),
    "arch": ("arch.json", "application/json"),
    "weights": ("weights.pt", "application/octet-stream"),
    "report": ("report.json", "application/json"),
    "schedule": ("schedule.json", "application/json"),
    "privacy_grid": ("privacy-grid.png", "image/png"),
}
BUNDLE_MEDIA_TYPE = "application/zip"


def _artifact_paths(session: Session, job_id: str) -> dict[str, Path]:
    from automl_server.db.models import Artifact

    data_dir = state().settings.data_dir
    return {a.kind: data_dir / a.path for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}


@registry.operation(
    api_blueprint, "/jobs/<job_id>/artifacts/<kind>", "GET", scope="read", summary="Download one of the job's files", tag="jobs",
    responses={200: None}, streams=tuple(dict.fromkeys(media for _, media in ARTIFACT_FILES.values())), errors=(404,),
)
def download_artifact(job_id: str, kind: str) -> Response:
    """``kind``: onnx, tflite, arch, weights, report, schedule or privacy_grid, each with its media
    type (ONNX, TFLite and weights: application/octet-stream) and a file name saying what it is
    (``<job>-model.onnx``). ``/artifacts/bundle`` is the zip of what an app needs."""
    from flask import send_file

    with state().db.session() as session:
        _get(session, job_id)
        if kind not in ARTIFACT_FILES:
            raise ProblemError(404, "Not found", f"no artifact kind {kind!r}; accepted: "
                               f"{', '.join([*ARTIFACT_FILES, 'bundle'])}", field="kind", slug="not-found")
        path = _artifact_paths(session, job_id).get(kind)
        if path is None:
            raise ProblemError(404, "Not found", f"job {job_id} has no {kind} file (yet); its stages write it",
                               field="kind", slug="not-found")
    name, media = ARTIFACT_FILES[kind]
    return send_file(path, mimetype=media, as_attachment=True, download_name=f"{job_id}-{name}", etag=True)


@registry.operation(
    api_blueprint, "/jobs/<job_id>/artifacts/bundle", "GET", scope="read", summary="Download the deployment bundle (zip)",
    tag="jobs", responses={200: None}, streams=BUNDLE_MEDIA_TYPE, errors=(404, 409),
)
def download_bundle(job_id: str) -> Response:
    """One zip with what an app needs: model.onnx, model.tflite (when the job has one), labels.json
    (class names in output order), preprocessing.json (input size, channels and their order, scale,
    mean, std), report.json, example_onnxruntime.py (classifies one image file) and
    android/Classifier.kt (the same with LiteRT), and a README.txt saying what each file is.
    409 until the job has exported its model."""
    from automl_server.jobs.bundle import build_bundle, deployment_of

    s = state()
    with s.db.session() as session:
        job = _get(session, job_id)
        files = _artifact_paths(session, job_id)
        result = dict(job.result or {})
        if "onnx" not in files or "export" not in result:
            where = f"is {job.state}" + (f" (stage {job.stage})" if job.stage else "")
            why = f": {job.error}" if job.error else ""
            raise ProblemError(409, "Bundle not ready", f"job {job_id} {where}{why}; the bundle exists once the "
                               "export stage has written the model", field="state", slug="bundle-not-ready")
    labels, preprocessing = deployment_of(s.settings.artifacts_dir / job_id, result)
    data = build_bundle(job_id, files, result, labels, preprocessing)
    return Response(data, mimetype=BUNDLE_MEDIA_TYPE, headers={
        "Content-Disposition": f'attachment; filename="{job_id}-bundle.zip"'})


@registry.operation(
    api_blueprint, "/jobs/<job_id>/rerun", "POST", scope="submit", summary="Run a job again with the same settings", tag="jobs",
    responses={202: JobOut}, errors=(404, 409, 422, 503),
)
def rerun_job(job_id: str) -> tuple[JobOut, int, dict[str, str]]:
    """A new job with the finished job's dataset, device, target and options."""
    with state().db.session() as session:
        old = _get(session, job_id)
        if not JobState(old.state).is_terminal:
            raise ProblemError(409, "Conflict", f"job {job_id} is still {old.state}; re-run it once it has finished "
                               "or cancel it first", field="state", slug="conflict")
        job = submit(session, request_of(old), rerun_of=old.id)  # keeps the webhook secret
        out = to_out(job)
    queue_job(out.id, out.device_name)
    return out, 202, {"Location": f"/api/v1/jobs/{out.id}"}
