"""SQLAlchemy 2 typed models of the service.

The latency database (``latency_db``) adds its own tables to the same Alembic
history; these are the service's: datasets, devices and their runtimes, jobs,
job events, artifacts and API tokens.
"""
from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from device_agents.protocol import device_queue

# Deterministic constraint names (identical migrations on SQLite and
# PostgreSQL) and timezone-aware UTC datetimes are defined once, in latency_db,
# which must stand alone without the service; the service may import it.
from latency_db.models import NAMING_CONVENTION, UTCDateTime, utcnow

def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # "upload" or "bundled"
    source: Mapped[str] = mapped_column(String(20))
    # "zip" or "npz"
    format: Mapped[str] = mapped_column(String(10))
    # Relative to the data directory, so a moved data directory keeps working.
    file_path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    num_samples: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]] = mapped_column()
    class_counts: Mapped[dict[str, Any]] = mapped_column()
    image_height: Mapped[int] = mapped_column(Integer)
    image_width: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    uniform_size: Mapped[bool] = mapped_column(Boolean)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # "cpu", "gpu", "android", "raspberry-pi"
    kind: Mapped[str] = mapped_column(String(30))
    description: Mapped[str] = mapped_column(Text, default="")
    # What the agent reported about the hardware (cores, memory, os, model).
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    agent_version: Mapped[str | None] = mapped_column(String(50))
    # SHA-256 of the device's agent token, issued at first registration: only
    # the agent holding it may re-register the device or send its heartbeats.
    # None for a device registered before tokens existed (its next registration claims it).
    agent_token_hash: Mapped[str | None] = mapped_column(String(64))
    last_heartbeat_at: Mapped[datetime | None] = mapped_column()
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)

    runtimes: Mapped[list[DeviceRuntime]] = relationship(
        back_populates="device", cascade="all, delete-orphan", order_by="DeviceRuntime.name"
    )

    @property
    def queue_name(self) -> str:
        return device_queue(self.name)


class DeviceRuntime(Base):
    """A runtime available on a device; device + runtime is a hardware target."""

    __tablename__ = "device_runtimes"
    __table_args__ = (UniqueConstraint("device_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    # "pytorch", "onnxruntime", "litert", ...
    name: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(50), default="")
    device: Mapped[Device] = relationship(back_populates="runtimes")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    state: Mapped[str] = mapped_column(String(20), default=JobState.QUEUED.value, index=True)
    # The stage running now (or last run); None while queued.
    stage: Mapped[str | None] = mapped_column(String(30))
    # Overall progress in [0, 1].
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    # The dataset may be deleted later; its name stays for the record.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    dataset_name: Mapped[str] = mapped_column(String(200))
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"), index=True)
    device_name: Mapped[str] = mapped_column(String(100))
    runtime: Mapped[str] = mapped_column(String(50))
    space: Mapped[str] = mapped_column(String(50))
    pipeline: Mapped[str] = mapped_column(String(30))
    # None until the profile stage sets it when the request gave none (the middle of the achievable range).
    latency_target_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Everything else the request asked for (budget, strategy, ...).
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Outputs of finished stages (dataset statistics, metrics, ...).
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # Hash of the request body sent with the idempotency key, to refuse reuse.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The lease of the worker running the current stage: a stage whose lease
    # ran out (its worker died) is taken over by the next delivery or by the
    # recovery sweep, and resumes from its checkpoint.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column()
    # How many times a stage of this job was (re)started after a lost worker.
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    # Standard Webhooks receiver for state changes; the secret signs them.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(200))
    comparison_id: Mapped[str | None] = mapped_column(ForeignKey("comparisons.id", ondelete="SET NULL"), index=True)
    # The job whose settings this one re-ran, if any.
    rerun_of: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobEvent.id"
    )
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="job", cascade="all, delete-orphan")


class Comparison(Base):
    """One dataset searched for several devices, each result measured on every
    device: the specialisation matrix of the ProxylessNAS paper."""

    __tablename__ = "comparisons"
    __table_args__ = (Index("ix_comparisons_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_name: Mapped[str] = mapped_column(String(200))
    # [{"device": name, "runtime": runtime}, ...] in the order of the matrix.
    targets: Mapped[list[Any]] = mapped_column(default=list)
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # "row-target|column-target" -> ms: a job's network measured on another device.
    cells: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """One entry of a job's timeline: a state change, progress, a metric or a log line."""

    __tablename__ = "job_events"

    # A global increasing id doubles as the cursor of paging and streaming.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # "state", "progress", "metric", "log"
    kind: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str | None] = mapped_column(String(30))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="events")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # "arrays", "checkpoint", "onnx", "tflite", "report", ...
    kind: Mapped[str] = mapped_column(String(30))
    # Relative to the data directory.
    path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    # SHA-256 of the secret: tokens are 256-bit random, so a slow hash buys nothing.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, shown in listings to tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    # What the token may do, space-separated (automl_server.auth.SCOPES): "read submit",
    # "admin", "agent:pixel-7", ... Tokens made before scopes existed have "read submit admin".
    scopes: Mapped[str] = mapped_column(String(500))


class AuditEvent(Base):
    """One line of the audit log: an API request made with a token, or a change
    to the device farm (registration, refused re-registration, retirement)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "token-use" or "device"
    kind: Mapped[str] = mapped_column(String(20), index=True)
    # token-use: "request"; device: "register", "claim", "re-register", "register-refused",
    # "heartbeat-refused", "retire"
    action: Mapped[str] = mapped_column(String(30))
    # The token that made the request (None in local mode, or for a refused unknown token).
    token_name: Mapped[str | None] = mapped_column(String(100))
    token_prefix: Mapped[str | None] = mapped_column(String(16))
    method: Mapped[str | None] = mapped_column(String(10))
    path: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(100))
    # The device a device event is about.
    subject: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(Text, default="")


def device_status(device: Device, timeout_s: float, now: datetime | None = None) -> Literal["online", "offline"]:
    """"online" while the device's agent has sent a heartbeat within ``timeout_s``."""
    if device.last_heartbeat_at is None:
        return "offline"
    now = now or utcnow()
    return "online" if now - device.last_heartbeat_at <= timedelta(seconds=timeout_s) else "offline"
