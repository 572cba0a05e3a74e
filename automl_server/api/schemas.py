"""Request and response models of the REST API (the OpenAPI schemas)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Strict(BaseModel):
    # Unknown fields are refused: a typo in a pipeline must not pass silently.
    model_config = ConfigDict(extra="forbid")


class PageQuery(Strict):
    page_size: int = Field(50, ge=1, le=500, description="Items per page (1-500).")
    page_token: str | None = Field(None, description="next_page_token of the previous page.")


# -- datasets -------------------------------------------------------------
class DatasetOut(BaseModel):
    id: str
    name: str
    source: Literal["upload", "bundled"]
    format: Literal["zip", "npz"]
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
    status: Literal["online", "offline"]
    queue: str
    runtimes: list[RuntimeOut]
    info: dict[str, Any]
    agent_version: str | None
    last_heartbeat_at: datetime | None
    registered_at: datetime


class DeviceList(BaseModel):
    devices: list[DeviceOut]
    next_page_token: str | None


# -- jobs -----------------------------------------------------------------
class JobCreate(Strict):
    dataset: str = Field(description="Dataset id or name.")
    device: str = Field(description="Device name.")
    runtime: str | None = Field(None, description="One of the device's runtimes; default: its first.")
    latency_target_ms: float = Field(gt=0, le=1e6, description="Latency the search aims at, in milliseconds.")
    space: str = Field("proxyless-mobile", pattern=NAME_PATTERN, description="Search space name.")
    pipeline: Literal["standard", "fedgkt", "delayed-sgd", "sparse-update"] = "standard"
    params: dict[str, Any] = Field(default_factory=dict, description="Budget and strategy options.")


class JobLinks(BaseModel):
    self: str
    events: str
    stream: str
    cancel: str


class JobOut(BaseModel):
    """An operation resource: poll it until ``done``."""

    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
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
    latency_target_ms: float
    params: dict[str, Any]
    result: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobOut]
    next_page_token: str | None


class JobListQuery(PageQuery):
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None


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
