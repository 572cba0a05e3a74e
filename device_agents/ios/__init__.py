"""Device side of IOS scheduling: run an ONNX model by its schedule JSON, and measure stages.

Never imports the service (``automl_server``): the schedule is plain JSON.
"""
from __future__ import annotations

from device_agents.ios.executor import CpuExecutor, CudaExecutor, SequentialExecutor, current_threads, split_threads
from device_agents.ios.measure import LocalStageMeasurer, time_runs
from device_agents.ios.merge import MergedConv, merge_convs
from device_agents.ios.ort_program import OrtModelProgram
from device_agents.ios.loading import load_scheduled
from device_agents.ios.program import OnnxModelProgram, ScheduledModel

__all__ = [
    "CpuExecutor",
    "CudaExecutor",
    "LocalStageMeasurer",
    "MergedConv",
    "OnnxModelProgram",
    "OrtModelProgram",
    "ScheduledModel",
    "SequentialExecutor",
    "current_threads",
    "load_scheduled",
    "merge_convs",
    "split_threads",
    "time_runs",
]
