"""The whole path for one latency key (build the op it names, measure it on a
backend), and for whole networks (timed side by side where the backend can)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from device_agents.profiling.backends import ProfilerBackend
from device_agents.profiling.method import MeasurementMethod, cpu_affinity
from device_agents.profiling.ops import build_from_key
from latency_db.keys import OpKey
from latency_db.records import MeasurementStats


def profile_key(
    backend: ProfilerBackend, key: str | OpKey, method: MeasurementMethod, batch: int = 1
) -> MeasurementStats:
    """The statistics of the op ``key`` names, run at ``batch`` on ``backend`` with ``method``."""
    module, input_shape = build_from_key(key, batch=batch)
    return backend.measure_module(module, input_shape, method)


@dataclass(frozen=True)
class NetworkToTime:
    """One whole network to time: a module and its input shape, or an exported file timed as it is."""

    module: nn.Module | None = None
    input_shape: tuple[int, ...] | None = None
    path: Path | None = None  # a .onnx or .tflite file, for the backend whose runtime loads it

    def __post_init__(self) -> None:
        if (self.path is None) == (self.module is None) or (self.module is not None and self.input_shape is None):
            raise ValueError("a NetworkToTime is either a module with its input_shape, or a model file's path")

    def as_module(self) -> tuple[nn.Module, tuple[int, ...]]:
        """(module, input_shape) of a network given as a module; ValueError for a model file."""
        if self.module is None or self.input_shape is None:
            raise ValueError(f"{self.path} is a model file, not a module with its input shape")
        return self.module, self.input_shape


def measure_networks(
    backend: ProfilerBackend, networks: Sequence[NetworkToTime], method: MeasurementMethod
) -> list[MeasurementStats | Exception]:
    """Time whole networks on ``backend``, one after the other, each in rounds
    with the yardstick spanning ``method.min_seconds``
    (``method.measure_interleaved``) when the backend can hold a network open
    (``open_module``/``open_file``/``measure_runs``), else the backend's own
    way (a phone's ``benchmark_model`` runs each model in a process of its own).

    One network at a time, not side by side with the others: a network timed
    in rounds among other networks is timed with the cache they leave behind.
    On this project's 2-core VM, 50 networks of proxyless-mobile at 64 px (LiteRT)
    came out 30% slower side by side than alone, and a calibration fitted on 20
    of them predicted only 80% of the others within 10%, against 100% timed one
    at a time (bench/bench_predictor.py, README).

    One result per network, in order: its statistics, or the exception that
    stopped it (a network that cannot be converted or loaded); the others are
    still timed.
    """
    results: list[MeasurementStats | Exception] = []
    for network in networks:
        try:
            if not hasattr(backend, "measure_runs"):
                results.append(_measure_alone(backend, network, method))
                continue
            # Sessions and interpreters start their thread pools when they are made: pin first.
            with cpu_affinity(method.affinity):
                run = open_network(backend, network, method)
                (stats,) = backend.measure_runs([run], method)
            results.append(stats)
        except Exception as exc:  # noqa: BLE001 - reported for this network, the others go on
            results.append(exc)
    return results


def open_network(backend: ProfilerBackend, network: NetworkToTime, method: MeasurementMethod
                 ) -> Callable[[], object]:
    """One inference of ``network``, loaded on ``backend`` (``open_file`` or ``open_module``)."""
    if network.path is not None:
        if not hasattr(backend, "open_file"):
            raise ValueError(f"backend {backend.name!r} cannot load a model file ({network.path.name}); "
                             "give the network as a module")
        return backend.open_file(network.path, method)
    if not hasattr(backend, "open_module"):
        raise ValueError(f"backend {backend.name!r} cannot hold a network open; time it with measure_networks")
    return backend.open_module(*network.as_module(), method)


def _measure_alone(backend: ProfilerBackend, network: NetworkToTime, method: MeasurementMethod) -> MeasurementStats:
    """A network timed by a backend that cannot hold it open: its own measure_* call."""
    if network.path is not None:
        runner = {".onnx": "measure_onnx", ".tflite": "measure_tflite"}.get(network.path.suffix, "")
        if not hasattr(backend, runner):
            raise ValueError(f"backend {backend.name!r} cannot time {network.path.name} as it is")
        return getattr(backend, runner)(network.path, method)
    return backend.measure_module(*network.as_module(), method)
