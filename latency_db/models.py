"""SQLAlchemy 2 typed models of the latency database (tables ``latency_*``).

The tables live on their own declarative base, ``LatencyBase``, so that this
package does not import the service; the service's single Alembic history
creates them beside its own tables. Rows never leave ``repository.py``:
callers get the frozen records of ``records.py``.

A target is a device *and* a runtime configuration: the same phone measured
with one thread and with four threads is two targets, because the numbers
differ. ``device_name`` matches the service's ``devices.name`` but is not a
foreign key, so that a table can be imported before the device registers.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The service's convention (automl_server/db/models.py), repeated here because
# latency_db may not import the service: deterministic constraint names keep
# the migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Column widths, shared with the validation in records.py so that a long value
# is refused with a clear message instead of being truncated by the database.
DEVICE_NAME_LEN = 100
BACKEND_LEN = 50
BACKEND_VERSION_LEN = 50
DTYPE_LEN = 20
KEY_LEN = 300
KIND_LEN = 20
AGENT_VERSION_LEN = 50


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(timezone.utc)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class LatencyBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class LatencyTarget(LatencyBase):
    """A hardware target: a device plus the runtime configuration it is measured with."""

    __tablename__ = "latency_targets"
    __table_args__ = (
        UniqueConstraint("device_name", "backend", "backend_version", "threads", "dtype", "batch"),
        CheckConstraint("threads >= 1", name="threads_positive"),
        CheckConstraint("batch >= 1", name="batch_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_name: Mapped[str] = mapped_column(String(DEVICE_NAME_LEN))
    # "pytorch", "onnxruntime", "litert", ...
    backend: Mapped[str] = mapped_column(String(BACKEND_LEN))
    backend_version: Mapped[str] = mapped_column(String(BACKEND_VERSION_LEN))
    # Pinned intra-op thread count: a default would follow the core count and drift.
    threads: Mapped[int] = mapped_column(Integer)
    # "float32", "float16", "int8", ...
    dtype: Mapped[str] = mapped_column(String(DTYPE_LEN))
    batch: Mapped[int] = mapped_column(Integer)
    # The yardstick's time (ms) every latency of this target is given at
    # (latency_db.pace): the first one an agent reported; None until then.
    pace_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    measurements: Mapped[list[LatencyMeasurement]] = relationship(
        back_populates="target", cascade="all, delete-orphan", passive_deletes=True
    )
    networks: Mapped[list[LatencyNetworkMeasurement]] = relationship(
        back_populates="target", cascade="all, delete-orphan", passive_deletes=True
    )


class LatencyOp(LatencyBase):
    """An operator at one shape, named by its canonical key (``keys.OpKey.key``)."""

    __tablename__ = "latency_ops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(KEY_LEN), unique=True)
    # keys.KINDS: "expanded_conv", "Conv", "Conv_1", "Logits"
    kind: Mapped[str] = mapped_column(String(KIND_LEN))


class LatencyMeasurement(LatencyBase):
    """One measurement of one op on one target; a failed one keeps only its error.

    Measurements are appended, never overwritten: the latest successful one is
    the current value, and the history shows drift (thermal state, updates).
    """

    __tablename__ = "latency_measurements"
    __table_args__ = (
        Index("ix_latency_measurements_target_id_op_id", "target_id", "op_id"),
        # Either statistics or an error, so a failure can never pass for a 0 ms op.
        CheckConstraint(
            "(error IS NULL AND median_ms IS NOT NULL) OR (error IS NOT NULL AND median_ms IS NULL)",
            name="result_or_error",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("latency_targets.id", ondelete="CASCADE"))
    op_id: Mapped[int] = mapped_column(ForeignKey("latency_ops.id", ondelete="CASCADE"))
    # Timed runs and discarded warm-up runs; NULL for a failure, like every statistic below.
    samples: Mapped[int | None] = mapped_column(Integer)
    warmup: Mapped[int | None] = mapped_column(Integer)
    median_ms: Mapped[float | None] = mapped_column(Float)
    mean_ms: Mapped[float | None] = mapped_column(Float)
    std_ms: Mapped[float | None] = mapped_column(Float)
    p90_ms: Mapped[float | None] = mapped_column(Float)
    min_ms: Mapped[float | None] = mapped_column(Float)
    # Coefficient of variation (std / mean): how noisy the device was.
    cv: Mapped[float | None] = mapped_column(Float)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    agent_version: Mapped[str] = mapped_column(String(AGENT_VERSION_LEN))
    temperature_c: Mapped[float | None] = mapped_column(Float)
    # How it was measured (timer, repeats per block, pinning, ...), as the agent reports it.
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # False when the measurement stayed noisy through its retakes (contention: the
    # yardstick moved, a high CV, the cores shared); the reason says which. NULL: not assessed.
    reliable: Mapped[bool | None] = mapped_column(nullable=True)
    unreliable_reason: Mapped[str | None] = mapped_column(Text)

    target: Mapped[LatencyTarget] = relationship(back_populates="measurements")
    op: Mapped[LatencyOp] = relationship()


class LatencyNetworkMeasurement(LatencyBase):
    """A whole network measured end to end on a target, beside its LUT sum (for calibration)."""

    __tablename__ = "latency_network_measurements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("latency_targets.id", ondelete="CASCADE"), index=True)
    # The architecture spec (search_spaces Arch JSON or any JSON the caller uses).
    arch: Mapped[dict[str, Any]] = mapped_column()
    measured_ms: Mapped[float] = mapped_column(Float)
    # Sum of the LUT latencies of the network's ops, and how many ops that sum covers.
    lut_sum_ms: Mapped[float] = mapped_column(Float)
    n_ops: Mapped[int] = mapped_column(Integer)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    agent_version: Mapped[str] = mapped_column(String(AGENT_VERSION_LEN))
    # The evidence (latency_db.records.NetworkRecord): spread, the agent's method with the
    # yardstick's drift, load and CPU share; an unreliable measurement never calibrates.
    cv: Mapped[float | None] = mapped_column(Float, nullable=True)
    method: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    reliable: Mapped[bool | None] = mapped_column(nullable=True)
    unreliable_reason: Mapped[str | None] = mapped_column(Text)

    target: Mapped[LatencyTarget] = relationship(back_populates="networks")
