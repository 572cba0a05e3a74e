"""Operator profiling next to a device: build the op a latency key names, time it on a runtime.

- ``method``: ``MeasurementMethod`` (warm-up, blocks, CV-driven stopping,
  threads, CPU affinity, cool-down) and ``measure``, the timing loop.
- ``environment``: what a measurement sets up and reads besides the clock
  (``cpu_affinity``, the paused garbage collector, ``read_temperature_c``).
- ``ops``: ``build_from_key``, the search space's module for a canonical key.
- ``backends``: ``ProfilerBackend`` and its runtimes (torch on CPU/CUDA, ONNX
  Runtime, LiteRT), found by name with ``get_backend``.
- ``tflite_writer``: ``write_tflite``, the search space's ops as ``.tflite``
  files without a converter.
- ``profiler``: ``profile_key(backend, key, method)``, the whole path for one key.
"""
from __future__ import annotations

from device_agents.profiling.backends import (
    BackendUnavailable,
    ConverterMissing,
    LiteRTBackend,
    OnnxRuntimeBackend,
    ProfilerBackend,
    TorchBackend,
    backend_names,
    get_backend,
    register_backend,
)
from device_agents.profiling.environment import cpu_affinity, read_temperature_c
from device_agents.profiling.method import MeasurementMethod, measure, measure_interleaved
from device_agents.profiling.ops import build_from_key
from device_agents.profiling.profiler import NetworkToTime, measure_networks, profile_key
from device_agents.profiling.tflite_writer import UnsupportedModule, write_tflite

__all__ = [
    "BackendUnavailable",
    "ConverterMissing",
    "LiteRTBackend",
    "MeasurementMethod",
    "NetworkToTime",
    "OnnxRuntimeBackend",
    "ProfilerBackend",
    "TorchBackend",
    "UnsupportedModule",
    "backend_names",
    "build_from_key",
    "cpu_affinity",
    "get_backend",
    "measure",
    "measure_interleaved",
    "measure_networks",
    "profile_key",
    "read_temperature_c",
    "register_backend",
    "write_tflite",
]
