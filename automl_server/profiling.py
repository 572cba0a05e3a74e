"""Profiling on the device farm, service side.

What a search on a target needs measured (`missing_ops`), how
the work is sent to the device's agent (`dispatch_profiling`,
`dispatch_network_measurement`, by task name on ``device.<name>``), and the
task that records what the agent sends back (on the service's ``default``
queue, where the database is). Task names, queues and payloads are the
contract in ``device_agents.protocol``, which the agent reads too. A hardware target is a device plus one of its
runtimes, with a thread count.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from celery import Celery, shared_task
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from automl_server.db.engine import Database, get_database
from automl_server.db.models import Device
from device_agents.protocol import (
    MEASURE_NETWORK,
    PROFILE_OPS,
    MeasureNetworkReply,
    MeasureNetworkRequest,
    ModelFile,
    ProfileOpsReply,
    ProfileOpsRequest,
    TargetPayload,
    device_queue,
)
from latency_db import (
    Calibration,
    CalibrationError,
    LatencyPredictor,
    LatencyRepository,
    MeasurementStats,
    TargetRecord,
    TargetSpec,
    yardstick_ms,
)
from search_spaces import Arch, arch_keys, get_space, space_keys

# PROFILE_OPS and MEASURE_NETWORK (imported above from device_agents.protocol, the contract both
# sides share) run on device.<name>; the job layer imports them from here too.
RECORD_MEASUREMENTS = "automl.record_measurements"
RECORD_NETWORK = "automl.record_network"
# Ops per profiling task: small enough that progress shows and a lost task costs little.
OPS_PER_TASK = 8


class ProfilingError(ValueError):
    """A profiling request that cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    device_name: str
    runtime: str
    runtime_version: str
    threads: int = 1

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec(device_name=self.device_name, backend=self.runtime,
                          backend_version=self.runtime_version, threads=self.threads)

    @property
    def payload(self) -> TargetPayload:
        return TargetPayload(device_name=self.device_name, backend=self.runtime,
                             backend_version=self.runtime_version, threads=self.threads)

    @property
    def queue(self) -> str:
        return device_queue(self.device_name)

    def to_dict(self) -> dict[str, Any]:
        return self.payload.to_dict()


def repository(db: Database) -> LatencyRepository:
    return LatencyRepository(db.session_factory)


def resolve_target(db: Database, device_name: str, runtime: str | None = None, threads: int = 1) -> Target:
    """The hardware target for a device (and runtime, default: its first)."""
    with db.session() as session:
        device = session.scalar(select(Device).where(Device.name == device_name)
                                .options(selectinload(Device.runtimes)))
        if device is None:
            names = session.scalars(select(Device.name).order_by(Device.name)).all()
            raise ProfilingError(f"no device {device_name!r}; registered devices: {', '.join(names) or 'none'}")
        runtimes = {r.name: r.version for r in device.runtimes}
    chosen = runtime or next(iter(runtimes), None)
    if chosen not in runtimes:
        raise ProfilingError(f"device {device_name!r} has no runtime {chosen!r}; "
                             f"accepted: {', '.join(runtimes) or 'none registered'}")
    return Target(device_name, chosen, runtimes[chosen], threads)


def missing_ops(db: Database, target: Target, space: str, resolution: int, num_classes: int = 10,
                in_channels: int = 3) -> list[str]:
    """What still has to be measured on ``target`` before a search of ``space``."""
    layout = get_space(space).layout(resolution, num_classes, in_channels)
    repo = repository(db)
    return repo.missing(repo.target(target.spec), space_keys(layout))


def predictor(db: Database, target: Target, *, calibrated: bool = True, space: str | None = None,
              resolution: int | None = None) -> LatencyPredictor:
    """The target's latency table as a predictor, calibrated when enough whole
    networks were measured on it. With ``space`` and ``resolution``, only the
    networks of that space at that resolution calibrate it when there are
    enough of them: fusion and overheads differ between families of networks.
    """
    from latency_db import MIN_CALIBRATION_NETWORKS, fit_calibration, heldout_error

    repo = repository(db)
    record = repo.target(target.spec)
    calibration: Calibration | None = None
    # Measurements flagged unreliable (noisy through their retakes) never calibrate.
    networks = repo.networks(record, usable_only=True)
    if space is not None:
        same = [n for n in networks if n.arch.get("space") == space and n.arch.get("resolution") == resolution]
        networks = same if len(same) >= MIN_CALIBRATION_NETWORKS else networks
    failure = None
    heldout = None
    if calibrated and len(networks) >= MIN_CALIBRATION_NETWORKS:
        samples = [n.calibration_sample for n in networks]
        try:
            calibration = fit_calibration(samples)
        except CalibrationError as exc:
            # Noisy end-to-end figures (sub-0.1 ms networks on a shared CPU) can
            # defeat the fit; the plain LUT sum is still a prediction.
            failure = str(exc)
        else:
            heldout = heldout_error(samples)
    return LatencyPredictor(repo.lut_ms(record), calibration, source=f"the latency table of {record.describe()}",
                            calibration_error=failure, heldout=heldout)


def dispatch_profiling(celery: Celery, target: Target, keys: list[str], method: dict[str, Any] | None = None) -> int:
    """Send ``keys`` to the device's agent in small tasks; returns how many tasks."""
    tasks = 0
    for start in range(0, len(keys), OPS_PER_TASK):
        request = ProfileOpsRequest(target.payload, tuple(keys[start:start + OPS_PER_TASK]), dict(method or {}))
        celery.signature(PROFILE_OPS, args=request.to_args(), queue=target.queue).apply_async(
            link=celery.signature(RECORD_MEASUREMENTS, queue="default"))
        tasks += 1
    return tasks


def network_method(settings: Any) -> dict[str, Any]:
    """The measurement settings a whole network is timed with on a device: its
    rounds span ``settings.network_measure_s`` (device_agents.profiling.method),
    and a noisy one is retaken ``settings.measure_retakes`` times."""
    return {"min_seconds": float(settings.network_measure_s), **op_method(settings)}


def op_method(settings: Any) -> dict[str, Any]:
    """The measurement settings of op profiling: a noisy measurement is retaken
    ``settings.measure_retakes`` times (device_agents.profiling.contention)."""
    return {"retakes": int(settings.measure_retakes)}


def measure_network_signature(celery: Celery, target: Target, arch: Arch, method: dict[str, Any] | None = None,
                              model_file: ModelFile | None = None) -> Any:
    """The task that times ``arch`` (or the exported ``model_file``) on the
    target's device, addressed to its queue; link a recording task to it."""
    request = MeasureNetworkRequest(target.payload, arch.to_dict(), dict(method or {}), model_file)
    return celery.signature(MEASURE_NETWORK, args=request.to_args(), queue=target.queue)


def dispatch_network_measurement(celery: Celery, target: Target, arch: Arch,
                                 method: dict[str, Any] | None = None) -> Any:
    """Measure one whole network end to end on the device (``method``: see
    ``network_method``); recorded for calibration."""
    return measure_network_signature(celery, target, arch, method).apply_async(
        link=celery.signature(RECORD_NETWORK, queue="default"))


def _settings_db(task: Any) -> Database:
    from automl_server.settings import settings_of

    return get_database(settings_of(task.app).resolved_database_url)


@shared_task(name=RECORD_MEASUREMENTS, bind=True, acks_late=True)
def record_measurements(self: Any, payload: dict[str, Any]) -> int:
    """Store an agent's op measurements; failed ops are stored with their error."""
    reply = ProfileOpsReply.from_dict(payload)
    repo = repository(_settings_db(self))
    target: TargetRecord = repo.target(_spec(reply.target))
    for result in reply.results:
        if result.error is not None:
            repo.record_failure(target, result.key, result.error, reply.agent_version)
        else:
            repo.record(target, result.key, MeasurementStats(**(result.stats or {})), reply.agent_version)
    return len(reply.results)


def _spec(target: TargetPayload) -> TargetSpec:
    return TargetSpec(**target.to_dict())


def paced_measurement(db: Database, payload: dict[str, Any]) -> dict[str, Any]:
    """An agent's whole-network payload with ``measured_ms`` at its target's
    pace (latency_db.pace), so that it compares with the target's predictions;
    ``raw_measured_ms`` keeps what the clock said. Unchanged when it failed or
    when no yardstick ran beside it (e.g. a phone's benchmark_model)."""
    reply = MeasureNetworkReply.from_dict(payload)
    if reply.error is not None or reply.stats is None:
        return payload
    repo = repository(db)
    stats = repo.at_target_pace(repo.target(_spec(reply.target)), MeasurementStats(**reply.stats))
    return {**payload, "measured_ms": stats.median_ms, "raw_measured_ms": payload["measured_ms"],
            "stats": dataclasses.asdict(stats)}


@shared_task(name=RECORD_NETWORK, bind=True, acks_late=True)
def record_network(self: Any, payload: dict[str, Any]) -> float | None:
    """Store a whole-network measurement with its LUT sum (the calibration's input), at its target's pace."""
    reply = MeasureNetworkReply.from_dict(payload)
    if reply.error is not None or reply.measured_ms is None:
        return None
    db = _settings_db(self)
    repo = repository(db)
    target = repo.target(_spec(reply.target))
    arch = Arch.from_dict(reply.arch)
    keys = arch_keys(arch)
    lut = repo.lut_ms(target)
    missing = [k for k in keys if k not in lut]
    if missing:  # a calibration pair needs both sides; say what to profile
        raise ProfilingError(f"{len(missing)} ops of this network have no measurement on {target.describe()} "
                             f"(first: {missing[0]}); run `automl profile` for the space first")
    lut_sum = sum(lut[k] for k in keys)
    stats = MeasurementStats(**reply.stats) if reply.stats is not None else None
    stick = yardstick_ms(stats) if stats is not None else None
    # The evidence goes with the figure: spread, yardstick drift, load, CPU share, and
    # whether it stayed noisy through its retakes (then it never calibrates).
    stored = repo.record_network(target, reply.arch, reply.measured_ms, lut_sum,
                                 reply.agent_version, n_ops=len(keys), yardstick_ms=stick,
                                 cv=stats.cv if stats is not None else None,
                                 method=stats.method if stats is not None else None)
    return stored.measured_ms


def offline_since(db: Database, device_name: str, heartbeat_timeout_s: float) -> str | None:
    """The device's last heartbeat (or "never") when it is offline; None when online."""
    from automl_server.db.models import device_status

    with db.session() as session:
        row = session.scalar(select(Device).where(Device.name == device_name))
        if row is not None and device_status(row, heartbeat_timeout_s) != "online":
            return str(row.last_heartbeat_at or "never")
    return None
