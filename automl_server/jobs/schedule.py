"""Stage "schedule": an IOS inter-operator schedule of the exported ONNX model,
its stage costs measured on the job's device (Ding et al., MLSys 2021).

Two phases, like profiling. (1) The candidate stages the dynamic program can
price are fixed by the graph and the pruning (r, s), not by their costs
(``engine.deploy.ios.candidate_stages``), so they are enumerated first; those
whose cost the latency database already holds for this target are reused
(keyed by the stage's canonical key, a key kind of ``latency_db.keys``), the
rest go to the device's agent in chunks (``MEASURE_IOS_STAGES``) and a
recording task stores each cost. The stage re-sends itself (``StageWait``)
until all are recorded. (2) The DP runs on the recorded costs, the schedule
is written as ``schedule.json``, and the agent times the whole model side by
side under the sequential schedule, the greedy one, ONNX Runtime's own
parallel mode and the IOS schedule (``TIME_SCHEDULES``). When IOS measures
slower than sequential, the sequential schedule is the one deployed: a slower
schedule is never shipped.

``advance`` holds both phases for any ONNX file and work folder, so that the
job stage and the deploy-only endpoint (``api/schedules.py``) share them; it
raises ``Pending`` while the device still has work.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import shared_task

from automl_server.jobs.context import StageContext, StageFailed, StageWait
from automl_server.jobs.profile import POLL_S, RESEND_AFTER_S, _wait_for_device, job_target
from automl_server.jobs.spec import JobSpec

if TYPE_CHECKING:
    from celery import Celery

    from automl_server.db.engine import Database
    from automl_server.profiling import Target
    from automl_server.settings import Settings

RECORD_STAGE_COSTS = "automl.record_ios_stages"
RECORD_SCHEDULE_TIMES = "automl.record_schedule_times"
STAGES_PER_TASK = 16  # small enough that progress shows and a lost task costs little
MAX_MODEL_BYTES = 32 * 1024 * 1024  # as the verify stage: payloads up to this size travel through the broker
STATE_FILE = "schedule-state.json"
TIMES_FILE = "schedule-times.json"
SCHEDULE_FILE = "schedule.json"
IOS_SCHEDULE_FILE = "schedule-ios.json"
CANDIDATES_FILE = "schedule-candidates.json"  # the candidate stages' keys, computed once
PLAN_FILE = "schedule-plan.json"  # the DP's schedules on the recorded costs, computed once
METHODS = ("sequential", "greedy", "ort_parallel", "ios")


class Pending(Exception):
    """The device still has work for this schedule; ``fraction`` and ``data`` say how far it is."""

    def __init__(self, message: str, fraction: float, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fraction = fraction
        self.data = data


class ScheduleFailed(Exception):
    """The schedule cannot be made; the message says why and what to do."""


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _model_file(onnx_path: Path) -> Any:
    """The model as the IOS tasks carry it: without its large weights ("onnx-weightless"), which the
    agent fills; a stage's time does not depend on them and the model crosses the broker per chunk."""
    from automl_server.jobs.ios_weights import weightless_onnx
    from device_agents.protocol import ModelFile

    data = weightless_onnx(onnx_path.read_bytes())
    if len(data) > MAX_MODEL_BYTES:
        raise ScheduleFailed(f"the ONNX model is {len(data)} bytes without its weights; models up to "
                             f"{MAX_MODEL_BYTES} bytes travel to a device agent")
    return ModelFile.from_bytes("onnx-weightless", data)


def advance(db: Database, settings: Settings, celery: Celery, target: Target, onnx_path: Path, work_dir: Path,
            relative_dir: str, store: Callable[[str, Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One step of the schedule of ``onnx_path`` on ``target``: the finished
    result, or ``Pending`` after sending what the device must measure next.
    ``work_dir`` (``settings.artifacts_dir / relative_dir``) keeps its state."""
    import onnx

    from automl_server.engine.deploy.ios import (
        IOSSettings,
        RecordedCost,
        candidate_stages,
        graph_from_onnx,
        greedy_schedule,
        ios_schedule,
        schedule_to_json,
        sequential_schedule,
    )
    from automl_server.profiling import network_method, repository
    from device_agents.protocol import (
        MEASURE_IOS_STAGES,
        TIME_SCHEDULES,
        IOSStagePayload,
        MeasureStagesRequest,
        TimeSchedulesRequest,
    )

    state_path = work_dir / STATE_FILE
    state = _read(state_path)
    state.setdefault("started", time.time())
    ios_settings = IOSSettings()
    loaded: dict[str, Any] = {}

    def load() -> tuple[Any, dict[str, Any]]:
        """The graph and its candidate stages. Seconds of CPU for a large model (Inception-v3:
        2.3 s), so computed only when stages are sent and once for the DP, never on every poll:
        polling every 2 s kept one of this 2-core machine's cores busy while the device, which
        may be this machine, measured and timed schedules that need both."""
        if not loaded:
            loaded["graph"] = graph_from_onnx(onnx.load(str(onnx_path)))
            loaded["candidates"] = candidate_stages(loaded["graph"], ios_settings)
        return loaded["graph"], loaded["candidates"]

    keys_path = work_dir / CANDIDATES_FILE
    keys: list[str] | None = _read(keys_path).get("keys")
    if keys is None:
        keys = list(load()[1])
        _write(keys_path, {"keys": keys})
    repo = repository(db)
    record = repo.target(target.spec)
    missing = repo.missing(record, keys)
    state.setdefault("candidates", len(keys))
    state.setdefault("reused", len(keys) - len(missing))
    failed = repo.failures(record, missing)
    if failed:
        key, error = next(iter(failed.items()))
        raise ScheduleFailed(f"{len(failed)} stages could not be measured on {record.describe()} "
                             f"(first: {key}: {error})")

    # Phase 1: the stages the database lacks, measured on the device.
    if missing:
        seen_before = state.get("missing_left")
        if should_send_stages(state, len(missing), time.time()):
            candidates = load()[1]
            model_file = _model_file(onnx_path)
            for start in range(0, len(missing), STAGES_PER_TASK):
                chunk = [candidates[k] for k in missing[start:start + STAGES_PER_TASK]]
                payloads = tuple(IOSStagePayload(s.key, s.kind, tuple(tuple(op.name for op in g) for g in s.groups),
                                                 {op.name: tuple(op.nodes) for op in s.ops}) for s in chunk)
                request = MeasureStagesRequest(target.payload, model_file, payloads)
                celery.signature(MEASURE_IOS_STAGES, args=request.to_args(), queue=target.queue).apply_async(
                    link=celery.signature(RECORD_STAGE_COSTS, queue="default"))
            state["stages_sent_at"] = time.time()
            state["to_measure"] = max(state.get("to_measure", 0), len(missing))
            _write(state_path, state)
            missing = repo.missing(record, keys)  # an eager farm has answered already
        elif state.get("missing_left") != seen_before:
            _write(state_path, state)  # the progress seen
    if missing:
        done = state["to_measure"] - len(missing)
        elapsed = time.time() - state["stages_sent_at"]
        raise Pending(f"{done} of {state['to_measure']} stages measured on {target.device_name}",
                      0.8 * done / max(state["to_measure"], 1),
                      eta_s=elapsed / done * len(missing) if done > 0 else None, measured=done,
                      to_measure=state["to_measure"])
    state.setdefault("stages_done_at", time.time())

    # Phase 2: the DP on the recorded costs (once), then the whole model timed under each schedule.
    plan_path = work_dir / PLAN_FILE
    if not plan_path.exists():
        graph, candidates = load()
        lut = repo.lut_ms(record)
        cost = RecordedCost({k: lut[k] for k in candidates})
        ios = ios_schedule(graph, cost, ios_settings)
        sequential, greedy = sequential_schedule(graph), greedy_schedule(graph)
        search = {"candidates": len(candidates), "measured": state.get("to_measure", 0), "reused": state["reused"]}
        made: dict[str, Any] = {
            "schedules": {s.method: schedule_to_json(s, graph, ios_settings, search) for s in (sequential, greedy, ios)},
            "ops": len(graph), "num_stages": len(ios.stages), "merges": sum(s.kind == "merge" for s in ios.stages),
            "max_groups": max((len(s.groups) for s in ios.stages), default=0),
            "estimated_ms": {"ios": ios.estimated_ms, "sequential": sequential_schedule(graph, cost).estimated_ms}}
        _write(plan_path, made)
        _write(work_dir / IOS_SCHEDULE_FILE, made["schedules"]["ios"])
    plan = _read(plan_path)
    schedules = plan["schedules"]
    times_path = work_dir / TIMES_FILE
    if not times_path.exists():
        if "times_sent_at" not in state or time.time() - state["times_sent_at"] > RESEND_AFTER_S:
            timing = TimeSchedulesRequest(target.payload, _model_file(onnx_path), schedules,
                                          network_method(settings))
            celery.signature(TIME_SCHEDULES, args=timing.to_args(), queue=target.queue).apply_async(
                link=celery.signature(RECORD_SCHEDULE_TIMES, args=[relative_dir], queue="default"))
            state["times_sent_at"] = time.time()
            _write(state_path, state)
    if not times_path.exists():
        raise Pending(f"timing the model under {', '.join(METHODS)} on {target.device_name}", 0.9)
    times = _read(times_path)
    if "error" in times:
        raise ScheduleFailed(f"the device could not time the schedules: {times['error']}")
    latency = {name: times["latencies_ms"].get(name) for name in (*METHODS, "ort_sequential")}
    faster = latency["ios"] is not None and latency["sequential"] is not None and latency["ios"] < latency["sequential"]
    deployed = "ios" if faster else "sequential"
    chosen = {**schedules[deployed], "deployed": deployed, "latency_ms": latency}
    _write(work_dir / SCHEDULE_FILE, chosen)
    artifact = store("schedule", work_dir / SCHEDULE_FILE) if store else {"path": str(work_dir / SCHEDULE_FILE)}
    spent = (state.get("stages_done_at", state["started"]) - state["started"]) if "stages_sent_at" in state else 0.0
    spent += float(times.get("seconds", 0.0))
    output: dict[str, Any] = {
        "target": target.to_dict(), "ops": plan["ops"],
        "stages": [{"kind": s["kind"], "groups": s["groups"]} for s in schedules["ios"]["stages"]],
        "num_stages": plan["num_stages"], "merges": plan["merges"], "max_groups": plan["max_groups"],
        "estimated_ms": plan["estimated_ms"],
        "latency_ms": latency, "speedup": (latency["sequential"] / latency["ios"]) if latency["ios"] else None,
        "deployed": deployed, "stages_measured": state.get("to_measure", 0), "stages_reused": state["reused"],
        "candidate_stages": len(keys), "device_seconds": round(spent, 3), "schedule": artifact,
        "skipped": times.get("skipped", {}),
    }
    if not faster:
        output["note"] = ("the IOS schedule measured slower than the sequential one on this device; "
                          "the sequential schedule is deployed")
    advice = whole_graph_advice(latency, deployed)
    if advice:
        output["advice"] = advice
    return output


def should_send_stages(state: dict[str, Any], missing: int, now: float) -> bool:
    """Whether to send the missing stages (again): first, or after ``RESEND_AFTER_S`` without one
    stage arriving. Counted from the last stage that arrived, not from the first send: a large model
    (Inception-v3: 3,670 stages, about 15 minutes on one core) is still being measured after that
    time, and sending its remaining stages again doubled the device's work. ``state`` records the
    progress seen."""
    if missing < state.get("missing_left", missing + 1):
        state["missing_left"], state["progress_at"] = missing, now
    if "stages_sent_at" not in state:
        return True
    return now - max(state["stages_sent_at"], state.get("progress_at", 0.0)) > RESEND_AFTER_S


def whole_graph_advice(latency: dict[str, float | None], deployed: str) -> str | None:
    """What to tell a user when ONNX Runtime running the whole graph in one session beat every
    schedule: the schedules run through a host call per group, which a small network pays more for
    than it gains from running groups side by side; the plain runtime is then the better deployment."""
    scheduled = latency.get(deployed)
    runs = {name: latency.get(name) for name in ("ort_sequential", "ort_parallel")}
    best = min(((v, name) for name, v in runs.items() if v is not None), default=None)
    if scheduled is None or best is None or best[0] >= scheduled:
        return None
    mode = "sequential" if best[1] == "ort_sequential" else "parallel"
    return (f"ONNX Runtime's own whole-graph run ({mode} mode) measured {best[0]:.4g} ms, faster than the "
            f"deployed {deployed} schedule ({scheduled:.4g} ms): on this device, model.onnx in one session "
            f"is the faster deployment")


def schedule_model(ctx: StageContext) -> dict[str, Any]:
    """The job stage: ``advance`` on the job's exported ONNX model and device."""
    spec = JobSpec.from_params(ctx.params)
    target = job_target(ctx)
    onnx_path = ctx.job_dir() / "model.onnx"
    if not onnx_path.exists():
        raise StageFailed("no exported ONNX model to schedule; the export stage must run first")
    state_path = ctx.job_dir() / STATE_FILE
    state = _read(state_path)
    # Requests the device lost with a broker that came back empty since: ``advance`` sends them again.
    lost = [key for key in ("stages_sent_at", "times_sent_at") if ctx.broker_lost_since(state.get(key))]
    if lost:
        _write(state_path, {k: v for k, v in state.items() if k not in lost})
    _wait_for_device(ctx, spec, _read(state_path), ctx.job_dir() / "schedule-device.json",
                     "the schedule's stages need measuring on it")
    try:
        output = advance(ctx.db, ctx.settings, ctx.celery, target, onnx_path, ctx.job_dir(), ctx.job_id,
                         ctx.store_artifact)
    except Pending as pending:
        ctx.progress(pending.fraction, pending.message, device_status="online", **pending.data)
        raise StageWait(POLL_S, pending.message) from None
    except ScheduleFailed as exc:
        raise StageFailed(str(exc)) from exc
    latency = output["latency_ms"]
    if output["deployed"] == "sequential":
        ctx.event("log", output["note"], latency_ms=latency)
    else:
        ctx.event("metric", f"IOS schedule: {latency['ios']:.4g} ms vs {latency['sequential']:.4g} ms sequential "
                  f"({output['speedup']:.2f}x)", latency_ms=latency)
    return output


def _settings_of(task: Any) -> Settings:
    from automl_server.settings import settings_of

    return settings_of(task.app)


@shared_task(name=RECORD_STAGE_COSTS, bind=True, acks_late=True)
def record_stage_costs(self: Any, payload: dict[str, Any]) -> int:
    """Store an agent's stage measurements under their stage keys for the target (failures with their error)."""
    from automl_server.db.engine import get_database
    from automl_server.profiling import repository
    from device_agents.protocol import MeasureStagesReply
    from latency_db import MeasurementStats, TargetSpec

    reply = MeasureStagesReply.from_dict(payload)
    repo = repository(get_database(_settings_of(self).resolved_database_url))
    target = repo.target(TargetSpec(**reply.target.to_dict()))
    for result in reply.results:
        if result.error is not None:
            repo.record_failure(target, result.key, result.error, reply.agent_version)
        else:
            repo.record(target, result.key, MeasurementStats(**(result.stats or {})), reply.agent_version)
    return len(reply.results)


@shared_task(name=RECORD_SCHEDULE_TIMES, bind=True, acks_late=True)
def record_schedule_times(self: Any, payload: dict[str, Any], relative_dir: str) -> None:
    """Keep the agent's side-by-side timings in the schedule's work folder (read by ``advance``)."""
    from device_agents.protocol import TimeSchedulesReply

    if Path(relative_dir).is_absolute() or ".." in Path(relative_dir).parts:
        raise ValueError(f"relative_dir must name a folder under the artifacts folder, got {relative_dir!r}")
    reply = TimeSchedulesReply.from_dict(payload)
    directory = _settings_of(self).artifacts_dir / relative_dir
    directory.mkdir(parents=True, exist_ok=True)
    seconds = sum(float(s.get("method", {}).get("seconds", 0.0)) for s in reply.stats.values()) / max(
        len(reply.stats), 1)  # the rounds span the same seconds for every run: one span
    _write(directory / TIMES_FILE, {**reply.to_dict(), "seconds": seconds})
