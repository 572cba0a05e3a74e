"""ProxylessNAS search engine: mixed ops with binary gates, the supernet, latency models and losses.

Imports torch, numpy, yaml, pydantic and search_spaces (and, in pipelines that
need them, their engines: Flower, torch.distributed); never the web, queue or
database layers, ``latency_db`` or ``device_agents`` (tests/engine/test_boundaries.py
holds this), so that search workers, a device and tests can use it on their own.
A latency model comes in through the ``LatencyModel`` protocol; the TFLite
writer through ``export_tflite``'s ``writer`` argument.
"""
from __future__ import annotations

from .latency import (
    DEFAULT_GMACS_PER_S,
    FlopsLatencyModel,
    LatencyEntry,
    LatencyModel,
    LutLatencyModel,
    MissingLatencyError,
    arch_latency_ms,
    key_macs,
    parse_key,
)
from .losses import LOSS_KINDS, latency_loss
from .mixed_op import MODES, MixedOp
from .supernet import SuperNet

__all__ = [
    "DEFAULT_GMACS_PER_S",
    "LOSS_KINDS",
    "MODES",
    "FlopsLatencyModel",
    "LatencyEntry",
    "LatencyModel",
    "LutLatencyModel",
    "MissingLatencyError",
    "arch_latency_ms",
    "MixedOp",
    "SuperNet",
    "key_macs",
    "latency_loss",
    "parse_key",
]
