"""Profiler backends, one runtime per module, found by name through a registry.

``get_backend("onnxruntime", provider="CPUExecutionProvider")`` makes one;
a new runtime is one ``register_backend`` call. Runtimes are imported when a
backend is made, so an agent needs only the runtimes it actually uses.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from device_agents.profiling.backends.base import BackendUnavailable, ConverterMissing, ProfilerBackend
from device_agents.profiling.backends.litert_backend import LiteRTBackend
from device_agents.profiling.backends.onnxruntime_backend import OnnxRuntimeBackend
from device_agents.profiling.backends.torch_backend import TorchBackend

_REGISTRY: dict[str, Callable[..., ProfilerBackend]] = {}


def register_backend(name: str, factory: Callable[..., ProfilerBackend]) -> None:
    """Make ``get_backend(name, **options)`` call ``factory(**options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a backend name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def get_backend(name: str, **options: Any) -> ProfilerBackend:
    """The backend registered under ``name``, made with ``options``.

    ValueError for an unknown name (listing the known ones); BackendUnavailable
    when the runtime, device or provider is missing here.
    """
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown profiler backend {name!r}; known: {', '.join(backend_names())}") from None
    return factory(**options)


def backend_names() -> list[str]:
    """Registered backend names, in registration order."""
    return list(_REGISTRY)


register_backend("torch", lambda **options: TorchBackend("cpu", **options))
register_backend("torch-cuda", lambda **options: TorchBackend("cuda", **options))
register_backend("onnxruntime", OnnxRuntimeBackend)
register_backend("litert", LiteRTBackend)


def _android(**options: Any) -> ProfilerBackend:
    # Imported on use: adb-shell is needed only next to a phone.
    from device_agents.android.profiler import AndroidProfilerBackend

    return AndroidProfilerBackend(**options)


register_backend("android", _android)

__all__ = [
    "BackendUnavailable",
    "ConverterMissing",
    "LiteRTBackend",
    "OnnxRuntimeBackend",
    "ProfilerBackend",
    "TorchBackend",
    "backend_names",
    "get_backend",
    "register_backend",
]
