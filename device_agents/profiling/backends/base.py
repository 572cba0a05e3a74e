"""What every profiler backend offers, the errors they share, and the helpers they share."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from device_agents.profiling.method import MeasurementMethod
from latency_db.records import MeasurementStats

# The same input for every backend and every run: timings never depend on which random numbers came up.
INPUT_SEED = 0
# The yardstick every backend pairs its blocks with (method.py says why): a
# mid-sized op of the search spaces, about 0.03-0.1 ms on one core of this
# machine in each runtime, so that a block of it is neither lost in the clock's
# noise nor long enough to double the cost of profiling large ops.
YARDSTICK_KEY = "expanded_conv-input:16x16x16-output:16x16x16-expand:3-kernel:3-stride:1-idskip:1"
# Warnings that torch's exporters (torch.onnx, torch.export under litert-torch) raise about
# themselves, not about the model: they say nothing a profiler can act on, and would fail
# a warnings-as-errors run.
_EXPORTER_NOISE = (
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (runtime not installed, no such device or provider); the message says what to do."""


class ConverterMissing(BackendUnavailable):
    """A backend needs a model converter that is not installed; the message names the package to install."""


@runtime_checkable
class ProfilerBackend(Protocol):
    """Measures one op (an ``nn.Module`` on one input shape) on one runtime.

    ``name`` is the registry name ("torch", "onnxruntime", ...); ``version``
    the runtime's version. ``measure_module`` leaves the module as it was and
    returns statistics whose ``method`` dict holds the measurement settings
    plus ``backend``, ``backend_version`` and the backend's own options.
    """

    name: str
    version: str

    def measure_module(
        self, module: nn.Module, input_shape: tuple[int, ...], method: MeasurementMethod
    ) -> MeasurementStats: ...


def fixed_input(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A standard-normal input of this shape from a fixed seed (zeros for integer types)."""
    if np.issubdtype(np.dtype(dtype), np.integer):
        return np.zeros(shape, dtype=dtype)
    return np.random.default_rng(INPUT_SEED).standard_normal(shape).astype(dtype)


def with_backend(stats: MeasurementStats, backend: ProfilerBackend, **details: Any) -> MeasurementStats:
    """stats with the backend, its version and its options (and the yardstick's key, when one ran) added to ``method``."""
    paced = {"yardstick_key": YARDSTICK_KEY} if stats.method.get("yardstick") is True else {}
    method = {**stats.method, "backend": backend.name, "backend_version": backend.version, **paced, **details}
    return replace(stats, method=method)


def yardstick_op() -> tuple[nn.Module, tuple[int, ...]]:
    """The yardstick's module (eval mode, fixed weights) and its input shape."""
    from device_agents.profiling.ops import build_from_key

    module, input_shape = build_from_key(YARDSTICK_KEY)
    return module.eval(), input_shape


@contextlib.contextmanager
def exporter_warnings_ignored() -> Iterator[None]:
    """Silence the exporters' warnings about themselves (listed above), and only those."""
    with warnings.catch_warnings():
        for category, message in _EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode for the block; every submodule's own mode is restored after."""
    modes = [(layer, layer.training) for layer in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for layer, training in modes:
            layer.training = training
