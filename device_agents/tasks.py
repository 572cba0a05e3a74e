"""The Celery tasks a device agent runs: measure operators, or whole networks,
on its device, or fine-tune a network there (sparse update, ONNX Runtime training).

They are sent by name to the queue ``device.<name>`` and consumed only by the
agent next to that device. Their names, arguments and replies are the
contract in ``device_agents.protocol``; they return plain JSON, which the
service records with a linked task on its own queue, so an agent on a Pi or
a phone host needs the broker, not the database.
"""
from __future__ import annotations

import dataclasses
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import shared_task

from device_agents.protocol import (
    FINETUNE_ON_DEVICE,
    MEASURE_IOS_STAGES,
    MEASURE_NETWORK,
    PROFILE_OPS,
    TIME_SCHEDULES,
    MeasureNetworkReply,
    MeasureNetworkRequest,
    MeasureStagesRequest,
    FineTuneRequest,
    OpResult,
    ProfileOpsReply,
    ProfileOpsRequest,
    TimeSchedulesRequest,
)

if TYPE_CHECKING:  # the profiler (torch and the runtimes) is imported when a task runs
    from device_agents.profiling import MeasurementMethod, ProfilerBackend
    from latency_db.records import MeasurementStats

__all__ = ["FINETUNE_ON_DEVICE", "MEASURE_IOS_STAGES", "MEASURE_NETWORK", "PROFILE_OPS", "TIME_SCHEDULES",
           "finetune_on_device", "measure_ios_stages", "measure_network", "profile_ops", "time_schedules"]
# The profiler backend that runs each runtime a device can register.
RUNTIME_BACKENDS = {"pytorch": "torch", "onnxruntime": "onnxruntime", "litert": "litert"}
# The runtime each backend measures (an Android phone runs LiteRT through benchmark_model).
BACKEND_RUNTIMES = {"torch": "pytorch", "torch-cuda": "pytorch", "onnxruntime": "onnxruntime", "litert": "litert",
                    "android": "litert"}
# Set by `automl agent` before its worker starts: {"backend": name or None, "backend_options": {...}}.
AGENT_CONFIG: dict[str, Any] = {}


class WrongRuntime(RuntimeError):
    pass


def backend_for(runtime: str) -> ProfilerBackend:
    """The backend measuring ``runtime`` here: the agent's own when it was
    started with --backend, else the default backend of that runtime."""
    from device_agents.profiling import get_backend

    configured = AGENT_CONFIG.get("backend")
    if configured:
        if BACKEND_RUNTIMES.get(configured) != runtime:
            raise WrongRuntime(f"this agent measures with backend {configured!r} "
                               f"(runtime {BACKEND_RUNTIMES.get(configured)!r}), not runtime {runtime!r}")
        return get_backend(configured, **AGENT_CONFIG.get("backend_options", {}))
    if runtime not in RUNTIME_BACKENDS:
        raise WrongRuntime(f"no profiler backend for runtime {runtime!r}; known: {', '.join(RUNTIME_BACKENDS)}")
    return get_backend(RUNTIME_BACKENDS[runtime])


def _method(threads: int, method: dict[str, Any]) -> MeasurementMethod:
    from device_agents.profiling import MeasurementMethod

    # The target's thread count, unless the request's method names its own.
    return MeasurementMethod(**{"threads": threads, **method})


@shared_task(name=PROFILE_OPS, acks_late=True)
def profile_ops(target: dict[str, Any], keys: list[str], method: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure each op key (``ProfileOpsRequest``; returns a ``ProfileOpsReply``
    as a dict); an op that fails is reported with its error and the others
    still run, so one bad op never loses a batch of measurements."""
    from device_agents.agent import AGENT_VERSION
    from device_agents.profiling import build_from_key
    from device_agents.profiling.contention import measure_checked

    request = ProfileOpsRequest.from_args(target, keys, method)
    results: list[OpResult] = []
    try:
        backend = backend_for(request.target.backend)
        settings = _method(request.target.threads, request.method)
    except Exception as exc:  # noqa: BLE001 - every op gets the reason
        error = f"{exc.__class__.__name__}: {exc}"
        return ProfileOpsReply(request.target, AGENT_VERSION,
                               tuple(OpResult(k, error=error) for k in request.keys)).to_dict()
    for key in request.keys:
        try:
            module, input_shape = build_from_key(key)
            # Retaken while noisy, flagged unreliable if it stays so; the cores held from training.
            stats = measure_checked(lambda: backend.measure_module(module, input_shape, settings), settings)
            results.append(OpResult(key, stats=dataclasses.asdict(stats)))
        except Exception as exc:  # noqa: BLE001 - reported per op, by design
            results.append(OpResult(key, error=f"{exc.__class__.__name__}: {exc}",
                                    trace=traceback.format_exc(limit=3)))
    return ProfileOpsReply(request.target, AGENT_VERSION, tuple(results)).to_dict()


@shared_task(name=MEASURE_NETWORK, acks_late=True)
def measure_network(target: dict[str, Any], arch: dict[str, Any], method: dict[str, Any] | None = None,
                    model_file: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure a whole network end to end (the predictor's calibration data):
    a ``MeasureNetworkRequest``, answered with a ``MeasureNetworkReply`` as a dict.

    With ``model_file`` the exported file itself is timed, when this agent's
    backend runs that format; otherwise the architecture is rebuilt and
    exported here as for any network.
    """
    from device_agents.agent import AGENT_VERSION
    from device_agents.profiling import NetworkToTime, measure_networks
    from device_agents.profiling.contention import measure_checked
    from search_spaces import Arch, build_model

    request = MeasureNetworkRequest.from_args(target, arch, method, model_file)
    spec = Arch.from_dict(request.arch)
    measured_file = False
    try:
        backend = backend_for(request.target.backend)
        settings = _method(request.target.threads, request.method)
        shipped = request.model_file
        runner = {"onnx": "measure_onnx", "tflite": "measure_tflite"}.get(shipped.format if shipped else "")
        with tempfile.TemporaryDirectory(prefix="automl-model-") as tmp:
            if shipped is not None and runner and hasattr(backend, runner):
                path = Path(tmp) / f"model.{shipped.format}"
                path.write_bytes(shipped.data())
                network = NetworkToTime(path=path)
                measured_file = True
            else:
                network = NetworkToTime(build_model(spec).eval(),
                                        (1, spec.in_channels, spec.resolution, spec.resolution))
            # A network is timed in rounds with the yardstick spanning method.min_seconds
            # (method.measure_interleaved), alone: side by side with other networks it
            # would be timed with the cache they leave (see profiler.measure_networks).
            def take() -> MeasurementStats:
                (result,) = measure_networks(backend, [network], settings)
                if isinstance(result, Exception):
                    raise result
                return result

            # Retaken while noisy, flagged unreliable if it stays so; the cores held from training.
            stats = measure_checked(take, settings)
    except Exception as exc:  # noqa: BLE001 - the service stores the reason
        return MeasureNetworkReply(request.target, request.arch, AGENT_VERSION,
                                   error=f"{exc.__class__.__name__}: {exc}").to_dict()
    return MeasureNetworkReply(request.target, request.arch, AGENT_VERSION, measured_ms=stats.median_ms,
                               stats=dataclasses.asdict(stats), measured_file=measured_file).to_dict()


def _ios_yardstick(runtime: str) -> Any:
    """The yardstick of the runtime's profiler backend (method -> run), so that IOS
    timings are paced like op measurements; None when the backend has none."""
    try:
        backend = backend_for(runtime)
    except WrongRuntime:
        return None
    stick = getattr(backend, "_yardstick", None)
    if stick is None:
        return None
    import inspect

    # The ONNX Runtime backend makes its yardstick per method (thread count), PyTorch's has one.
    takes_method = len(inspect.signature(stick).parameters) >= 1
    return lambda method: stick(method) if takes_method else stick()


@shared_task(name=MEASURE_IOS_STAGES, acks_late=True)
def measure_ios_stages(target: dict[str, Any], model_file: dict[str, Any], stages: list[dict[str, Any]],
                       method: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time candidate stages of an IOS schedule (``MeasureStagesRequest`` ->
    ``MeasureStagesReply`` as a dict; device_agents.ios.remote)."""
    from device_agents.agent import AGENT_VERSION
    from device_agents.ios.remote import measure_stages

    from device_agents import cores

    request = MeasureStagesRequest.from_args(target, model_file, stages, method)
    with cores.measuring():  # training on this machine pauses meanwhile
        return measure_stages(request, AGENT_VERSION, _ios_yardstick(request.target.backend)).to_dict()


@shared_task(name=TIME_SCHEDULES, acks_late=True)
def time_schedules(target: dict[str, Any], model_file: dict[str, Any], schedules: dict[str, Any],
                   method: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time a model under several schedules side by side (``TimeSchedulesRequest`` ->
    ``TimeSchedulesReply`` as a dict; device_agents.ios.remote)."""
    from device_agents.agent import AGENT_VERSION
    from device_agents.ios.remote import time_schedules as run

    from device_agents import cores

    request = TimeSchedulesRequest.from_args(target, model_file, schedules, method)
    with cores.measuring():  # training on this machine pauses meanwhile
        return run(request, AGENT_VERSION, _ios_yardstick(request.target.backend)).to_dict()


@shared_task(name=FINETUNE_ON_DEVICE, acks_late=True)
def finetune_on_device(target: dict[str, Any], model_file: dict[str, Any], trainable: list[str], data_b64: str,
                       steps: int, lr: float, batch: int) -> dict[str, Any]:
    """Sparse-update fine-tuning steps with ONNX Runtime training here (``FineTuneRequest``
    -> ``FineTuneReply`` as a dict; device_agents.ort_training_runner)."""
    from device_agents.agent import AGENT_VERSION
    from device_agents.ort_training_runner import run_finetune

    request = FineTuneRequest.from_args(target, model_file, trainable, data_b64, steps, lr, batch)
    return run_finetune(request, AGENT_VERSION).to_dict()
