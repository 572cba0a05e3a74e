"""The stages of a job (a registry: each job runs the plan made for it) and
the runner that executes one stage. The built-in plan is

    validate -> profile -> search -> tune -> train -> export -> schedule -> verify -> report

(with ``adopt`` in place of search and tune when the job fine-tunes a finished
job's network, without ``schedule`` when ``params.schedule`` is false, and with
``audit`` after train when ``params.privacy_audit`` applies: by default for
fedgkt and delayed-sgd, and with ``baselines`` after verify when
``params.baselines`` is true).

Each stage runs as its own Celery task on its queue and sends the next one
when it is done (a chain built as it goes, so a stage may also re-send itself
later while it waits for a device). The runner makes every delivery safe:

* idempotent: a stage recorded as done is skipped, a finished job left alone;
* leased: the task running a stage holds a lease on the job, renewed by a
  heartbeat thread while its process lives (jobs/lease.py); a second delivery of another message finds the lease held
  and leaves, a re-delivery of the same message (its worker died, Celery's
  ``acks_late`` + ``reject_on_worker_lost``) or any delivery after the lease
  ran out takes the stage over and resumes it from its checkpoint;
* cancellable: progress reports raise JobCancelled once the user cancelled.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import select

from automl_server.db.engine import Database, database_unreachable, wait_until_reachable
from automl_server.db.models import Job, JobState, utcnow
from automl_server.engine.privacy.settings import audit_applies
from automl_server.files import disk_full, disk_full_detail
from automl_server.jobs import service
from automl_server.jobs.audit import audit_privacy
from automl_server.jobs.baselines import applies as baselines_applies
from automl_server.jobs.baselines import compare_baselines
from automl_server.jobs.context import Stage, StageContext, StageFailed, StageWait
from automl_server.jobs.deploy import export_model, verify_on_device
from automl_server.jobs.device_finetune import applies as device_finetune_applies
from automl_server.jobs.device_finetune import finetune_on_device
from automl_server.jobs.fit import applies as fit_applies
from automl_server.jobs.fit import fit_to_device
from automl_server.jobs.lease import LeaseHeartbeat
from automl_server.jobs.parent import adopt_parent, parent_of
from automl_server.jobs.profile import profile_target
from automl_server.jobs.promise import StageRewind
from automl_server.jobs.report import build_report
from automl_server.jobs.schedule import schedule_model
from automl_server.jobs.search_stage import search_architecture, tune_latency_loss
from automl_server.jobs.train import train_network
from automl_server.jobs.validate import validate_dataset
from automl_server.settings import Settings
from device_agents import cores
from device_agents.protocol import IOS_RUNTIMES

__all__ = ["Dispatch", "StageContext", "StageFailed", "StageWait", "get_stage", "plan_for", "plan_of",
           "register_stage", "run_stage", "stage_names"]

# The stage registry. A stage is registered once, after the stage it follows;
# ``applies`` decides from a job's params whether the job runs it (a pipeline
# or a setting adds or skips a stage, e.g. ``schedule`` or ``audit``, without
# touching the runner). ``plan_for`` gives a job's stages, saved on the job at
# submission (``job.result["plan"]``) so a later registration never changes a
# job already running.
_REGISTRY: list[Stage] = []
_APPLIES: dict[str, Callable[[dict[str, Any]], bool]] = {}


def register_stage(stage: Stage, *, after: str | None = None,
                   applies: Callable[[dict[str, Any]], bool] | None = None) -> Stage:
    """Add a stage after ``after`` (default: at the end); re-registering a name replaces it in place."""
    names = [s.name for s in _REGISTRY]
    if stage.name in names:
        _REGISTRY[names.index(stage.name)] = stage
    elif after is None:
        _REGISTRY.append(stage)
    else:
        if after not in names:
            raise KeyError(f"cannot register stage {stage.name!r} after unknown stage {after!r}; "
                           f"stages: {', '.join(names)}")
        _REGISTRY.insert(names.index(after) + 1, stage)
    if applies is None:
        _APPLIES.pop(stage.name, None)
    else:
        _APPLIES[stage.name] = applies
    return stage


def unregister_stage(name: str) -> None:
    _REGISTRY[:] = [s for s in _REGISTRY if s.name != name]
    _APPLIES.pop(name, None)


def stage_names() -> tuple[str, ...]:
    """Every registered stage, in order (a job runs those its plan names)."""
    return tuple(s.name for s in _REGISTRY)


def get_stage(name: str) -> Stage:
    for stage in _REGISTRY:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(stage_names())}")


def stage_params(job: Job) -> dict[str, Any]:
    """What a stage sees as ``ctx.params``: the job's params with its columns (dataset, device,
    runtime, space, pipeline, target, comparison) folded in."""
    return {**job.params, "dataset": job.dataset_name, "device": job.device_name, "runtime": job.runtime,
            "space": job.space, "pipeline": job.pipeline, "latency_target_ms": job.latency_target_ms,
            "comparison_id": job.comparison_id}


def plan_for(params: dict[str, Any]) -> list[str]:
    """The stages a job with these params runs, in order, up to ``stop_after``."""
    plan = [s.name for s in _REGISTRY if _APPLIES.get(s.name, _always)(params)]
    stop_after = params.get("stop_after")
    if stop_after:
        if stop_after not in plan:
            raise KeyError(f"stop_after {stop_after!r} is not a stage of this job; its stages: {', '.join(plan)}")
        plan = plan[: plan.index(stop_after) + 1]
    return plan


def _always(params: dict[str, Any]) -> bool:
    return True


def _searches(params: dict[str, Any]) -> bool:
    return parent_of(params) is None


def _fits(params: dict[str, Any]) -> bool:
    return _searches(params) and fit_applies(params)


def _adopts(params: dict[str, Any]) -> bool:
    return parent_of(params) is not None


for _stage, _applies in (
    (Stage("validate", "default", validate_dataset, "Check the dataset and fix the splits"), None),
    (Stage("profile", "default", profile_target, "Measure the space's operators on the device"), None),
    # A job fine-tuning a finished job's network takes it instead of searching (jobs/parent.py).
    (Stage("adopt", "default", adopt_parent, "Take the parent job's trained network"), _adopts),
    (Stage("search", "search", search_architecture, "ProxylessNAS search"), _searches),
    (Stage("tune", "search", tune_latency_loss, "Tune the latency loss with Optuna"), _searches),
    # The chosen network timed on the device before training, moved into the target's window.
    (Stage("fit", "default", fit_to_device, "Measure the chosen network on the device and move it into the "
           "target's window"), _fits),
    (Stage("train", "search", train_network, "Train the found network with the job's pipeline"), None),
    (Stage("export", "search", export_model, "Export to ONNX (and TFLite)"), None),
    (Stage("verify", "default", verify_on_device, "Measure the exported model on the device"), None),
    (Stage("report", "default", build_report, "Write the report"), None),
):
    register_stage(_stage, applies=_applies)
# The sparse update's steps on the job's device (params.sparse_update.on_device).
register_stage(Stage("device-finetune", "default", finetune_on_device, "Fine-tune on the device with ONNX Runtime "
                     "training and compare with PyTorch"), after="train", applies=device_finetune_applies)
# An IOS schedule of the exported model for every pipeline on a runtime IOS runs on;
# params.schedule false skips it.
register_stage(Stage("schedule", "default", schedule_model, "Schedule the exported model's operators (IOS) "
                     "with latencies measured on the device"), after="export",
               applies=lambda p: bool(p.get("schedule", True)) and p.get("runtime") in (None, *IOS_RUNTIMES))
# A privacy audit of what the pipeline shares (DLG, feature inversion): on by default for
# fedgkt and delayed-sgd, params.privacy_audit decides (engine/privacy/settings.py).
register_stage(Stage("audit", "search", audit_privacy, "Privacy audit: rebuild training images from what the "
                     "pipeline shares, under each defense"), after="train", applies=audit_applies)
# The searched network against random search and a uniform network (params.baselines), once the
# job's own network is final and measured.
register_stage(Stage("baselines", "search", compare_baselines, "Compare with random search and a uniform network "
                     "at the same latency, trained and measured alike"), after="verify", applies=baselines_applies)
log = logging.getLogger(__name__)
# How long a stage whose database went away waits for it before giving up (the sweep then takes over).
DATABASE_WAIT_S = 60.0
WAITING = "waiting"  # lease owner of a stage that re-sent itself with a countdown


@dataclass(frozen=True)
class Dispatch:
    """What the task must send next: a stage, now or after ``countdown_s``."""

    stage: str
    countdown_s: float = 0.0


def plan_of(job: Job) -> list[str]:
    """The job's saved plan (jobs submitted before plans were saved: planned now)."""
    saved = job.result.get("plan")
    if saved:
        return list(saved)
    return plan_for({**job.params, "pipeline": job.pipeline, "runtime": job.runtime})


def _take_lease(session: Any, job: Job, stage_name: str, owner: str, lease_s: float) -> bool:
    """True when this delivery may run the stage; records a take-over of a lost one."""
    now = utcnow()
    held = job.stage == stage_name and job.lease_owner not in (None, WAITING, owner)
    if held and job.lease_until is not None and job.lease_until > now:
        return False  # a live worker runs it; this message is a duplicate
    lost = job.stage == stage_name and job.lease_owner not in (None, WAITING)
    if lost:
        job.recoveries += 1
        service.record_event(session, job, "log", f"stage {stage_name} resumed: its worker was lost",
                             stage=stage_name, data={"recoveries": job.recoveries})
    job.lease_owner = owner
    job.lease_until = now + timedelta(seconds=lease_s)
    return True


def _release(job: Job) -> None:
    job.lease_owner = None
    job.lease_until = None


def run_stage(db: Database, settings: Settings, job_id: str, stage_name: str, *, owner: str = "local",
              celery: Any = None) -> Dispatch | None:
    """Run one stage of a job; returns what to send next, or None."""
    stage = get_stage(stage_name)
    with db.session() as session:
        # The row is locked until the lease is decided: two deliveries of one stage (a duplicate
        # sent by the recovery sweep, a redelivery) taken by two workers at the same instant would
        # otherwise both read "no lease" and both run it (PostgreSQL; SQLite's BEGIN IMMEDIATE
        # already serialises them).
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or JobState(job.state).is_terminal:
            return None
        plan = plan_of(job)
        if stage_name not in plan:
            # A stale or stray message: the job's plan (fixed at submission) has no such stage.
            log.warning("job %s: ignoring stage %r, not in its plan (%s)", job_id, stage_name, ", ".join(plan))
            return None
        index = plan.index(stage_name)
        last = len(plan) - 1
        following = Dispatch(plan[index + 1]) if index < last else None
        if stage_name in job.result.get("stages_done", []):
            # A duplicate, or a redelivery whose worker died between recording this stage and
            # sending the next: the next stage is sent only while it has not started (the job
            # waits at it, no lease), so a duplicate ends here instead of running down the chain.
            if following is not None and (job.stage != following.stage or job.lease_owner is not None):
                return None
            return following
        if job.cancel_requested:
            service.mark_cancelled(session, job)
            _release(job)
            return None
        fresh = not (job.stage == stage_name and job.lease_owner is not None)
        if not _take_lease(session, job, stage_name, owner, settings.stage_lease_s):
            return None
        if fresh:
            service.start_stage(session, job, stage_name, index / (last + 1))
        params = stage_params(job)
        results = dict(job.result)
    # Stages on the search queue train: they hold their share of this machine's cores and
    # pause at every weight step while the local agent measures (device_agents.cores).
    training = cores.Training() if stage.queue == "search" else None
    ctx = StageContext(db, settings, job_id, stage_name, index, last + 1, owner, params, results, celery,
                       cores=training)
    try:
        with (LeaseHeartbeat(db, job_id, owner, settings.stage_lease_s),
              training if training is not None else contextlib.nullcontext()):
            output = stage.run(ctx)
        if training is not None and training.pauses:
            ctx.event("log", f"training paused {training.pauses} time(s), {training.paused_s:.1f} s in all, while "
                      "the device's agent measured on this machine's cores",
                      pauses=training.pauses, paused_s=round(training.paused_s, 3))
    except StageWait as wait:
        with db.session() as session:
            job = session.get_one(Job, job_id)
            job.lease_owner = WAITING
            # The sweep re-sends the stage if the delayed message is lost with its worker.
            job.lease_until = utcnow() + timedelta(seconds=wait.seconds + settings.stage_lease_s)
        return Dispatch(stage_name, wait.seconds)
    except StageRewind as rewind:
        return _rewind(db, job_id, stage_name, plan, rewind)
    except service.JobCancelled:
        with db.session() as session:
            job = session.get_one(Job, job_id)
            service.mark_cancelled(session, job)
            _release(job)
        return None
    except StageFailed as exc:
        with db.session() as session:
            job = session.get_one(Job, job_id)
            service.fail(session, job, str(exc))
            _release(job)
        return None
    except Exception as exc:  # an unexpected bug must still end the job visibly
        if disk_full(exc, settings.data_dir):  # not a bug: say what happened and what to do
            with db.session() as session:
                job = session.get_one(Job, job_id)
                service.fail(session, job, disk_full_detail(
                    settings.data_dir, f"stage {stage_name} wrote its files (a checkpoint, a model)")
                    + "; the files of its finished stages are kept. Re-run the job once there is space")
                _release(job)
            return None
        if database_unreachable(exc) and wait_until_reachable(db, DATABASE_WAIT_S):
            # The database went away mid-stage (a restart, a failover) and is back: not the job's fault.
            # The lease is given up at once, so the stage sent again takes over and resumes from its
            # checkpoint now instead of after the recovery sweep finds the lease run out.
            log.warning("job %s: stage %s lost its database (%s); sending it again", job_id, stage_name, exc)
            with db.session() as session:
                job = session.get_one(Job, job_id)
                job.lease_until = utcnow()
            return Dispatch(stage_name)
        with db.session() as session:
            job = session.get_one(Job, job_id)
            service.fail(session, job, f"internal error in stage {stage_name}: {exc!r}")
            _release(job)
        raise
    with db.session() as session:
        job = session.get_one(Job, job_id)
        if JobState(job.state).is_terminal:
            return None
        if job.lease_owner != owner:
            # Another delivery took the stage over (this worker looked lost): it records the stage.
            log.warning("job %s: stage %s finished here after another worker took it over; "
                        "its result is left to that worker", job_id, stage_name)
            return None
        # Assign new dicts: SQLAlchemy does not track in-place JSON mutation.
        job.result = {**job.result, stage_name: output, "stages_done": [*job.result.get("stages_done", []), stage_name]}
        if "target_met" in output:  # the verify stage's verdict, on the job itself (jobs/promise.py)
            job.result = {**job.result, "target_met": output["target_met"]}
        _release(job)
        if following is None:
            service.succeed(session, job)
        else:
            job.stage = following.stage  # queued; its start_stage records the transition
    return following


def _rewind(db: Database, job_id: str, stage_name: str, plan: list[str], rewind: StageRewind) -> Dispatch | None:
    """Go back to ``rewind.stage``: its results merged in, it and every stage after it
    to be run again (a retry of a network that missed its target, jobs/promise.py)."""
    again = plan[plan.index(rewind.stage): plan.index(stage_name) + 1]
    with db.session() as session:
        job = session.get_one(Job, job_id)
        if JobState(job.state).is_terminal:
            return None
        done = [s for s in job.result.get("stages_done", []) if s not in again]
        job.result = {**job.result, **rewind.results, "stages_done": done}
        service.record_event(session, job, "warning", rewind.message, stage=stage_name, data=rewind.data)
        _release(job)
        job.stage = rewind.stage  # queued; its start_stage records the transition
    return Dispatch(rewind.stage)


def unleased_stages(db: Database) -> list[tuple[str, str, str]]:
    """(job id, stage, device) of active jobs whose stage no worker holds: a queued
    job (its first stage), a running job waiting at its next stage (no lease), or a
    stage waiting out a countdown (``WAITING``). The message that runs each of them
    is on the broker (a worker drops the countdowns it held when its broker
    connection breaks), so when the broker lost its messages, ``jobs.tasks.recover``
    re-sends these. Running stages hold a lease and are left alone."""
    with db.session() as session:
        jobs = session.scalars(
            select(Job).where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                              (Job.lease_owner.is_(None)) | (Job.lease_owner == WAITING))
            .order_by(Job.created_at)
        ).all()
        return [(job.id, job.stage or plan_of(job)[0], job.device_name) for job in jobs]


def orphaned_stages(db: Database) -> list[tuple[str, str, str]]:
    """(job id, stage, device) of running jobs whose stage lease ran out: their
    worker or their delayed message was lost. ``jobs.tasks.recover`` re-sends them."""
    now = utcnow()
    with db.session() as session:
        rows = session.execute(
            select(Job.id, Job.stage, Job.device_name, Job.lease_until, Job.lease_owner)
            .where(Job.state == JobState.RUNNING.value)
        ).all()
    # A stage queued behind other work holds no lease (its message is on the
    # broker); only a lease that ran out means something was lost.
    return [(job_id, stage, device) for job_id, stage, device, until, _owner in rows
            if stage and until is not None and until < now]
