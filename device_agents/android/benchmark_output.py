"""Reading TFLite's ``benchmark_model`` output into ``MeasurementStats``.

The tool prints one statistics line per phase (warm-up, then the timed runs),
in microseconds, e.g.::

    count=50 first=249042 curr=250889 min=247067 max=254474 avg=249684 std=1442

(newer builds append ``p5=... median=... p95=...``; a phase of one run prints
only ``count=1 curr=...``), and a summary line::

    Inference timings in us: Init: 16242, First inference: 360262, Warmup (avg): 304586, Inference (avg): 249684

Lines may carry a log prefix (``INFO: ``, logcat's ``I tflite  : ``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from latency_db.records import MeasurementStats

from device_agents.android.errors import BenchmarkOutputError

_NUMBER = r"[-+]?(?:nan|inf|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_STATS_LINE = re.compile(rf"\bcount=(\d+)((?:[ \t]+[a-z0-9_]+={_NUMBER})*)")
_STATS_FIELD = re.compile(rf"([a-z0-9_]+)=({_NUMBER})")
_TIMINGS_LINE = re.compile(
    rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
    rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})"
)
# z such that P(X <= mean + z * std) = 0.9 for a normal X.
_Z90 = 1.2815515655446004


@dataclass(frozen=True)
class PhaseStats:
    """One ``count=...`` line, in microseconds; None where the line does not print the field."""

    count: int
    avg_us: float
    std_us: float
    min_us: float
    max_us: float
    first_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class BenchmarkRun:
    """What one benchmark_model run printed: the timed phase, the warm-up phase and the summary."""

    timed: PhaseStats
    warmup: PhaseStats | None  # None when the tool printed a single statistics line
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None


def _phase(count: int, fields: dict[str, float]) -> PhaseStats:
    # A one-run phase prints only curr: that run is the min, max and mean.
    current = fields.get("curr", fields.get("avg", math.nan))
    avg = fields.get("avg", current)
    return PhaseStats(
        count=count,
        avg_us=avg,
        std_us=fields.get("std", 0.0),
        min_us=fields.get("min", current),
        max_us=fields.get("max", current),
        first_us=fields.get("first"),
        median_us=fields.get("median"),
        p95_us=fields.get("p95"),
    )


def parse_benchmark_output(text: str) -> BenchmarkRun:
    """The statistics in benchmark_model's output; BenchmarkOutputError when the
    timed-runs line is missing or holds no usable numbers."""
    phases = []
    for match in _STATS_LINE.finditer(text):
        fields = {name: float(value) for name, value in _STATS_FIELD.findall(match.group(2))}
        phases.append(_phase(int(match.group(1)), fields))
    if not phases:
        raise BenchmarkOutputError(
            "benchmark_model printed no 'count=... avg=... std=...' statistics line; is the configured binary "
            f"TFLite's benchmark_model? End of its output:\n{tail_lines(text)}"
        )
    # The tool prints the warm-up phase, then the timed phase: the last line is the timed runs.
    timed = phases[-1]
    numbers = (timed.avg_us, timed.std_us, timed.min_us, timed.max_us)
    if timed.count < 1 or not all(math.isfinite(n) and n >= 0 for n in numbers):
        raise BenchmarkOutputError(
            f"benchmark_model's timed-runs line has no usable statistics ({timed}); "
            f"end of its output:\n{tail_lines(text)}"
        )
    summary = _TIMINGS_LINE.search(text)
    init, first, warmup_avg, inference_avg = (float(v) for v in summary.groups()) if summary else (None,) * 4
    return BenchmarkRun(
        timed=timed,
        warmup=phases[-2] if len(phases) > 1 else None,
        init_us=init,
        first_inference_us=first,
        warmup_avg_us=warmup_avg,
        inference_avg_us=inference_avg,
    )


def stats_from_run(
    run: BenchmarkRun,
    warmup_requested: int,
    method: dict[str, Any],
    temperature_c: float | None = None,
) -> MeasurementStats:
    """MeasurementStats (ms) from a parsed run; ``method`` gets the fields' sources added.

    benchmark_model reports per-run statistics of the timed phase but not every
    statistic MeasurementStats holds, so, exactly:

    - samples = the timed line's ``count``; warmup = the warm-up line's
      ``count`` (runs actually made), else the number requested;
    - mean_ms = ``avg``; std_ms = ``std`` (the tool's population standard
      deviation); min_ms = ``min``; cv = std / avg;
    - median_ms = ``median`` where the build prints it; older builds print no
      median, and then median_ms = ``avg`` (not a median: a slow outlier pulls
      it up);
    - p90_ms = ``p95`` where printed: an upper bound of the p90, which the tool
      never prints; otherwise an estimate, avg + 1.2816 * std (the p90 of a
      normal distribution), capped at ``max``.

    ``method["median_from"]`` and ``method["p90_from"]`` say which applied.
    """
    timed = run.timed
    if timed.median_us is not None:
        median_us, median_from = timed.median_us, "median"
    else:
        median_us, median_from = timed.avg_us, "avg (benchmark_model printed no median)"
    if timed.p95_us is not None:
        p90_us, p90_from = max(timed.p95_us, median_us), "p95 (an upper bound; benchmark_model prints no p90)"
    else:
        p90_us = max(min(timed.avg_us + _Z90 * timed.std_us, timed.max_us), median_us)
        p90_from = "avg + 1.2816 * std, capped at max (normal approximation; no percentiles printed)"
    recorded = {
        **method,
        "median_from": median_from,
        "p90_from": p90_from,
        "max_ms": timed.max_us / 1000,
        "init_ms": _ms(run.init_us),
        "first_inference_ms": _ms(run.first_inference_us),
        "warmup_avg_ms": _ms(run.warmup_avg_us),
    }
    return MeasurementStats(
        samples=timed.count,
        warmup=run.warmup.count if run.warmup is not None else warmup_requested,
        median_ms=median_us / 1000,
        mean_ms=timed.avg_us / 1000,
        std_ms=timed.std_us / 1000,
        p90_ms=p90_us / 1000,
        # avg prints with 6 significant digits (2.95034e+06): on a very steady
        # run it can round below min, so min is clamped to keep min <= median.
        min_ms=min(timed.min_us, median_us) / 1000,
        cv=timed.std_us / timed.avg_us if timed.avg_us > 0 else 0.0,
        method=recorded,
        temperature_c=temperature_c,
    )


def _ms(microseconds: float | None) -> float | None:
    # JSON has no NaN: a phase with no runs prints "nan", recorded as None.
    if microseconds is None or not math.isfinite(microseconds):
        return None
    return microseconds / 1000


def tail_lines(text: str, lines: int = 15) -> str:
    """The last lines of text, for error messages."""
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"
