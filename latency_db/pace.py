"""Latencies at one pace: measurements taken while a machine ran at different
speeds, made comparable through the yardstick measured beside each of them.

A device agent pairs every timed block with a block of a fixed workload (its
yardstick, ``device_agents.profiling.method``) and reports the yardstick's
median in ``stats.method["yardstick_ms"]``. Scaling a measurement by
``pace_ms / yardstick_ms`` gives its latency at the moment the yardstick ran
in ``pace_ms``: the ratio to the yardstick is what stays put when the whole
machine slows down. A target keeps one pace (the first yardstick time recorded
on it), so its op table, its calibration networks and a job's verification are
all in the same units.
"""
from __future__ import annotations

import math
from dataclasses import replace

from latency_db.records import MeasurementStats

YARDSTICK_MS = "yardstick_ms"


def yardstick_ms(stats: MeasurementStats) -> float | None:
    """The yardstick's median beside this measurement, or None when none ran (e.g. a phone's benchmark_model)."""
    value = stats.method.get(YARDSTICK_MS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def at_pace(stats: MeasurementStats, pace_ms: float) -> MeasurementStats:
    """stats rescaled to the moment the yardstick took ``pace_ms``; unchanged when no yardstick ran.

    The CV does not change (every figure scales alike); ``method`` records the
    pace (``pace_ms``) and the factor from the clock's figures (``pace_factor``).
    """
    if isinstance(pace_ms, bool) or not isinstance(pace_ms, (int, float)) or not math.isfinite(pace_ms) or pace_ms <= 0:
        raise ValueError(f"pace_ms must be a finite number of ms > 0, got {pace_ms!r}")
    measured_at = yardstick_ms(stats)
    if measured_at is None:
        return stats
    factor = float(pace_ms) / measured_at
    # Stats paced before are rescaled from their clock values: pacing twice is pacing once.
    step = factor / _pace_factor(stats)
    return replace(
        stats,
        median_ms=stats.median_ms * step,
        mean_ms=stats.mean_ms * step,
        std_ms=stats.std_ms * step,
        p90_ms=stats.p90_ms * step,
        min_ms=stats.min_ms * step,
        method={**stats.method, "pace_ms": float(pace_ms), "pace_factor": factor},
    )


def _pace_factor(stats: MeasurementStats) -> float:
    value = stats.method.get("pace_factor", 1.0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 1.0
