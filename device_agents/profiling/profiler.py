"""The whole path for one latency key: build the op it names, measure it on a backend."""
from __future__ import annotations

from device_agents.profiling.backends import ProfilerBackend
from device_agents.profiling.method import MeasurementMethod
from device_agents.profiling.ops import build_from_key
from latency_db.keys import OpKey
from latency_db.records import MeasurementStats


def profile_key(
    backend: ProfilerBackend, key: str | OpKey, method: MeasurementMethod, batch: int = 1
) -> MeasurementStats:
    """The statistics of the op ``key`` names, run at ``batch`` on ``backend`` with ``method``."""
    module, input_shape = build_from_key(key, batch=batch)
    return backend.measure_module(module, input_shape, method)
