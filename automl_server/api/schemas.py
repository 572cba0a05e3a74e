"""Request and response models of the REST API (the OpenAPI schemas)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from automl_server.jobs.spec import Budget, JobSpec

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
# The defaults live in jobs/spec.py, once; the API documents them from there.
_BUDGET, _SPEC = Budget(), JobSpec()


class JobBudget(Strict):
    """How much work the job may do; the defaults fit the bundled digits on a 2-core CPU well inside 15 minutes."""

    warmup_epochs: int = Field(_BUDGET.warmup_epochs, ge=0, le=1000, description="Weight-only epochs on random paths.")
    search_epochs: int = Field(_BUDGET.search_epochs, ge=1, le=1000, description="Epochs of alternating weight/architecture steps.")
    tune_trials: int = Field(_BUDGET.tune_trials, ge=0, le=200, description="Optuna trials (0: no tuning).")
    tune_epochs: int = Field(_BUDGET.tune_epochs, ge=1, le=200, description="Epochs per tuning trial.")
    train_epochs: int = Field(_BUDGET.train_epochs, ge=1, le=2000, description="Epochs to train the found network from scratch.")
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60,
                                  description="Wall-clock cap for search, tune and train (40/30/30%).")


class JobOptions(Strict):
    seed: int = Field(_SPEC.seed, ge=0, le=2**31 - 1)
    batch_size: int = Field(_SPEC.batch_size, ge=1, le=4096)
    calibration_networks: int = Field(_SPEC.calibration_networks, ge=0, le=100,
                                      description="Whole networks measured to calibrate a new target.")
    device_wait_s: float = Field(_SPEC.device_wait_s, ge=0, le=86400, description="How long to wait for an offline device.")
    final_fit: Literal["train+holdout", "train"] = Field(
        _SPEC.final_fit, description="Data the found network is trained on: the holdout split joins the training "
        "split once search and tuning are done (default), or stays out to show a held-out curve.")


class JobCreate(Strict):
    dataset: str = Field(description="Dataset id or name.")
    device: str = Field(description="Device name.")
    runtime: str | None = Field(None, description="One of the device's runtimes; default: its first.")
    latency_target_ms: float = Field(gt=0, le=1e6, description="Latency the search aims at, in milliseconds.")
    space: str = Field("proxyless-mobile", pattern=NAME_PATTERN, description="Search space name.")
    strategy: Literal["gradient", "rl"] = Field("gradient", description="Binarized gates (gradient) or REINFORCE.")
    pipeline: Literal["standard", "fedgkt", "delayed-sgd", "sparse-update"] = "standard"
    budget: JobBudget = Field(default_factory=JobBudget)
    tune: bool = Field(True, description="Tune the latency loss with Optuna (tune stage).")
    stop_after: Literal["validate", "profile", "search", "tune", "train", "export", "verify", "report"] | None = Field(
        None, description="End the job after this stage (e.g. 'profile' only fills the latency table).")
    webhook_url: str | None = Field(None, max_length=2000,
                                    description="Receives a signed POST (Standard Webhooks) on every state change.")
    webhook_secret: str | None = Field(None, max_length=200, description="whsec_... secret; default: generated "
                                       "and returned once in the 202 answer.")
    params: JobOptions = Field(default_factory=JobOptions, description="Less common options.")


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
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None
    device: str | None = Field(None, max_length=100, description="Only jobs for this device.")


class ComparisonCreate(Strict):
    dataset: str = Field(description="Dataset id or name.")
    devices: list[str] = Field(min_length=2, max_length=10, description="Device names (each with its first "
                               "runtime, or 'name:runtime').")
    latency_target_ms: float = Field(gt=0, le=1e6)
    space: str = Field("proxyless-mobile", pattern=NAME_PATTERN)
    strategy: Literal["gradient", "rl"] = "gradient"
    budget: JobBudget = Field(default_factory=JobBudget)
    tune: bool = True
    params: JobOptions = Field(default_factory=JobOptions)


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
