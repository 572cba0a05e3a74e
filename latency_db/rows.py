"""Conversions between the ORM rows of ``models.py`` and the frozen records of ``records.py``.

Only ``repository.py`` uses these: rows never leave it.
"""
from __future__ import annotations

from datetime import datetime

from latency_db.errors import LatencyStoreError
from latency_db.models import LatencyMeasurement, LatencyNetworkMeasurement, LatencyTarget
from latency_db.records import MeasurementRecord, MeasurementStats, NetworkRecord, TargetRecord, reliability

_STAT_COLUMNS = ("samples", "warmup", "median_ms", "mean_ms", "std_ms", "p90_ms", "min_ms", "cv")


def measurement_row(
    target_id: int, op_id: int, stats: MeasurementStats, agent_version: str, when: datetime
) -> LatencyMeasurement:
    return LatencyMeasurement(
        target_id=target_id,
        op_id=op_id,
        samples=stats.samples,
        warmup=stats.warmup,
        median_ms=stats.median_ms,
        mean_ms=stats.mean_ms,
        std_ms=stats.std_ms,
        p90_ms=stats.p90_ms,
        min_ms=stats.min_ms,
        cv=stats.cv,
        measured_at=when,
        agent_version=agent_version,
        temperature_c=stats.temperature_c,
        method=stats.method,
        error=None,
        reliable=reliability(stats.method)[0],
        unreliable_reason=reliability(stats.method)[1],
    )


def target_record(row: LatencyTarget) -> TargetRecord:
    return TargetRecord(
        id=row.id,
        device_name=row.device_name,
        backend=row.backend,
        backend_version=row.backend_version,
        threads=row.threads,
        dtype=row.dtype,
        batch=row.batch,
    )


def measurement_record(key: str, row: LatencyMeasurement) -> MeasurementRecord:
    stats = None
    if row.error is None:
        values = {name: getattr(row, name) for name in _STAT_COLUMNS}
        if any(value is None for value in values.values()):
            raise LatencyStoreError(
                f"latency database: measurement {row.id} of {key!r} has neither an error nor complete "
                f"statistics ({values}); delete the row and measure the op again"
            )
        stats = MeasurementStats(**values, method=dict(row.method or {}), temperature_c=row.temperature_c)
    return MeasurementRecord(
        key=key, stats=stats, measured_at=row.measured_at, agent_version=row.agent_version, error=row.error,
        reliable=row.reliable, unreliable_reason=row.unreliable_reason,
    )


def network_record(row: LatencyNetworkMeasurement) -> NetworkRecord:
    return NetworkRecord(
        id=row.id,
        target_id=row.target_id,
        arch=dict(row.arch),
        measured_ms=row.measured_ms,
        lut_sum_ms=row.lut_sum_ms,
        n_ops=row.n_ops,
        measured_at=row.measured_at,
        agent_version=row.agent_version,
        cv=row.cv,
        method=dict(row.method) if row.method is not None else None,
        reliable=row.reliable,
        unreliable_reason=row.unreliable_reason,
    )
