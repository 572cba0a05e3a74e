"""Frozen records that cross the latency database's boundary (never ORM rows).

Device agents build a ``MeasurementStats`` (``MeasurementStats.from_samples``
turns raw timings into one); the repository hands back ``TargetRecord``,
``MeasurementRecord`` and ``NetworkRecord``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from latency_db.models import (
    AGENT_VERSION_LEN,
    BACKEND_LEN,
    BACKEND_VERSION_LEN,
    DEVICE_NAME_LEN,
    DTYPE_LEN,
)


@dataclass(frozen=True)
class TargetSpec:
    """What identifies a hardware target: the device and the runtime configuration."""

    device_name: str  # the device's name in the farm (``devices.name``)
    backend: str  # runtime: "pytorch", "onnxruntime", "litert", ...
    backend_version: str  # runtime version, e.g. "1.31.1"; "" when unknown
    threads: int = 1  # pinned intra-op threads
    dtype: str = "float32"  # tensor type the ops run in
    batch: int = 1  # batch size of the measured inputs

    def __post_init__(self) -> None:
        check_text("device_name", self.device_name, DEVICE_NAME_LEN)
        check_text("backend", self.backend, BACKEND_LEN)
        check_text("backend_version", self.backend_version, BACKEND_VERSION_LEN, allow_empty=True)
        check_text("dtype", self.dtype, DTYPE_LEN)
        check_int("threads", self.threads, minimum=1)
        check_int("batch", self.batch, minimum=1)


@dataclass(frozen=True)
class TargetRecord:
    """A stored target; pass it back to the repository to read or write its measurements."""

    id: int
    device_name: str
    backend: str
    backend_version: str
    threads: int
    dtype: str
    batch: int

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec(self.device_name, self.backend, self.backend_version, self.threads, self.dtype, self.batch)

    def describe(self) -> str:
        """One line for messages, e.g. ``pixel1 / litert 2.3.0, 1 thread(s), float32, batch 1``."""
        version = f" {self.backend_version}" if self.backend_version else ""
        return (
            f"{self.device_name} / {self.backend}{version}, {self.threads} thread(s), "
            f"{self.dtype}, batch {self.batch}"
        )


@dataclass(frozen=True)
class MeasurementStats:
    """The statistics of one op's timed runs, in milliseconds, as a device agent reports them."""

    samples: int  # timed runs (or block means) the statistics come from
    warmup: int  # discarded warm-up runs
    median_ms: float  # the value the predictor uses: robust to the odd slow run
    mean_ms: float
    std_ms: float
    p90_ms: float
    min_ms: float
    cv: float  # std / mean
    method: dict[str, Any] = field(default_factory=dict)  # how it was measured (JSON-serialisable)
    temperature_c: float | None = None  # device temperature at the end of the run, if readable

    def __post_init__(self) -> None:
        check_int("samples", self.samples, minimum=1)
        check_int("warmup", self.warmup, minimum=0)
        for name in ("median_ms", "mean_ms", "std_ms", "p90_ms", "min_ms", "cv"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0))
        if not self.min_ms <= self.median_ms <= self.p90_ms:
            raise ValueError(
                f"expected min_ms <= median_ms <= p90_ms, got {self.min_ms!r}, {self.median_ms!r}, {self.p90_ms!r}"
            )
        if self.temperature_c is not None:
            object.__setattr__(self, "temperature_c", check_float("temperature_c", self.temperature_c))
        object.__setattr__(self, "method", check_json_dict("method", self.method))

    @classmethod
    def from_samples(
        cls,
        samples_ms: Sequence[float],
        warmup: int,
        method: dict[str, Any] | None = None,
        temperature_c: float | None = None,
    ) -> MeasurementStats:
        """Statistics of timed runs (or of block means), in milliseconds."""
        values = np.asarray(samples_ms, dtype=float)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"samples_ms must be a non-empty sequence of times in ms, got {samples_ms!r}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"samples_ms must be finite times >= 0 ms, got {samples_ms!r}")
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        return cls(
            samples=int(values.size),
            warmup=warmup,
            median_ms=float(np.median(values)),
            mean_ms=mean,
            std_ms=std,
            p90_ms=float(np.percentile(values, 90)),
            min_ms=float(values.min()),
            cv=std / mean if mean > 0 else 0.0,
            method=dict(method or {}),
            temperature_c=temperature_c,
        )


@dataclass(frozen=True)
class MeasurementRecord:
    """A stored measurement of one op on one target; ``stats`` is None when it failed."""

    key: str
    stats: MeasurementStats | None
    measured_at: datetime
    agent_version: str
    error: str | None = None
    # False: stayed noisy through its retakes (the reason says why); None: not assessed (older rows).
    reliable: bool | None = None
    unreliable_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class NetworkRecord:
    """A whole network measured end to end, beside the sum of its ops' LUT latencies."""

    id: int
    target_id: int
    arch: dict[str, Any]
    measured_ms: float
    lut_sum_ms: float
    n_ops: int
    measured_at: datetime
    agent_version: str
    # The evidence kept with the figure: its spread, and the agent's method (yardstick drift,
    # load average, CPU share, attempts). reliable False: never used for calibration.
    cv: float | None = None
    method: dict[str, Any] | None = None
    reliable: bool | None = None
    unreliable_reason: str | None = None

    @property
    def usable(self) -> bool:
        """Whether the figure may calibrate a predictor (not flagged as unreliable)."""
        return self.reliable is not False

    @property
    def calibration_sample(self) -> tuple[float, int, float]:
        """``(lut_sum_ms, n_ops, measured_ms)``, the input of ``predictor.fit_calibration``."""
        return (self.lut_sum_ms, self.n_ops, self.measured_ms)


def reliability(method: dict[str, Any]) -> tuple[bool | None, str | None]:
    """(reliable, reason) as an agent's method reports them (device_agents.profiling.contention);
    (None, None) when it did not assess the measurement (an older agent)."""
    reliable = method.get("reliable")
    if not isinstance(reliable, bool):
        return None, None
    reason = method.get("unreliable_reason")
    return reliable, (str(reason) if reason and not reliable else None)


def check_text(name: str, value: object, max_len: int, allow_empty: bool = False) -> str:
    """value if it is a string of at most max_len characters (non-empty unless allowed)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}: {value[:40]!r}...")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: object, minimum: float | None = None) -> float:
    """value as a float if it is a finite real number (>= minimum when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return number


def check_agent_version(value: object) -> str:
    return check_text("agent_version", value, AGENT_VERSION_LEN)


def check_json_dict(name: str, value: object) -> dict[str, Any]:
    """A copy of value if it is a dict that JSON can store as is."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold only JSON values (str keys, no NaN): {exc}") from None
