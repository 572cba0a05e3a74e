"""The agent's side of IOS scheduling: time the candidate stages of a shipped
ONNX model, and the whole model under several schedules side by side.

Called by the agent tasks ``MEASURE_IOS_STAGES`` and ``TIME_SCHEDULES``
(``device_agents.tasks``), with the payloads of ``device_agents.protocol``.
Stages run on the kernels of the target's runtime: ONNX Runtime (one session
per operator, ``ort_program``) for "onnxruntime" targets, PyTorch
(``program``) for "pytorch" ones, on a ``CpuExecutor`` that owns the
target's thread count.

How a stage is timed: the paper's IOSCostModel (warm-up 2, then 6 rounds of 6
runs; the latency is the mean of the rounds' means) expressed as a
``MeasurementMethod`` (warmup 2, blocks of 6 runs, exactly 6 blocks), timed by
``device_agents.profiling.measure`` so that each block is paired with the
backend's yardstick like every other latency of the service: the latency
database then stores it at the target's pace. Deviation, stated: the figure
stored is the median of the block means (the database's ``median_ms``), not
their mean.

How schedules are compared: ``measure_interleaved``, one block of each per
round in a shuffled order, rounds spanning ``min_seconds`` (the service's
network measurement time), so that load from elsewhere falls on all of them
alike. Each scheduled run is first checked against the sequential run's
outputs.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from device_agents.ios.executor import CpuExecutor
from device_agents.ios.ort_program import OrtModelProgram, whole_graph_session
from device_agents.ios.program import OnnxModelProgram, ScheduledModel
from device_agents.ios.weights import load_model_file
from device_agents.protocol import (
    IOS_RUNTIMES,
    MeasureStagesReply,
    MeasureStagesRequest,
    ModelFile,
    OpResult,
    TargetPayload,
    TimeSchedulesReply,
    TimeSchedulesRequest,
)

YardstickFor = Callable[[Any], "Callable[[], object] | None"]  # MeasurementMethod -> yardstick run
# The reference's IOSCostModel: warmup 2, number 6, repeat 6.
STAGE_METHOD: dict[str, Any] = {"warmup": 2, "block_size": 6, "min_block_ms": 0.0, "min_blocks": 6, "max_blocks": 6}
# Outputs of a scheduled run may differ from the sequential run's by float rounding only.
TOLERANCE = 1e-3
RUNTIMES = IOS_RUNTIMES


def _program(model: onnx.ModelProto, target: TargetPayload) -> Any:
    if target.backend == "onnxruntime":
        return OrtModelProgram(model, target.threads)
    if target.backend == "pytorch":
        return OnnxModelProgram(model, "cpu")
    raise ValueError(f"IOS schedules run on the runtimes {', '.join(RUNTIMES)}, not {target.backend!r}")


def _inputs(model: onnx.ModelProto, program: Any) -> list[Any]:
    """A fixed random input per model input (symbolic dimensions as 1), as the program feeds them."""
    import torch

    shapes = {i.name: tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                            for d in i.type.tensor_type.shape.dim) for i in model.graph.input}
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shapes[name]).astype(np.float32) for name in program.inputs]
    return arrays if isinstance(program, OrtModelProgram) else [torch.from_numpy(a) for a in arrays]


def _method(threads: int, defaults: dict[str, Any], overrides: dict[str, Any]) -> Any:
    from device_agents.profiling import MeasurementMethod

    return MeasurementMethod(**{"threads": threads, **defaults, **overrides})


@dataclasses.dataclass
class _Prepared:
    model: onnx.ModelProto
    program: Any
    inputs: list[Any]
    env: dict[str, Any]  # every tensor of one sequential run on ``inputs``


_last: tuple[tuple[str, str, int], _Prepared] | None = None


def _prepare(model_file: ModelFile, target: TargetPayload) -> _Prepared:
    """The model loaded, its program built (one session per operator) and run once; the last one
    is kept: a schedule sends the same model in many chunks of stages, and rebuilding it took
    about 1.5 s per chunk for Inception-v3 (230 chunks). The agent's worker runs one task at a time
    (``--pool solo``), so one entry and no lock."""
    global _last
    key = (hashlib.sha256(model_file.b64.encode()).hexdigest(), target.backend, target.threads)
    if _last is not None and _last[0] == key:
        return _last[1]
    _last = None  # the previous model's sessions go before the next one's are made
    model = load_model_file(model_file)
    program = _program(model, target)
    inputs = _inputs(model, program)
    prepared = _Prepared(model, program, inputs, program.all_tensors(*inputs))
    _last = (key, prepared)
    return prepared


def measure_stages(request: MeasureStagesRequest, agent_version: str,
                   yardstick_for: YardstickFor | None = None) -> MeasureStagesReply:
    """Each stage's statistics (or its error, the other stages still measured)."""
    from device_agents.profiling import measure

    try:
        prepared = _prepare(request.model_file, request.target)
        program, env = prepared.program, prepared.env
        method = _method(request.target.threads, STAGE_METHOD, request.method)
        stick = yardstick_for(method) if yardstick_for else None
    except Exception as exc:  # noqa: BLE001 - every stage gets the reason
        error = f"{exc.__class__.__name__}: {exc}"
        return MeasureStagesReply(request.target, agent_version,
                                  tuple(OpResult(s.key, error=error) for s in request.stages))
    results: list[OpResult] = []
    executor = CpuExecutor(threads=request.target.threads)
    try:
        for stage in request.stages:
            try:
                runnable = program.stage(stage.kind, stage.groups, stage.ops)
                state = dict(env)
                stats = measure(lambda: runnable.run(state, executor), method, yardstick=stick)
                stats = dataclasses.replace(stats, method={**stats.method, "ios_stage": stage.kind,
                                                           "groups": len(stage.groups)})
                results.append(OpResult(stage.key, stats=dataclasses.asdict(stats)))
            except Exception as exc:  # noqa: BLE001 - reported per stage, by design
                results.append(OpResult(stage.key, error=f"{exc.__class__.__name__}: {exc}"))
    finally:
        executor.close()  # no worker thread outlives the task
    return MeasureStagesReply(request.target, agent_version, tuple(results))


def _ort_session(model_bytes: bytes, parallel: bool, threads: int) -> Callable[[], object]:
    session = whole_graph_session(model_bytes, parallel, threads)
    feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], np.float32)
             for i in session.get_inputs()}
    return lambda: session.run(None, feeds)


def time_schedules(request: TimeSchedulesRequest, agent_version: str,
                   yardstick_for: YardstickFor | None = None) -> TimeSchedulesReply:
    """Milliseconds per inference under each schedule and ONNX Runtime's two modes, side by side."""
    from device_agents.profiling import measure_interleaved

    executor = CpuExecutor(threads=request.target.threads)
    skipped: dict[str, str] = {}
    try:
        prepared = _prepare(request.model_file, request.target)
        program, inputs = prepared.program, prepared.inputs
        data = prepared.model.SerializeToString()
        reference = [np.asarray(prepared.env[name]) for name in program.outputs]
        runs: dict[str, Callable[[], object]] = {}
        for name, schedule in request.schedules.items():
            scheduled = ScheduledModel(program, schedule)
            got = [np.asarray(t) for t in scheduled(*inputs, executor=executor)]
            diff = max(float(np.abs(a - b).max()) for a, b in zip(got, reference))
            scale = max(1.0, max(float(np.abs(b).max()) for b in reference))
            if diff > TOLERANCE * scale:
                raise ValueError(f"schedule {name!r} computes other outputs than the sequential run "
                                 f"(max |diff| {diff:.3g})")
            runs[name] = functools.partial(scheduled, *inputs, executor=executor)
        for name, parallel in (("ort_sequential", False), ("ort_parallel", True)):
            try:
                runs[name] = _ort_session(data, parallel, request.target.threads)
            except Exception as exc:  # noqa: BLE001 - onnxruntime may be missing next to a PyTorch target
                skipped[name] = f"{exc.__class__.__name__}: {exc}"
        method = _method(request.target.threads, {}, request.method)
        stick = yardstick_for(method) if yardstick_for else None
        stats = measure_interleaved(list(runs.values()), method, yardstick=stick)
    except Exception as exc:  # noqa: BLE001 - the service shows the reason
        return TimeSchedulesReply(request.target, agent_version, skipped=skipped,
                                  error=f"{exc.__class__.__name__}: {exc}")
    finally:
        executor.close()
    return TimeSchedulesReply(request.target, agent_version,
                              {name: s.median_ms for name, s in zip(runs, stats)},
                              {name: dataclasses.asdict(s) for name, s in zip(runs, stats)}, skipped)
