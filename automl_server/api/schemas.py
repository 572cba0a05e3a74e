"""Request and response models of the REST API (the OpenAPI schemas)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

from automl_server.jobs.requests import (  # noqa: F401  (re-exported: the API's request models)
    NAME_PATTERN,
    ComparisonCreate,
    JobBudget,
    JobCreate,
    JobOptions,
    Strict,
)

# The values a database string column may hold where the API promises one of a few.
DatasetSource = Literal["upload", "bundled"]
DatasetFormat = Literal["zip", "npz"]
DeviceStatus = Literal["online", "offline"]
JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DATASET_SOURCES: tuple[DatasetSource, ...] = get_args(DatasetSource)
DATASET_FORMATS: tuple[DatasetFormat, ...] = get_args(DatasetFormat)
JOB_STATES: tuple[JobStateName, ...] = get_args(JobStateName)

_Name = TypeVar("_Name", bound=str)


def one_of(value: str, accepted: tuple[_Name, ...]) -> _Name:
    """``value`` as the one of ``accepted`` it equals (typed as that Literal); ValueError if none."""
    for name in accepted:
        if value == name:
            return name
    raise ValueError(f"{value!r} is not one of {', '.join(accepted)}")


class PageQuery(Strict):
    page_size: int = Field(50, ge=1, le=500, description="Items per page (1-500).")
    page_token: str | None = Field(None, description="next_page_token of the previous page.")


# -- datasets -------------------------------------------------------------
class DatasetOut(BaseModel):
    id: str
    name: str
    source: DatasetSource
    format: DatasetFormat
    description: str
    size_bytes: int
    sha256: str
    num_samples: int
    num_classes: int
    classes: list[str]
    class_counts: dict[str, int]
    image_height: int
    image_width: int
    channels: int
    uniform_size: bool
    created_at: datetime


class DatasetList(BaseModel):
    datasets: list[DatasetOut]
    next_page_token: str | None


# -- devices --------------------------------------------------------------
DEVICE_KINDS = ("cpu", "gpu", "android", "raspberry-pi")


class RuntimeIn(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,49}$", description="e.g. pytorch, onnxruntime, litert")
    version: str = Field("", max_length=50)


class DeviceRegister(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Unique name; also the Celery queue device.<name>.")
    kind: Literal["cpu", "gpu", "android", "raspberry-pi"]
    description: str = Field("", max_length=2000)
    runtimes: list[RuntimeIn] = Field(min_length=1)
    info: dict[str, Any] = Field(default_factory=dict, description="Hardware facts reported by the agent.")
    agent_version: str | None = Field(None, max_length=50)
    reuse_latency: bool = Field(False, description="When this registration creates the device: take back the "
                                "latency tables of a retired device of the same name (kept by DELETE).")


class HeartbeatIn(Strict):
    info: dict[str, Any] | None = None


class RuntimeOut(BaseModel):
    name: str
    version: str


class DeviceOut(BaseModel):
    id: str
    name: str
    kind: str
    description: str
    status: DeviceStatus
    queue: str
    runtimes: list[RuntimeOut]
    info: dict[str, Any]
    agent_version: str | None
    last_heartbeat_at: datetime | None
    registered_at: datetime


class DeviceRegistered(DeviceOut):
    agent_token: str | None = Field(description="The device's agent token, returned once when issued (first "
                                    "registration); send it in the Automl-Agent-Token header to re-register "
                                    "the device and with its heartbeats. None on re-registration.")
    latency_targets_reused: int = Field(0, description="Latency targets taken back from a retired device "
                                        "of this name (reuse_latency).")


class DeviceDeleteQuery(Strict):
    force: bool = Field(False, description="Retire the device even with queued or running jobs (they are "
                        "cancelled).")


class DeviceRetired(BaseModel):
    name: str
    cancelled_jobs: list[str] = Field(description="Jobs cancelled because the device was retired (force).")
    latency_archive: str | None = Field(description="The name its latency tables are kept under; a device "
                                        "registering under the old name with reuse_latency takes them back.")
    latency_targets_kept: int


class DeviceList(BaseModel):
    devices: list[DeviceOut]
    next_page_token: str | None


# -- jobs -----------------------------------------------------------------
# The request models live in the job layer (every way of submitting speaks them).


class JobLinks(BaseModel):
    self: str
    events: str
    stream: str
    cancel: str
    report: str
    rerun: str


class JobOut(BaseModel):
    """An operation resource: poll it until ``done``."""

    id: str
    state: JobStateName
    stage: str | None
    progress: float
    done: bool
    error: str | None
    dataset_id: str | None
    dataset_name: str
    device_name: str
    runtime: str
    space: str
    pipeline: str
    latency_target_ms: float | None = Field(description="The latency target in ms; null until the profile "
                                           "stage sets it when the request gave none.")
    params: dict[str, Any]
    result: dict[str, Any]
    cancel_requested: bool
    recoveries: int = 0
    comparison_id: str | None = None
    rerun_of: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = Field(None, description="Only in the answer that created the job.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobOut]
    next_page_token: str | None


class JobListQuery(PageQuery):
    state: JobStateName | None = None
    device: str | None = Field(None, max_length=100, description="Only jobs for this device.")


class ComparisonOut(BaseModel):
    id: str
    dataset_name: str
    targets: list[dict[str, str]]
    jobs: list[dict[str, Any]]
    done: bool
    # matrix[i][j]: latency in ms of the network specialised for targets[i], measured on targets[j].
    matrix: list[list[float | None]]
    accuracy: list[float | None]
    created_at: datetime


class JobEventOut(BaseModel):
    id: int
    kind: str
    stage: str | None
    message: str
    data: dict[str, Any]
    created_at: datetime


class JobEventList(BaseModel):
    events: list[JobEventOut]
    next_page_token: str | None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str
    auth_required: bool


# -- audit log ------------------------------------------------------------
AuditKind = Literal["token-use", "device"]
AUDIT_KINDS: tuple[AuditKind, ...] = get_args(AuditKind)


class AuditQuery(PageQuery):
    kind: AuditKind | None = Field(None, description="Only token use, or only device changes.")
    device: str | None = Field(None, max_length=100, description="Only changes of this device.")


class AuditEventOut(BaseModel):
    id: str
    created_at: datetime
    kind: AuditKind
    action: str = Field(description="token-use: request, or requests (repeated successful reads within a minute, "
                                    "counted in detail); device: register, claim, re-register, register-refused, "
                                    "heartbeat-refused, retire.")
    token_name: str | None = Field(description="The token's name; null for an unknown token or local mode.")
    token_prefix: str | None = Field(description="The first characters of the token presented.")
    method: str | None
    path: str | None
    status: int | None
    address: str | None = Field(description="The client's address as the server saw it.")
    subject: str | None = Field(description="The device a device event is about.")
    detail: str


class AuditList(BaseModel):
    events: list[AuditEventOut]
    next_page_token: str | None
