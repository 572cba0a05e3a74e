"""Stages "search" (ProxylessNAS on the target's latency table) and "tune"
(Optuna over the latency-loss strength and learning rates, in short searches
warm-started from the search's supernet).

Both run on the ``search`` queue, report every epoch as a metric event (loss,
accuracies, expected latency, per-block probabilities: the UI's charts and
heatmap) and check for cancellation after every weight step. The search
checkpoints every epoch and resumes from it when its worker was lost; the
Optuna study lives in the service's database, so a resumed tune stage keeps
its finished trials.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_server.jobs.context import StageContext, StageFailed
from automl_server.jobs.profile import job_layout, job_target
from automl_server.jobs.margin import into_window
from automl_server.jobs.margin import (  # noqa: F401 - re-exported: the band's constants lived here
    BAND_TOLERANCE,
    FALLBACK_MAX_MARGIN,
    MAX_TARGET_MARGIN,
    MIN_TARGET_MARGIN,
    TARGET_MARGIN,
    TargetBand,
    band_for,
    target_margin,
)
from automl_server.jobs.spec import MINUTE_SHARES, JobSpec

# Predicts a list of architectures with one snapshot of the target's predictor.
Predict = Callable[[list[dict[str, Any]]], list[float]]

if TYPE_CHECKING:  # torch and numpy load when a stage runs
    from numpy.lib.npyio import NpzFile

    from automl_server.engine.data import SplitData
    from automl_server.engine.derive import Derivation
    from automl_server.engine.latency import LatencyModel
    from automl_server.engine.search import SearchConfig
    from automl_server.engine.search_plan import SearchSchedule
    from automl_server.engine.supernet import SuperNet
    from search_spaces import SpaceLayout

def target_band(ctx: StageContext) -> TargetBand:
    """The job's band (jobs/margin.py): the search aims at ``aim_ms`` and the derivation
    picks the most probable network predicted within ``aim_ms * (1 +- tolerance)``, so
    at most ``top_ms`` = target * (1 - margin), where the margin is the predictor's
    held-out error on this target (``target_margin``)."""
    margin, _source = target_margin(ctx.results.get("profile") or {})
    return band_for(float(ctx.params["latency_target_ms"]), margin)


def load_split(ctx: StageContext) -> tuple[SplitData, NpzFile]:
    """The job's fixed splits as tensors, normalised with the training split's statistics."""
    import numpy as np

    from automl_server.engine.data import split_arrays

    arrays = np.load(ctx.job_dir() / "dataset.npz")
    data = split_arrays(arrays["x"], arrays["y"], train_idx=arrays["train_idx"], holdout_idx=arrays["holdout_idx"])
    return data, arrays


def latency_model(ctx: StageContext, layout: SpaceLayout) -> LatencyModel:
    """The target's calibrated per-op latencies (see LatencyPredictor.op_model)."""
    from automl_server.profiling import predictor
    from search_spaces import op_key

    return predictor(ctx.db, job_target(ctx), space=layout.space, resolution=layout.resolution).op_model(op_key(layout, layout.fixed[0]))


def current_prediction(ctx: StageContext) -> Predict:
    """``predict(archs)``: the networks' latencies by the target's predictor as it is now (built
    once per call: it reads the target's measurements and fits its calibration). The fit, the
    promise's retry and the baselines' retries judge networks by it: the job's own timings
    calibrate the predictor after a network is picked."""
    from automl_server.engine.latency import arch_latency_ms
    from search_spaces import Arch

    def predict(archs: list[dict[str, Any]]) -> list[float]:
        model = latency_model(ctx, job_layout(ctx))
        return [float(arch_latency_ms(Arch.from_dict(arch), model)) for arch in archs]

    return predict


def searched_supernet(ctx: StageContext) -> SuperNet | None:
    """The search's supernet with its final probabilities (``search.ckpt``); None for a job
    that did not search (it adopted its parent's network)."""
    import torch

    from automl_server.engine.supernet import SuperNet

    checkpoint = ctx.job_dir() / "search.ckpt"
    if not checkpoint.exists():
        return None
    net = SuperNet(job_layout(ctx))
    net.load_state_dict(torch.load(checkpoint, weights_only=False)["net"])
    return net


def derive_under(ctx: StageContext, net: SuperNet, bound_ms: float,
                 timed: list[list[str]] | None = None) -> Derivation:
    """``net``'s final probabilities derived within the job's band moved under ``bound_ms``, by
    the target's predictor as it is now (the fit's and verify's measurements calibrate it): how
    the fit (jobs/fit.py) and the promise's retry (jobs/promise.py) move a job's network. With
    ``timed`` (block lists timed already; ``bound_ms`` is then a move's top, ``MOVE_TOP``), a
    derivation under the window's bottom or onto one of them moves into the window
    (``jobs.margin.into_window``)."""
    from automl_server.engine.derive import derive_within_target

    model = latency_model(ctx, job_layout(ctx))
    band = target_band(ctx).under(bound_ms)
    derived = derive_within_target(net, model, band.aim_ms, band.tolerance)
    if timed is None or derived.predicted_ms > bound_ms * (1 + 1e-9):
        return derived  # over the bound: nothing in the space is predicted under it
    moved = into_window(net, model, derived, bound_ms, timed)
    if moved is not derived:  # said in the job's log: the one place a user (or a bench) sees the move
        ctx.event("log", f"the derivation under {bound_ms:.4g} ms (predicted {derived.predicted_ms:.4g} ms) stepped "
                         f"under the fit window or onto a network timed already; took the most probable network "
                         f"predicted inside it instead ({moved.predicted_ms:.4g} ms)",
                  into_window_ms=round(moved.predicted_ms, 6))
    return moved


def search_config(ctx: StageContext, spec: JobSpec, **overrides: Any) -> SearchConfig:
    from automl_server.engine.search import SearchConfig
    from automl_server.engine.search_plan import arch_lr_for

    band = target_band(ctx)
    target_ms, tolerance = band.aim_ms, band.tolerance
    loss_kind = loss_kind_for(target_ms, ctx.results["profile"]["achievable_ms"])
    schedule = search_schedule(ctx, spec)
    values: dict[str, Any] = dict(
        loss_kind=loss_kind, warmup_epochs=schedule.warmup_epochs, search_epochs=schedule.search_epochs,
        min_arch_steps_per_epoch=schedule.min_arch_steps_per_epoch, batch_size=spec.batch_size, target_ms=target_ms,
        strategy=spec.strategy, seed=spec.seed, warmup_sampling=spec.warmup_sampling,
        # When every network meets the target, accuracy alone counts: the plain argmax,
        # not the network nearest the target band (which would pick slow blocks to fill it).
        derive="argmax" if loss_kind == "none" else "target", derive_tolerance=tolerance,
        # Architecture steps every other weight step: a service job's budgets are
        # short, and the reference's 1 in 5 leaves alpha barely moved in tens of epochs.
        # The step size from their number, so that the probabilities can settle in the
        # steps there are (engine/search_plan.arch_lr_for).
        arch_update_every=JOB_ARCH_UPDATE_EVERY, arch_lr=arch_lr_for(schedule.arch_steps),
        # The supernet's weights at the peak learning rate the standard pipeline trains the
        # found network with (0.05), not the reference's 0.025: in a job's short search each
        # candidate sees a quarter of the steps or fewer, and at 0.025 the supernet's derived
        # path reached 0.57-0.60 on mnist-5k's holdout after 3 + 8 epochs against 0.80 at 0.05
        # (tiny, 28 px; digits 0.84 against 0.90-0.91; the network alone 0.93-0.97).
        lr=JOB_SUPERNET_LR,
    )
    values.update(overrides)
    try:
        return SearchConfig(**values)
    except ValueError as exc:
        raise StageFailed(f"invalid search settings: {exc}") from exc


JOB_ARCH_UPDATE_EVERY = 2
JOB_SUPERNET_LR = 0.05
# Settings the service chooses for a job, not the user. A search checkpointed under an
# earlier choice resumes with the values it started with (resumed_config), rather than
# failing on the engine's "written with another search config" after an upgrade.
SERVICE_CHOSEN = ("lr", "arch_lr", "arch_update_every")


def resumed_config(ctx: StageContext, config: SearchConfig, checkpoint: Path) -> SearchConfig:
    """``config``, with the service-chosen settings of the search ``checkpoint`` continues."""
    if not checkpoint.exists():
        return config
    import torch

    written = torch.load(checkpoint, weights_only=False, map_location="cpu").get("config") or {}
    kept = started_with(config, written)
    if not kept:
        return config
    ctx.event("log", "resuming the search with the settings it started with (this version of the service would "
              "choose " + ", ".join(f"{name} {getattr(config, name):g}" for name in kept) + "; the checkpoint has "
              + ", ".join(f"{name} {value:g}" for name, value in kept.items()) + ")", kept=kept)
    return replace(config, **kept)


def started_with(config: SearchConfig, written: dict[str, Any]) -> dict[str, Any]:
    """The service-chosen settings in which a search's checkpointed config (``written``)
    differs from ``config``."""
    return {name: written[name] for name in SERVICE_CHOSEN if name in written and written[name] != getattr(config, name)}


def search_schedule(ctx: StageContext, spec: JobSpec) -> SearchSchedule:
    """The budget's epochs, with the warm-up and the architecture steps counted in
    steps on a small dataset (engine/search_plan.py)."""
    from automl_server.engine.search_plan import schedule_for

    train_images = int((ctx.results.get("validate") or {}).get("train_samples") or 0)
    budget = spec.budget
    if train_images <= 0:  # a job validated before the count was recorded: the budget as asked
        return schedule_for(1 << 30, spec.batch_size, budget.warmup_epochs, budget.search_epochs,
                            JOB_ARCH_UPDATE_EVERY, min_warmup_steps_per_epoch=0, min_arch_steps_per_epoch=0)
    return schedule_for(train_images, spec.batch_size, budget.warmup_epochs, budget.search_epochs,
                        JOB_ARCH_UPDATE_EVERY)


def loss_kind_for(target_ms: float, achievable_ms: list[float]) -> str:
    """The latency loss for this target on this device (engine.search_plan.loss_kind_for):
    mul#log inside the achievable range, none when every network meets the target,
    add#linear when mul#log's logarithm would turn negative."""
    from automl_server.engine import search_plan

    fastest, slowest = achievable_ms
    return search_plan.loss_kind_for(target_ms, fastest, slowest)


def deadline(ctx: StageContext, spec: JobSpec, stage: str) -> float | None:
    if spec.budget.minutes is None:
        return None
    return time.monotonic() + spec.budget.minutes * 60 * MINUTE_SHARES[stage]


def epoch_event(ctx: StageContext, report: Any, started: float, **extra: Any) -> None:
    done = report.epoch
    eta = (time.monotonic() - started) / max(done, 1) * (report.total_epochs - done)
    # Once per epoch: a search resumed from its checkpoint runs again an epoch whose report was
    # stored just before the stage was lost (run_search reports, then checkpoints); the re-run
    # starts from the same checkpoint and generators, so the stored report stands.
    ctx.event_once("metric", f"epoch {done}/{report.total_epochs}", **asdict(report), **extra)
    ctx.progress(done / report.total_epochs,
                 f"epoch {done}/{report.total_epochs}: holdout accuracy {report.holdout_accuracy:.3f}, "
                 f"E[latency] {report.expected_latency_ms:.4g} ms", eta_s=eta)


def search_architecture(ctx: StageContext) -> dict[str, Any]:
    from automl_server.engine.search import run_search

    spec = JobSpec.from_params(ctx.params)
    layout = job_layout(ctx)
    data, _ = load_split(ctx)
    model = latency_model(ctx, layout)
    checkpoint = ctx.job_dir() / "search.ckpt"
    config = resumed_config(ctx, search_config(ctx, spec), checkpoint)
    ends = deadline(ctx, spec, "search")
    started = time.monotonic()
    schedule = search_schedule(ctx, spec)
    if schedule.changed:
        ctx.event("log", f"search schedule for {data.x_train.shape[0]} training images: {schedule.describe()} "
                  f"(at least {schedule.min_arch_steps_per_epoch} architecture steps per search epoch and "
                  f"{schedule.warmup_epochs * schedule.batches_per_epoch} warm-up weight steps, whatever the "
                  "batches per epoch, so that the supernet is trained before the latency term bites and the "
                  "probabilities can move)", schedule=asdict(schedule))
    if config.loss_kind == "none":
        ctx.event("log", "accuracy alone counts: every network of the space meets the target, so the search runs "
                  "without a latency term and derives the most probable network (argmax), not one filling a "
                  "target band; tuning then tries learning rates only (the loss strength has no effect)",
                  accuracy_alone=True)
    ctx.progress(0.0, f"searching {layout.space} for {config.total_epochs} epochs")
    result = run_search(layout, data, model, config, checkpoint_path=checkpoint,
                        progress=lambda report: epoch_event(ctx, report, started),
                        on_step=ctx.check_cancelled,
                        should_stop=(lambda: time.monotonic() > ends) if ends else None)
    arch_path = ctx.job_dir() / "search-arch.json"
    arch_path.write_text(json.dumps(result.arch.to_dict(), indent=2))
    ctx.store_artifact("search-arch", arch_path)
    return {"arch": result.arch.to_dict(), "predicted_ms": round(result.expected_latency_ms, 6),
            "holdout_accuracy": round(result.holdout_accuracy, 6), "epochs": len(result.history),
            "search_seconds": round(time.monotonic() - started, 3), "config": asdict(config),
            "schedule": schedule.describe(), "accuracy_alone": config.loss_kind == "none"}


def tune_latency_loss(ctx: StageContext) -> dict[str, Any]:
    """Optuna TPE over the mul#log strength beta and the two learning rates:
    each trial continues the searched supernet for a few epochs and derives a
    network; its value is the holdout accuracy, minus a penalty when the
    network is predicted over the target. The best trial's network replaces
    the search's when it is better."""
    spec = JobSpec.from_params(ctx.params)
    searched = ctx.results["search"]
    if not spec.tune or spec.budget.tune_trials <= 0:
        return {"skipped": "tuning is off for this job", "arch": searched["arch"],
                "predicted_ms": searched["predicted_ms"], "holdout_accuracy": searched["holdout_accuracy"]}
    import optuna
    import torch

    layout = job_layout(ctx)
    data, _ = load_split(ctx)
    model = latency_model(ctx, layout)
    target_ms = target_band(ctx).top_ms  # a trial's network is judged against the band's top
    checkpoint = torch.load(ctx.job_dir() / "search.ckpt", weights_only=False)
    # The rates the search ran with (an earlier version's, if it resumed under them): the
    # trials' ranges are centred on them (engine/tune.tuned_ranges).
    base = search_config(ctx, spec)
    base = replace(base, **started_with(base, checkpoint.get("config") or {}))
    study_name = f"job-{ctx.job_id}-tune"
    # The service's own database: optuna-dashboard can open it (`optuna-dashboard <database url>`).
    storage = optuna.storages.RDBStorage(ctx.settings.resolved_database_url)
    try:
        return _tune(ctx, spec, searched, storage, study_name, layout, data, model, target_ms, base, checkpoint)
    finally:
        storage.engine.dispose()  # Optuna's own connection pool; never left for the garbage collector


def _tune(ctx: StageContext, spec: JobSpec, searched: dict[str, Any], storage: Any, study_name: str, layout: Any,
          data: Any, model: Any, target_ms: float, base: Any, checkpoint: dict[str, Any]) -> dict[str, Any]:
    from automl_server.engine.tune import Candidate, tune

    ends = deadline(ctx, spec, "tune")
    started = time.monotonic()
    trials = spec.budget.tune_trials

    def on_epoch(number: int, report: Any) -> None:
        ctx.event("metric", f"tune trial {number} epoch {report.epoch}/{report.total_epochs}",
                  trial=number, epoch=report.epoch, holdout_accuracy=report.holdout_accuracy,
                  expected_latency_ms=report.expected_latency_ms)

    def on_trial(number: int, candidate: Candidate) -> None:
        done = number + 1
        ctx.progress(done / trials, f"trial {number}: holdout accuracy {candidate.holdout_accuracy:.3f}, "
                     f"predicted {candidate.predicted_ms:.4g} ms",
                     eta_s=(time.monotonic() - started) / max(done, 1) * (trials - done))

    try:
        outcome = tune(layout, data, model, base, checkpoint["net"],
                       Candidate(searched["arch"], searched["predicted_ms"], searched["holdout_accuracy"]),
                       trials=trials, epochs=spec.budget.tune_epochs, target_ms=target_ms, seed=spec.seed,
                       study_name=study_name, storage=storage, on_step=ctx.check_cancelled, on_epoch=on_epoch,
                       on_trial=on_trial, should_stop=(lambda: time.monotonic() > ends) if ends else None)
    except ValueError as exc:
        raise StageFailed(str(exc)) from None
    chosen = outcome.chosen
    return {"arch": chosen.arch, "predicted_ms": chosen.predicted_ms, "holdout_accuracy": chosen.holdout_accuracy,
            "study_name": study_name, "trial_number": outcome.best_number, "trial_params": outcome.best_params,
            "trial_value": outcome.best_value, "search_value": outcome.searched_value,
            "used_trial": outcome.used_trial, "trials": outcome.trials,
            "tune_seconds": round(time.monotonic() - started, 3)}


def chosen(results: dict[str, Any]) -> dict[str, Any]:
    """The job's network: the latest retry's when the first measured over the
    target (jobs/promise.py), else the output of the stage that chose it: fit
    (moved to the target's window on the device, jobs/fit.py) if it ran, else
    tune, else search, else adopt (a finished job's network, fine-tuned)."""
    picked: dict[str, Any] = (results.get("retry") or results.get("fit") or results.get("tune")
                              or results.get("search") or results["adopt"])
    return picked


def chosen_arch(results: dict[str, Any]) -> dict[str, Any]:
    """The architecture the job trains."""
    arch: dict[str, Any] = chosen(results)["arch"]
    return arch


def arch_path(ctx: StageContext) -> Path:
    return ctx.job_dir() / "arch.json"
