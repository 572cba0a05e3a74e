"""ProxylessNAS search engine: mixed ops with binary gates, the supernet, latency models and losses.

Imports torch, numpy, yaml and search_spaces only (never the web, queue or
database layers), so that search workers and tests can use it on their own.
"""
from __future__ import annotations

from .latency import (
    DEFAULT_GMACS_PER_S,
    FlopsLatencyModel,
    LatencyEntry,
    LatencyModel,
    LutLatencyModel,
    MissingLatencyError,
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
    "MixedOp",
    "SuperNet",
    "key_macs",
    "latency_loss",
    "parse_key",
]
