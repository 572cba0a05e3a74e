"""Stage costs: a measuring function passed in, memoised by the stage's key.

The scheduler never times anything itself: ``measure(stage) -> ms`` runs the
stage on the target (the device agent; ``device_agents.ios.measure`` for the
local CPU) with the paper's warm-up and repeated runs. The memo is any
mutable mapping from stage key to milliseconds: a dict in tests, later the
latency database for the device, so a second schedule on the same device
measures only stages it has not seen. Keys name the stage, not the device or
the executor: keep one memo per (device, executor backend, thread count).
"""
from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field

from automl_server.engine.deploy.ios.stage import Stage

MeasureFn = Callable[[Stage], float]


@dataclass
class MemoisedStageCost:
    """``cost(stage)``: the memo's value for the stage's key, else a measurement stored there."""

    measure: MeasureFn
    memo: MutableMapping[str, float] = field(default_factory=dict)
    measured: int = 0  # stages this object sent to ``measure``
    reused: int = 0  # answers taken from the memo
    measure_seconds: float = 0.0  # wall time spent measuring (device seconds for a remote agent)

    def __call__(self, stage: Stage) -> float:
        cached = self.memo.get(stage.key)
        if cached is not None:
            self.reused += 1
            return cached
        start = time.perf_counter()
        latency_ms = float(self.measure(stage))
        self.measure_seconds += time.perf_counter() - start
        if not latency_ms >= 0.0:  # also refuses NaN
            raise ValueError(f"measure returned {latency_ms!r} ms for stage {stage.key}; expected a latency >= 0")
        self.measured += 1
        self.memo[stage.key] = latency_ms
        return latency_ms
