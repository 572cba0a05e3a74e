"""Submitting a job: a request checked against what exists (dataset, device,
runtime, space, pipeline and its settings, stages) and stored as a queued job
with its plan of stages. The one way in for the REST API, comparisons and
re-runs; the HTTP layer only turns ``InvalidRequest`` into a 422.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from automl_server import webhooks
from automl_server.webhook_targets import check_target
from automl_server.db.models import Dataset, Device, Job
from automl_server.engine.strategies import strategies
from automl_server.engine.train.registry import DataFacts, InvalidPipelineSettings, pipelines
from automl_server.jobs import service
from automl_server.jobs.parent import parent_of, parent_problem
from automl_server.jobs.requests import JobBudget, JobCreate, JobOptions
from automl_server.jobs.stages import plan_for
from automl_server.jobs.validate import HOLDOUT_FRACTION, TEST_FRACTION
from search_spaces import list_spaces


class InvalidRequest(ValueError):
    """A request names something that does not exist or does not fit; ``field``
    is the dotted path of the offending field, the detail says what would be accepted."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class UnknownReference(InvalidRequest):
    """The request is well-formed but names a dataset, device, runtime, search space
    or job that does not exist here: what no schema can say in advance (the API
    answers it with its own problem type, ``unknown-reference``)."""


def find_dataset(session: Session, key: str) -> Dataset | None:
    """A dataset by id or by name."""
    return session.get(Dataset, key) or session.scalar(select(Dataset).where(Dataset.name == key))


def fingerprint(body: JobCreate) -> str:
    """What an Idempotency-Key is bound to: the request's canonical JSON."""
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _training_samples(dataset: Dataset, final_fit: str) -> int:
    """About how many samples the train stage will get (the validate stage's split)."""
    rest = dataset.num_samples * (1 - TEST_FRACTION)
    return int(rest if final_fit == "train+holdout" else rest * (1 - HOLDOUT_FRACTION))


def pipeline_settings(body: JobCreate, dataset: Dataset) -> dict[str, Any]:
    """The chosen pipeline's settings, validated and with defaults filled in, under its params key."""
    known = pipelines()
    if body.pipeline not in known:
        raise InvalidRequest("pipeline", f"no pipeline {body.pipeline!r}; accepted: "
                             f"{', '.join(repr(name) for name in known)}")
    pipeline = known[body.pipeline]
    given = body.params.pipeline_settings()
    for key in given:
        if key != pipeline.params_key:
            raise InvalidRequest(f"params.{key}", f"settings under {key!r} do not belong to pipeline "
                                 f"{body.pipeline!r}; its settings go under params.{pipeline.params_key}")
    try:
        settings = pipeline.parse(given.get(pipeline.params_key))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        field = f"params.{pipeline.params_key}" + (f".{where}" if where else "")
        accepted = sorted(pipeline.config.model_fields)
        hint = f"; settings of {body.pipeline!r}: {', '.join(accepted)}" if error["type"] == "extra_forbidden" else ""
        raise InvalidRequest(field, f"{error['msg']}{hint}") from None
    if pipeline.check is not None:
        facts = DataFacts(train_samples=_training_samples(dataset, body.params.final_fit),
                          num_classes=len(dataset.classes), resolution=dataset.image_height,
                          epochs=body.budget.train_epochs, batch_size=body.params.batch_size, space=body.space)
        try:
            pipeline.check(settings, facts)
        except InvalidPipelineSettings as exc:
            raise InvalidRequest(pipeline.field_path(exc.field), exc.detail) from None
    return {pipeline.params_key: settings.model_dump(mode="json")}


def check_parent(session: Session, body: JobCreate, dataset: Dataset, params: dict[str, Any]) -> None:
    """A pipeline that fine-tunes a finished job's network needs one that fits this job."""
    parent = parent_of({**params, "pipeline": body.pipeline})
    if parent is None:
        return
    problem = parent_problem(session, parent, dataset, body.space)
    if problem is not None:
        key = pipelines()[body.pipeline].params_key
        raise UnknownReference(f"params.{key}.parent_job", problem)


def submit_job(session: Session, body: JobCreate, *, idempotency_key: str | None = None,
               comparison_id: str | None = None, rerun_of: str | None = None,
               allow_private_webhooks: bool = False) -> Job:
    """Check the request and add the queued job (with its plan) to the session.
    Raises InvalidRequest naming the field; the caller commits and queues it.
    ``allow_private_webhooks``: the server's AUTOML_WEBHOOK_ALLOW_PRIVATE."""
    dataset = find_dataset(session, body.dataset)
    if dataset is None:
        raise UnknownReference("dataset", f"no dataset {body.dataset!r}; give a dataset id or name from "
                             "GET /api/v1/datasets")
    device = session.scalar(select(Device).where(Device.name == body.device).options(selectinload(Device.runtimes)))
    if device is None:
        raise UnknownReference("device", f"no device {body.device!r}; give a device name from GET /api/v1/devices")
    runtimes = [r.name for r in device.runtimes]
    runtime = body.runtime or (runtimes[0] if runtimes else "")
    if runtime not in runtimes:
        raise UnknownReference("runtime", f"device {device.name!r} has no runtime {runtime!r}; "
                             f"accepted: {', '.join(runtimes) or 'none registered'}")
    spaces = [space.name for space in list_spaces()]
    if body.space not in spaces:
        raise UnknownReference("space", f"no search space {body.space!r}; accepted: {', '.join(spaces)}")
    known_strategies = strategies()
    if body.strategy not in known_strategies:
        raise InvalidRequest("strategy", f"no search strategy {body.strategy!r}; accepted: "
                             f"{', '.join(repr(name) for name in known_strategies)}")
    settings = pipeline_settings(body, dataset)
    secret = None
    if body.webhook_url is not None:
        try:
            webhooks.validate_url(body.webhook_url)
            check_target(body.webhook_url, allow_private=allow_private_webhooks)
            secret = body.webhook_secret or webhooks.new_secret()
            webhooks.sign(secret, "check", 0, b"")
        except ValueError as exc:
            field = "webhook_url" if body.webhook_secret is None or "secret" not in str(exc) else "webhook_secret"
            raise InvalidRequest(field, str(exc)) from None
    elif body.webhook_secret is not None:
        raise InvalidRequest("webhook_secret", "webhook_secret needs a webhook_url")
    options = {k: v for k, v in body.params.model_dump().items() if k in JobOptions.model_fields}
    params = {"strategy": body.strategy, "budget": body.budget.model_dump(), "tune": body.tune,
              "stop_after": body.stop_after, **options, **settings}
    check_parent(session, body, dataset, params)
    try:
        plan = plan_for({**params, "pipeline": body.pipeline, "runtime": runtime})
    except KeyError as exc:
        raise InvalidRequest("stop_after", str(exc.args[0])) from None
    job = Job(
        dataset_id=dataset.id, dataset_name=dataset.name, device_id=device.id, device_name=device.name,
        runtime=runtime, space=body.space, pipeline=body.pipeline, latency_target_ms=body.latency_target_ms,
        params=params, idempotency_key=idempotency_key,
        request_fingerprint=fingerprint(body) if idempotency_key else None,
        webhook_url=body.webhook_url, webhook_secret=secret, comparison_id=comparison_id, rerun_of=rerun_of,
        result={"plan": plan},
    )
    session.add(job)
    session.flush()
    service.record_event(session, job, "state", "job queued", data={"state": job.state, "stages": plan})
    return job


def request_of(job: Job) -> JobCreate:
    """The request that would create this job again (a re-run)."""
    params = dict(job.params)
    options = {k: params[k] for k in JobOptions.model_fields if k in params}
    known = pipelines()
    if job.pipeline in known and known[job.pipeline].params_key in params:
        key = known[job.pipeline].params_key
        options[key] = params[key]
    return JobCreate(
        dataset=job.dataset_id or job.dataset_name, device=job.device_name, runtime=job.runtime,
        latency_target_ms=job.latency_target_ms, space=job.space, pipeline=job.pipeline,
        strategy=params.get("strategy", "gradient"), budget=JobBudget(**params.get("budget", {})),
        tune=params.get("tune", True), stop_after=params.get("stop_after"), webhook_url=job.webhook_url,
        webhook_secret=job.webhook_secret, params=JobOptions(**options),
    )
