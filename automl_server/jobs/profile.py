"""Stage "profile": make the latency database complete for this job's target.

Ops of the space (at the dataset's resolution) that the target lacks go to
the device's queue in small tasks; the stage then re-sends itself with a
countdown (``StageWait``) until they are recorded, so no worker blocks on a
device. On a target with too few whole networks measured, a few sampled
networks are measured end to end too, to calibrate the predictor. Last, the
achievable latency range of the space on this target is computed, and a
target below the fastest network fails here, early, with that range.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_server.jobs.context import StageContext, StageFailed, StageWait
from automl_server.jobs.margin import target_margin
from automl_server.jobs.spec import JobSpec
from latency_db import MIN_CALIBRATION_NETWORKS

if TYPE_CHECKING:  # imported where used, so that loading the stage loads neither torch nor the profiler
    from automl_server.db.engine import Database
    from automl_server.engine.latency import LatencyModel
    from latency_db.predictor import LatencyPredictor
    from automl_server.profiling import Target
    from search_spaces import Arch, SpaceLayout

POLL_S = 2.0
# Profiling tasks not answered after this long are sent again (their agent lost them).
RESEND_AFTER_S = 600.0
# Times the space's fastest or slowest network is timed again when every timing of it on the
# target was flagged noisy (see _retake_noisy_anchors).
ANCHOR_RETAKES = 2


def job_layout(ctx: StageContext) -> SpaceLayout:
    """The job's search space made concrete for the dataset (resolution, classes, channels)."""
    from search_spaces import get_space

    stats = ctx.results["validate"]
    height, _width, channels = stats["image_shape"]
    try:
        return get_space(ctx_space(ctx)).layout(int(height), int(stats["num_classes"]), int(channels))
    except (KeyError, ValueError) as exc:
        raise StageFailed(f"search space {ctx_space(ctx)!r} cannot be used for this dataset: {exc}") from exc


def ctx_space(ctx: StageContext) -> str:
    return str(ctx.params["space"])


def job_target(ctx: StageContext) -> Target:
    from automl_server.profiling import ProfilingError, resolve_target

    try:
        return resolve_target(ctx.db, ctx.params["device"], ctx.params["runtime"])
    except ProfilingError as exc:
        raise StageFailed(str(exc)) from exc


def extreme_archs(layout: SpaceLayout, op_model: LatencyModel) -> tuple[Arch, Arch]:
    """The space's fastest and slowest networks under ``op_model`` (cells are independent)."""
    from search_spaces import Arch, op_key
    from search_spaces.ops import ZERO

    fast: list[str] = []
    slow: list[str] = []
    for cell in layout.cells:
        costs = {block: 0.0 if block == ZERO else op_model.latency_ms(op_key(layout, cell, block))
                 for block in cell.candidates}
        fast.append(min(costs, key=costs.__getitem__))
        slow.append(max(costs, key=costs.__getitem__))
    fastest, slowest = (Arch(layout.space, layout.resolution, layout.num_classes, layout.in_channels, tuple(blocks))
                        for blocks in (fast, slow))
    return fastest, slowest


def achievable_range_ms(layout: SpaceLayout, op_model: LatencyModel) -> tuple[float, float]:
    """Predicted latency of the space's fastest and slowest networks under
    ``op_model``: the engine's one computation (``automl search`` uses it too)."""
    from automl_server.engine.search_plan import latency_range_ms

    fastest, slowest = latency_range_ms(layout, op_model)
    return float(fastest), float(slowest)


def target_range_ms(db: Database, target: Target, layout: SpaceLayout) -> tuple[float, float, LatencyPredictor]:
    """The achievable range of ``layout`` on ``target`` as the service states it
    everywhere (the profile stage records it, GET /devices/{name}/achievable-range
    and the New search page show it): the target's latency table, calibrated
    by the whole networks measured on it, rounded to 6 decimals. The same
    table gives the same range; each whole network measured later (a job's
    verify stage measures its model) refines the calibration, and so the range."""
    from automl_server.profiling import predictor
    from search_spaces import op_key

    lat = predictor(db, target, space=layout.space, resolution=layout.resolution)
    fastest, slowest = achievable_range_ms(layout, lat.op_model(op_key(layout, layout.fixed[0])))
    return round(fastest, 6), round(slowest, 6), lat


def _target_of(ctx: StageContext, fastest: float, slowest: float) -> tuple[float, str]:
    """The job's latency target, and where it came from. A request without one gets the middle
    of the achievable range (what New search suggests), written to the job so that every later
    stage, the API and the page read it like a requested one."""
    requested = ctx.params.get("latency_target_ms")
    if requested is not None:
        return float(requested), "request"
    from automl_server.db.models import Job

    target_ms = round((fastest + slowest) / 2, 6)
    with ctx.db.session() as session:
        session.get_one(Job, ctx.job_id).latency_target_ms = target_ms
    ctx.params["latency_target_ms"] = target_ms
    ctx.event("log", f"no latency target was given: {target_ms:.4g} ms, the middle of the achievable range "
              f"{fastest:.4g}-{slowest:.4g} ms on this device", target_ms=target_ms, target_source="range middle")
    return target_ms, "range middle"


def _state(ctx: StageContext) -> tuple[Path, dict[str, Any]]:
    path = ctx.job_dir() / "profile-state.json"
    return path, (json.loads(path.read_text()) if path.exists() else {})


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _wait_for_device(ctx: StageContext, spec: JobSpec, state: dict[str, Any], path: Path, why: str) -> None:
    """Wait (without a worker) for an offline device, up to ``device_wait_s``; then fail."""
    from automl_server.profiling import offline_since

    device = ctx.params["device"]
    last = offline_since(ctx.db, device, ctx.settings.heartbeat_timeout_s)
    if last is None:
        state.pop("offline_since", None)
        return
    first_seen = state.setdefault("offline_since", time.time())
    _save_state(path, state)
    waited = time.time() - first_seen
    fix = f"start its agent (automl agent --device {device})"
    if waited >= spec.device_wait_s:
        raise StageFailed(f"device {device!r} is offline (last heartbeat: {last}) and {why}; waited "
                          f"{waited:.0f} s. {fix}, then re-run this job")
    ctx.progress(0.0, f"waiting for device {device!r}: offline (last heartbeat: {last}); {fix}",
                 device_status="offline", waited_s=round(waited, 1), gives_up_after_s=spec.device_wait_s)
    raise StageWait(POLL_S, f"device {device} offline")


def _retake_noisy_anchors(ctx: StageContext, spec: JobSpec, state: dict[str, Any], path: Path,
                          layout: SpaceLayout, target: Target, networks: list[Any]) -> None:
    """Time the space's fastest or slowest network again (at most ``ANCHOR_RETAKES`` times) when
    every timing of it on this target was flagged noisy; raises StageWait while the device times it.

    Why: the two extremes are what the calibration interpolates between (see the networks sent
    above); without a usable timing of one, the fit extrapolates to that end of the range from
    networks in the middle. On this 2-core VM (proxyless-mobile at 32 px, 2026-12-07) the
    fastest network, the first timed after the op profile, was flagged (its yardstick moved 51%,
    the bound 50%; its own timing 0.498 ms); the fit through the other 15 put it at -0.045 ms,
    and the job's range, its targets' shares and its loss read -0.045-3.019 ms. A second timing
    a minute later is a new sample of the device's load; a flagged one never calibrates."""
    from automl_server.profiling import dispatch_network_measurement, network_method, predictor

    def timings(arch: Arch) -> list[Any]:
        return [n for n in networks if n.arch.get("blocks") == list(arch.blocks)]

    anchors = extreme_archs(layout, predictor(ctx.db, target, calibrated=False))
    noisy = [(name, arch) for name, arch in zip(("fastest", "slowest"), anchors)
             if timings(arch) and not any(n.usable for n in timings(arch))]
    sent_at = state.get("anchors_sent_at")
    if sent_at is not None:
        arrived = len(networks) - state["anchors_before"]
        if noisy and arrived < state["anchors_to_measure"] and time.time() - sent_at < RESEND_AFTER_S:
            _wait_for_device(ctx, spec, state, path, "the space's fastest and slowest networks need timing again")
            ctx.progress(0.99, f"timing the space's {' and '.join(name for name, _ in noisy)} network again "
                         f"(try {state['anchor_retakes']} of {ANCHOR_RETAKES})", device_status="online")
            raise StageWait(POLL_S, "extreme networks being timed again")
        del state["anchors_sent_at"]  # answered (usable or flagged again) or lost
        _save_state(path, state)
    if not noisy or state.get("anchor_retakes", 0) >= ANCHOR_RETAKES:
        return
    _wait_for_device(ctx, spec, state, path, "the space's fastest and slowest networks need timing again")
    reason = timings(noisy[0][1])[-1].unreliable_reason
    ctx.event("log", f"every timing of the space's {' and '.join(name for name, _ in noisy)} network on this target "
              f"was flagged noisy ({reason}); timing it again, because the calibration rests on it at that end of "
              "the achievable range", anchors=[name for name, _ in noisy])
    for _, arch in noisy:
        dispatch_network_measurement(ctx.celery, target, arch, network_method(ctx.settings))
    state.update(anchors_sent_at=time.time(), anchors_to_measure=len(noisy), anchors_before=len(networks),
                 anchor_retakes=state.get("anchor_retakes", 0) + 1)
    _save_state(path, state)
    raise StageWait(POLL_S, "extreme networks being timed again")


def profile_target(ctx: StageContext) -> dict[str, Any]:
    from automl_server.profiling import (
        dispatch_network_measurement,
        dispatch_profiling,
        network_method,
        op_method,
        predictor,
        repository,
    )
    from search_spaces import sample_archs, space_keys

    spec = JobSpec.from_params(ctx.params)
    layout = job_layout(ctx)
    target = job_target(ctx)
    repo = repository(ctx.db)
    record = repo.target(target.spec)
    keys = space_keys(layout)
    path, state = _state(ctx)
    state.setdefault("started", time.time())

    missing = repo.missing(record, keys)
    failed = repo.failures(record, missing)
    if failed:
        key, error = next(iter(failed.items()))
        raise StageFailed(f"{len(failed)} ops of space {layout.space!r} could not be measured on "
                          f"{record.describe()} (first: {key}: {error}); choose another runtime or space")
    if missing:
        _wait_for_device(ctx, spec, state, path, f"{len(missing)} of {len(keys)} ops still need measuring")
        resend = (time.time() - state.get("ops_sent_at", 0) > RESEND_AFTER_S
                  or ctx.broker_lost_since(state.get("ops_sent_at")))
        if "ops_sent_at" not in state or resend:
            dispatch_profiling(ctx.celery, target, missing, op_method(ctx.settings))
            state["ops_sent_at"] = time.time()
            state["ops_to_measure"] = max(state.get("ops_to_measure", 0), len(missing))
            _save_state(path, state)
        done = state["ops_to_measure"] - len(missing)
        elapsed = time.time() - state["ops_sent_at"]
        eta = elapsed / done * len(missing) if done > 0 else None
        ctx.progress(0.8 * done / max(state["ops_to_measure"], 1),
                     f"{done} of {state['ops_to_measure']} ops measured on {target.device_name}",
                     eta_s=eta, measured=done, to_measure=state["ops_to_measure"], device_status="online")
        raise StageWait(POLL_S, "ops being measured")

    networks = [n for n in repo.networks(record)
                if n.arch.get("space") == layout.space and n.arch.get("resolution") == layout.resolution]
    wanted = max(spec.calibration_networks, MIN_CALIBRATION_NETWORKS) if spec.calibration_networks else 0
    if len(networks) < wanted:
        if ctx.broker_lost_since(state.get("networks_sent_at")):
            del state["networks_sent_at"]  # lost with a broker that came back empty: sent again now
        if "networks_sent_at" not in state:
            _wait_for_device(ctx, spec, state, path, "the predictor's calibration networks need measuring")
            # The space's two extremes anchor the fit, so that it interpolates
            # over the whole achievable range instead of extrapolating to its ends.
            archs = [*extreme_archs(layout, predictor(ctx.db, target, calibrated=False)),
                     *sample_archs(layout.space, max(wanted - len(networks) - 2, 0), spec.seed + 7,
                                   layout.resolution, layout.num_classes, layout.in_channels)]
            for arch in archs:
                dispatch_network_measurement(ctx.celery, target, arch, network_method(ctx.settings))
            state["networks_sent_at"] = time.time()
            state["networks_to_measure"] = len(archs)
            state["networks_before"] = len(networks)
            _save_state(path, state)
        if time.time() - state["networks_sent_at"] < RESEND_AFTER_S:
            _wait_for_device(ctx, spec, state, path, "the predictor's calibration networks need measuring")
            done = len(networks) - state["networks_before"]
            ctx.progress(0.8 + 0.2 * done / state["networks_to_measure"],
                         f"{done} of {state['networks_to_measure']} whole networks measured for the calibration",
                         measured_networks=done, device_status="online")
            raise StageWait(POLL_S, "networks being measured")
        ctx.event("log", "calibration networks did not all arrive; predicting with what was measured",
                  measured=len(networks))
    if wanted:
        _retake_noisy_anchors(ctx, spec, state, path, layout, target, networks)

    fastest, slowest, lat = target_range_ms(ctx.db, target, layout)
    if lat.calibration_error:
        ctx.event("log", f"predicting without calibration: {lat.calibration_error}")
    if fastest <= 0:
        ctx.event("warning", f"the calibrated predictor puts the space's fastest network at {fastest:.4g} ms: the "
                  "calibration extrapolates past the networks measured on this target, and the achievable range's "
                  "low end means nothing. Time the space's fastest network on it when the device is quiet (automl "
                  "latency measure --arch FILE), or give the job a target inside the range of the networks measured",
                  achievable_ms=[fastest, slowest])
    flagged = [n for n in networks if not n.usable]
    if flagged:
        ctx.event("log", f"{len(flagged)} of {len(networks)} networks measured on this target stayed noisy through "
                  f"their retakes and do not calibrate the predictor (first: {flagged[0].unreliable_reason})",
                  unreliable_networks=len(flagged), measured_networks=len(networks))
    target_ms, target_source = _target_of(ctx, fastest, slowest)
    device_seconds = time.time() - state["started"] if ("ops_sent_at" in state or "networks_sent_at" in state) else 0.0
    output = {
        "target": target.to_dict(), "ops": len(keys), "ops_measured_now": state.get("ops_to_measure", 0),
        "networks_measured_now": state.get("networks_to_measure", 0),
        "calibration": lat.calibration.to_dict() if lat.calibration else None,
        # The predictor's error on networks left out of its fit: the job's margin under the
        # target and the interval of every prediction it reports (jobs/margin.target_margin).
        "predictor_error": lat.heldout.to_dict() if lat.heldout else None,
        "unreliable_networks": len(flagged),
        "achievable_ms": [round(fastest, 6), round(slowest, 6)], "device_seconds": round(device_seconds, 3),
        "target_ms": target_ms, "target_source": target_source,
        "resolution": layout.resolution, "num_classes": layout.num_classes, "in_channels": layout.in_channels,
    }
    margin, source = target_margin(output)
    output["target_margin"] = {"margin": round(margin, 6), "source": source,
                               "predicted_at_most_ms": round(target_ms * (1 - margin), 6)}
    ctx.event("metric", f"achievable latency on {target.device_name}: {fastest:.4g}-{slowest:.4g} ms; the network "
              f"is kept {margin:.1%} under the target ({source})",
              achievable_ms=output["achievable_ms"], target_ms=target_ms, target_margin=output["target_margin"])
    if target_ms < fastest and spec.stop_after == "profile":
        # A profile-only job ("Measure it" on New search) measures; the range is its answer, not a refusal.
        ctx.event("log", f"latency target {target_ms:g} ms is below the fastest network ({fastest:.4g} ms): a search "
                  "job needs a target in the range", achievable_ms=output["achievable_ms"])
    elif target_ms < fastest:
        raise StageFailed(f"latency target {target_ms:g} ms is below the fastest network of space "
                          f"{layout.space!r} on {target.device_name} ({target.runtime}): achievable "
                          f"{fastest:.4g}-{slowest:.4g} ms. Choose a target in that range, or a faster "
                          "device or a smaller space")
    if target_ms > slowest:
        ctx.event("log", f"latency target {target_ms:g} ms is above the slowest network ({slowest:.4g} ms): "
                  "every network meets it, so the search optimises accuracy alone", achievable_ms=output["achievable_ms"])
    return output
