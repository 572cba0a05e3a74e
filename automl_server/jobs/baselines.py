"""Stage "baselines" (``params.baselines: true``; issue 17): the job's searched
network side by side with the networks a user would try instead, on the job's
own data, at the same latency bound on the same device and runtime, each
trained with the same budget:

- **random search** (``engine.baselines.random_search``): networks sampled
  from the space whose latency the job's predictor puts within the bound the
  searched network keeps to (below),
  each trained briefly (``brief_epochs``: ``budget.tune_epochs``, at most a
  quarter of ``train_epochs``) on
  the job's training split and judged on its holdout split, as many as fit
  in the search's own cost (search + tune seconds; at least 3, at most 50);
  the best is then trained like the job's network;
- **a uniform network** (``engine.baselines.uniform_network``): one block
  type everywhere, MobileNetV2-style, scaled in depth (Zero cells) and width
  (the block type) to the same predicted bound.

The bound is the one the fit stage corrected on the device for the job's own
network (``result.fit.bound_ms``, jobs/fit.py), else the band's top; each picked
network is then timed untrained on the device and moved into the target's window
as the job's network was (``_fit``), so that every network of the comparison
spends about the same share of the target. Random search moves among the networks
it trained briefly; when none is predicted within a lowered bound, or in the fit's
window, it draws and trains briefly a few more there (``_sample_more``).

Each final network is trained by the job's pipeline with the job's train
budget (``jobs.train.train_arch``: the same epochs or share of
``budget.minutes``, seed and splits), tested once on the job's test split,
exported in the file the device runs and measured on the job's device by its
agent through the verify stage's path (``jobs.deploy.send_measurement``). A
baseline measured over the target is replaced by a faster one of its own
method, trained and measured again, as the job's own network is
(``_retry_misses``; its earlier networks in the row's ``tries``).

Runs after ``verify``, once the job's own network is final (a retry of the
promise has rewound and re-run before it). Three phases, each recorded in
``baselines-state.json`` so that a resumed stage skips what is done: pick
the networks, train each (its checkpoints in ``baseline-<method>/``), then
measure them (the stage re-sends itself while the device measures, as
verify does). Progress events throughout; a cancel is noticed at every
weight step and between networks.
"""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_server.jobs.context import StageContext, StageFailed, StageWait
from automl_server.jobs.fit import applies as fit_applies
from automl_server.jobs.deploy import (VERIFY_TIMEOUT_S, confirm_miss, export_device_file, kept_measurement,
                                       measurement_fields, send_measurement)
from automl_server.jobs.margin import MOVE_TOP, WINDOW_LOW
from automl_server.jobs.parent import parent_of
from automl_server.jobs.profile import POLL_S, _wait_for_device, job_layout, job_target
from automl_server.jobs.search_stage import Predict, chosen, current_prediction, latency_model, load_split, target_band
from automl_server.jobs.spec import MINUTE_SHARES, Budget, JobSpec
from automl_server.jobs.train import StageCallbacks

if TYPE_CHECKING:
    from automl_server.engine.baselines import RandomSearchResult, UniformNetwork
    from search_spaces import Arch

STATE_FILE = "baselines-state.json"
METHODS = ("random", "uniform")
# Shares of the stage's progress bar: picking the networks (the random search), training them, measuring.
PICK, TRAIN = 0.4, 0.5
# Faster networks a baseline may try after measuring over the target (_retry_misses).
BASELINE_RETRIES = 2
# Networks random search samples and trains briefly when none it has is predicted within a lowered bound.
TOP_UP_NETWORKS = 3


def applies(params: dict[str, Any]) -> bool:
    """Only when asked for, and only for a job that searches (an adopted network has no search to compare)."""
    return bool(params.get("baselines")) and parent_of(params) is None


def compare_baselines(ctx: StageContext) -> dict[str, Any]:
    spec = JobSpec.from_params(ctx.params)
    state_path = ctx.job_dir() / STATE_FILE
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    bound_ms = baseline_bound(ctx.results, target_band(ctx).top_ms)
    if "networks" not in state:
        state["networks"] = _pick(ctx, spec, bound_ms)
        _save(state_path, state)
    if fit_applies(ctx.params):
        _fit(ctx, spec, state, state_path)
    while True:
        for number, method in enumerate(METHODS):
            entry = state["networks"][method]
            if "skipped" in entry or "trained" in entry:
                continue
            entry["trained"] = _train(ctx, method, entry, PICK + TRAIN * number / len(METHODS),
                                      PICK + TRAIN * (number + 1) / len(METHODS))
            _save(state_path, state)
        _measure(ctx, spec, state, state_path)
        if not _retry_misses(ctx, state, state_path, bound_ms):
            return _output(ctx, spec, state, bound_ms)


def baseline_bound(results: dict[str, Any], band_top_ms: float) -> float:
    """The predicted bound the baselines are picked within: the one the device corrected for
    the job's own network (the fit stage's ``bound_ms``: where a network measured like it lands
    on the window's top), else the band's top the search kept to."""
    fitted = results.get("fit") or {}
    return float(fitted["bound_ms"]) if "bound_ms" in fitted else band_top_ms


# What a baseline's fit keeps with each network it tries (and puts back on the entry).
FIT_FIELDS = ("arch", "predicted_ms", "brief_holdout_accuracy", "block", "zero_cells")


def _fit(ctx: StageContext, spec: JobSpec, state: dict[str, Any], state_path: Path) -> None:
    """Each picked baseline measured untrained on the device and moved into the target's
    window, as the job's own network was (jobs/fit.py): a fair comparison spends the same
    share of the target. Random search moves among the networks it trained briefly that are
    predicted in the window (drawing a few more there when none is); the uniform network is
    rescaled."""
    from automl_server.jobs.fit import StateFile, fit_network

    store = StateFile(state_path, state)
    predict = current_prediction(ctx)
    for method in METHODS:
        entry = state["networks"][method]
        if "skipped" in entry or "fitted" in entry:
            continue
        first = {k: entry[k] for k in FIT_FIELDS if k in entry}

        def derive(bound_ms: float, measured: list[list[str]], method: str = method,
                   entry: dict[str, Any] = entry) -> dict[str, Any] | None:
            if method == "random":
                _predict_tried(entry, predict)
            # Random search keeps to the window's share of the bound too: a network predicted
            # under its bottom is one the device would also time under the window.
            found = _faster(ctx, method, entry, bound_ms, floor_ms=bound_ms * WINDOW_LOW / MOVE_TOP,
                            # Random search's next best in the band, not one timed already; the uniform
                            # network has no other of its kind between its rescale and the bound.
                            exclude=measured if method == "random" else None)
            return None if found is None else {k: found[k] for k in FIT_FIELDS if k in found}

        fitted = fit_network(ctx, spec, f"the {method} baseline", f"baseline-{method}", first, derive, predict,
                             entry.setdefault("fit", {}), store, progress_at=PICK)
        entry.update(fitted["network"])
        entry["fitted"] = {k: fitted[k] for k in ("measured_ms", "try", "inside_window", "tries", "ended",
                                                  "device_seconds") if k in fitted}
        entry.pop("fit")
        _save(state_path, state)


def _predict_tried(entry: dict[str, Any], predict: Predict) -> None:
    """Random search's briefly trained networks, their predictions by the predictor as it is now."""
    again = predict([{**entry["arch"], "blocks": tried["blocks"]} for tried in entry["tried"]])
    for tried, predicted in zip(entry["tried"], again):
        tried["predicted_ms"] = round(predicted, 6)


# A brief training is at most this share of the full one (in epochs).
BRIEF_SHARE = 0.25


def brief_epochs(budget: Budget) -> int:
    """Epochs of each of random search's brief trainings: ``budget.tune_epochs`` (8 of the
    default 150 train epochs), at most ``BRIEF_SHARE`` of ``train_epochs``, at least 1. The
    cap keeps "trained briefly" (issue 17) brief on a short budget: at ``train_epochs`` 8 the
    brief training was the full one, so random search's minimum of 3 networks alone cost 3
    trainings, more than the search on every proxyless-mobile job at 32 px (134-496 s against
    114-155 s, 2026-12-06), and it judged its networks by their final accuracy, which no
    search at the search's cost can."""
    return max(1, min(budget.tune_epochs, int(budget.train_epochs * BRIEF_SHARE)))


def search_cost_s(results: dict[str, Any]) -> float:
    """What the job's search cost: the search stage's seconds and the tune stage's."""
    search = results.get("search") or {}
    tune = results.get("tune") or {}
    return float(search.get("search_seconds") or 0.0) + float(tune.get("tune_seconds") or 0.0)


def _pick(ctx: StageContext, spec: JobSpec, bound_ms: float) -> dict[str, Any]:
    """The two baselines' networks: a random search within the bound, and the uniform network."""
    from automl_server.engine.baselines import random_search, uniform_network

    layout = job_layout(ctx)
    model = latency_model(ctx, layout)
    budget_s = search_cost_s(ctx.results)
    brief = brief_epochs(spec.budget)
    ctx.progress(0.0, f"random search: networks of {layout.space} predicted within {bound_ms:.4g} ms, "
                 f"{brief} epoch(s) each, for about the search's {budget_s:.0f} s")
    data, _ = load_split(ctx)

    def on_network(tried: Any, number: int) -> None:
        ctx.event("metric", f"random search network {number}: holdout accuracy {tried.holdout_accuracy:.3f}, "
                  f"predicted {tried.predicted_ms:.4g} ms", baseline="random", network=number,
                  holdout_accuracy=round(tried.holdout_accuracy, 6), predicted_ms=round(tried.predicted_ms, 6),
                  seconds=round(tried.seconds, 3))
        ctx.progress(PICK * min(tried.seconds * number / max(budget_s, 1e-9), 1.0),
                     f"random search: {number} network(s) trained briefly")

    found = random_search(layout, data, model, bound_ms, budget_s=budget_s, brief_epochs=brief,
                          seed=spec.seed, batch_size=spec.batch_size, on_step=ctx.check_cancelled,
                          on_network=on_network)
    uniform = uniform_network(layout, model, bound_ms)
    ctx.progress(PICK, "baselines picked; training each with the job's train budget")
    return {"random": _random_entry(found, bound_ms, brief, budget_s),
            "uniform": _uniform_entry(uniform, bound_ms)}


def _random_entry(found: RandomSearchResult | None, bound_ms: float, brief_epochs: int,
                  budget_s: float) -> dict[str, Any]:
    if found is None:
        return {"skipped": f"no network sampled from the space is predicted within {bound_ms:.4g} ms"}
    return {"arch": found.best.arch.to_dict(), "predicted_ms": round(found.best.predicted_ms, 6),
            "brief_holdout_accuracy": round(found.best.holdout_accuracy, 6), "networks": found.networks,
            "candidates": found.candidates, "brief_epochs": brief_epochs, "budget_s": round(budget_s, 3),
            "search_cost_s": round(found.cost_s, 3),
            "tried": [{"blocks": list(t.arch.blocks), "predicted_ms": round(t.predicted_ms, 6),
                       "holdout_accuracy": round(t.holdout_accuracy, 6), "seconds": round(t.seconds, 3)}
                      for t in found.tried]}


def _uniform_entry(uniform: UniformNetwork | None, bound_ms: float) -> dict[str, Any]:
    if uniform is None:
        return {"skipped": f"no uniform network of the space (one block type, Zero cells where allowed) is "
                           f"predicted within {bound_ms:.4g} ms"}
    return {"arch": uniform.arch.to_dict(), "predicted_ms": round(uniform.predicted_ms, 6), "block": uniform.block,
            "zero_cells": list(uniform.zero_cells), "search_cost_s": 0.0}


class _ShareCallbacks(StageCallbacks):
    """A baseline's training callbacks: its progress is a share of the stage's bar, named."""

    def __init__(self, ctx: StageContext, ends: float | None, low: float, high: float, label: str) -> None:
        super().__init__(ctx, ends)
        self.low, self.high, self.label = low, high, label

    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        share = self.low + (self.high - self.low) * min(max(fraction, 0.0), 1.0)
        self.ctx.progress(share, f"{self.label}: {message}", baseline=self.label, **data)

    def store_artifact(self, kind: str, path: Path) -> None:
        """A baseline's files (a pipeline's figures) stay in its folder: the job's downloads of
        each kind are its own network's."""


def _train(ctx: StageContext, method: str, entry: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    """Train one baseline as the job's network was trained, and export the file its device runs."""
    from automl_server.jobs.train import train_arch
    from search_spaces import Arch

    arch = Arch.from_dict(entry["arch"])
    work_dir = _work_dir(ctx, method, entry)
    work_dir.mkdir(exist_ok=True)
    ctx.progress(low, f"training the {method} baseline with the job's train budget")
    trained = train_arch(ctx, arch, work_dir,
                         lambda c, ends: _ShareCallbacks(c, ends, low, high, f"{method} baseline"))
    out = trained.output
    exported = export_device_file(ctx, trained.model, arch, work_dir)
    ctx.event("metric", f"{method} baseline trained: test accuracy {out['test_accuracy']:.3f}", baseline=method,
              test_accuracy=out["test_accuracy"], predicted_ms=entry["predicted_ms"])
    return {"test_accuracy": out["test_accuracy"], "holdout_accuracy": out["holdout_accuracy"],
            "epochs": out["epochs"], "train_seconds": out["train_seconds"], "exported": exported}


def _tries(entry: dict[str, Any]) -> int:
    """How many networks of this baseline measured over the target before the current one."""
    return len(entry.get("tries", ()))


def _try_name(method: str, entry: dict[str, Any]) -> str:
    """The name of the baseline's current network's files: one training folder and one device
    answer per try, so that a retry neither resumes from the missed network's checkpoints nor
    reads its answer as its own."""
    return f"baseline-{method}" if not _tries(entry) else f"baseline-{method}-try-{_tries(entry) + 1}"


def _result_file(method: str, entry: dict[str, Any]) -> str:
    return f"{_try_name(method, entry)}.json"


def _work_dir(ctx: StageContext, method: str, entry: dict[str, Any]) -> Path:
    return ctx.job_dir() / _try_name(method, entry)


def _retry_misses(ctx: StageContext, state: dict[str, Any], state_path: Path, bound_ms: float) -> bool:
    """A baseline measured over the target gets what the job's own network gets
    (jobs/promise.py): the next-faster network of its own method, trained with the same
    budget and measured again, at most ``BASELINE_RETRIES`` times. Without this a baseline
    that missed the target would be compared at more latency than the searched network is
    allowed (a uniform network measured 2% over its target on mnist-5k, 2026-12-06). The
    faster network's bound follows the promise's rule (``retry_band``): after the fit, where
    a network measured like the miss lands on the window's middle; without it, the band's top
    divided by the miss's measured/predicted ratio; at least ``promise.STEP`` under the
    missed prediction either way.
    Random search takes the best of the networks it trained briefly within that bound (after
    the fit, in the move's band, drawing more there when none is); the uniform network is
    scaled down to it. True when a baseline is to be trained again
    (the state saved before it is; the warnings go on the timeline once, even when a
    stage lost before that save decides again on its next run)."""
    target_ms = float(ctx.params["latency_target_ms"])
    predict = current_prediction(ctx)
    retried = ended = False
    for method in METHODS:
        entry = state["networks"][method]
        result = ctx.job_dir() / _result_file(method, entry)
        if "trained" not in entry or "retry_ended" in entry or not result.exists():
            continue
        measured = kept_measurement(ctx.job_dir(), result.name)
        if "error" in measured or float(measured["measured_ms"]) <= target_ms:
            continue
        measured_ms, predicted_ms = float(measured["measured_ms"]), float(entry["predicted_ms"])
        missed = (f"the {method} baseline measured {measured_ms:.4g} ms, over the {target_ms:.4g} ms target "
                  f"(predicted {predicted_ms:.4g} ms)")
        if _tries(entry) >= BASELINE_RETRIES:
            entry["retry_ended"] = f"{missed}; no retry left (at most {BASELINE_RETRIES})"
            ctx.event_once("warning", entry["retry_ended"], baseline=method)
            ended = True
            continue
        # The bound is applied by the predictor as it is now (the job's timings have calibrated
        # it since the network was picked): the miss's ratio and the STEP under it in its terms
        # too, and random search's networks judged by it (as jobs/promise.next_faster does).
        now_ms = predict([entry["arch"]])[0]
        if method == "random":
            _predict_tried(entry, predict)
        faster_ms, floor_ms = retry_band(bound_ms, now_ms, measured_ms, target_ms if "fitted" in entry else None)
        # And never a network this baseline already measured over the target (an earlier try the
        # predictor may since have put under the bound).
        missed_blocks = [list(entry["arch"]["blocks"])] + [list(t["arch"]["blocks"]) for t in entry.get("tries", ())]
        faster = _faster(ctx, method, entry, faster_ms, floor_ms=floor_ms, exclude=missed_blocks)
        if faster is None:
            entry["retry_ended"] = f"{missed}; no faster {method} network is predicted within {faster_ms:.4g} ms"
            ctx.event_once("warning", entry["retry_ended"], baseline=method)
            ended = True
            continue
        entry.setdefault("tries", []).append({
            "arch": entry["arch"], "predicted_ms": predicted_ms, "predicted_at_retry_ms": round(now_ms, 6),
            "measured_ms": measured_ms, "test_accuracy": entry["trained"]["test_accuracy"],
            "aimed_under_ms": round(faster_ms, 6)})
        del entry["trained"]
        entry.update(faster)
        ctx.event_once("warning", f"{missed}; trying a faster one, predicted {faster['predicted_ms']:.4g} ms",
                       baseline=method, try_number=_tries(entry) + 1, predicted_ms=faster["predicted_ms"])
        retried = True
    if retried:  # the retried networks are measured anew; the device's time counts from the first send
        state.setdefault("first_sent_at", state.get("sent_at"))
        state.pop("sent_at", None)
    if retried or ended:
        _save(state_path, state)
    return retried


def retry_band(bound_ms: float, predicted_ms: float, measured_ms: float,
               fitted_target_ms: float | None) -> tuple[float, float | None]:
    """(top, floor) in predicted terms of a baseline's next network after one predicted
    ``predicted_ms`` (by the predictor as it is now) measured ``measured_ms`` over the target.

    After the baselines' fit (``fitted_target_ms``: the job's target) the retry aims as the
    job's own network's does after its fit (``promise.faster_top_after_fit``): where a network
    measured like the miss lands on the window's middle, at least ``promise.STEP`` under the
    miss; random search keeps to that move's band, its
    floor the window's bottom (``WINDOW_LOW / MOVE_TOP`` of the top, as the fit's moves and
    ``margin.into_window``). Until 2026-12-07 the retry divided the fit-corrected ``bound_ms``
    (the job network's ratio already in it) by the miss's ratio too, and took random search's
    best network anywhere under it: a random search network retried this way was measured at
    0.78 of its target beside a searched network at 0.95 (proxyless-mobile at 32 px, 60%,
    2026-12-07), a comparison at less latency than the searched network spends.
    Without a fit: the promise's rule from the band's top (``promise.faster_top``), no floor."""
    from automl_server.jobs.promise import faster_top, faster_top_after_fit

    if fitted_target_ms is None or measured_ms <= 0:
        return faster_top(bound_ms, predicted_ms, measured_ms), None
    top = faster_top_after_fit(fitted_target_ms, predicted_ms, measured_ms)
    return top, top * WINDOW_LOW / MOVE_TOP


def _faster(ctx: StageContext, method: str, entry: dict[str, Any], max_ms: float,
            floor_ms: float | None = None, exclude: list[list[str]] | None = None) -> dict[str, Any] | None:
    """The baseline's next network within ``max_ms``: the fields of its entry that change.
    With ``floor_ms`` (the fit's move: the window's bottom in predicted terms), random search
    takes the best of its networks predicted in ``[floor_ms, max_ms]``, and draws more in
    that band when it has none there: a network far under the window spends less of the
    target than the searched network may (a random search compared at 0.62 of its target
    beside a searched network at 0.92, proxyless-mobile at 32 px, 2026-12-06). The uniform
    network is rescaled to ``max_ms`` (its closest under it). ``exclude``: block lists never
    taken (the networks a retry moves away from)."""
    excluded = [list(blocks) for blocks in exclude or ()]
    if method == "random":
        within = [t for t in entry.get("tried", ())
                  if t["predicted_ms"] <= max_ms and list(t["blocks"]) not in excluded]
        if floor_ms is not None:
            in_band = [t for t in within if t["predicted_ms"] >= floor_ms]
            within = in_band or _sample_more(ctx, entry, max_ms, floor_ms) or within
        if not within:
            within = _sample_more(ctx, entry, max_ms)
        if not within:
            return None
        best = max(within, key=lambda t: t["holdout_accuracy"])
        return {"arch": {**entry["arch"], "blocks": list(best["blocks"])}, "predicted_ms": best["predicted_ms"],
                "brief_holdout_accuracy": best["holdout_accuracy"]}
    from automl_server.engine.baselines import uniform_network

    layout = job_layout(ctx)
    model = latency_model(ctx, layout)
    limit = max_ms
    while True:
        uniform = uniform_network(layout, model, limit)
        if uniform is None:
            return None
        if list(uniform.arch.blocks) not in excluded:
            return _uniform_entry(uniform, max_ms)
        limit = uniform.predicted_ms * (1 - 1e-9)  # the next uniform network under the excluded one


def _sample_more(ctx: StageContext, entry: dict[str, Any], max_ms: float,
                 floor_ms: float = 0.0) -> list[dict[str, Any]]:
    """Random search's answer when none of the networks it trained briefly is predicted within
    a lowered bound (its network measured over the target, or the fit moved the bound under
    all of them), or in the fit's band ``[floor_ms, max_ms]``: ``TOP_UP_NETWORKS`` more
    networks sampled there (none it tried before) and trained briefly, as a user running
    random search until networks meet the target would. Without this, random search kept
    networks measured at 1.07 and 1.22x the target on 2 of 3 proxyless-mobile 32 px jobs
    (2026-12-06), and was compared at more latency than the searched network may spend.
    The new networks join ``tried``; their seconds count in the row's ``search_cost_s``,
    the top-up in ``topped_up``. Empty when no sampled network is predicted within the
    bounds."""
    from automl_server.engine.baselines import random_search

    spec = JobSpec.from_params(ctx.params)
    layout = job_layout(ctx)
    brief_epochs = int(entry.get("brief_epochs") or 1)
    band = f"{floor_ms:.4g}-{max_ms:.4g} ms" if floor_ms > 0 else f"within {max_ms:.4g} ms"
    ctx.event("log", f"random search: none of its {len(entry.get('tried', ()))} network(s) is predicted {band}; "
              f"training {TOP_UP_NETWORKS} more sampled there", baseline="random", bound_ms=round(max_ms, 6),
              **({"floor_ms": round(floor_ms, 6)} if floor_ms > 0 else {}))
    data, _ = load_split(ctx)
    # A seed of its own per top-up: the first search's seed would draw, in the same order, the networks it skipped.
    seed = spec.seed + 1 + len(entry.get("topped_up", ()))
    found = random_search(layout, data, latency_model(ctx, layout), max_ms, budget_s=0.0, brief_epochs=brief_epochs,
                          seed=seed, batch_size=spec.batch_size, min_networks=TOP_UP_NETWORKS,
                          max_networks=TOP_UP_NETWORKS, on_step=ctx.check_cancelled,
                          skip=[tuple(t["blocks"]) for t in entry.get("tried", ())], min_ms=floor_ms)
    if found is None:
        return []
    added = [{"blocks": list(t.arch.blocks), "predicted_ms": round(t.predicted_ms, 6),
              "holdout_accuracy": round(t.holdout_accuracy, 6), "seconds": round(t.seconds, 3)} for t in found.tried]
    entry.setdefault("tried", []).extend(added)
    entry["networks"] = len(entry["tried"])
    entry["search_cost_s"] = round(float(entry.get("search_cost_s", 0.0)) + found.cost_s, 3)
    entry.setdefault("topped_up", []).append({"bound_ms": round(max_ms, 6), "networks": len(added),
                                              "seconds": round(found.cost_s, 3),
                                              **({"floor_ms": round(floor_ms, 6)} if floor_ms > 0 else {})})
    for number, tried in enumerate(added, start=1):
        ctx.event("metric", f"random search, more {band}, network {number}: holdout accuracy "
                  f"{tried['holdout_accuracy']:.3f}, predicted {tried['predicted_ms']:.4g} ms", baseline="random",
                  holdout_accuracy=tried["holdout_accuracy"], predicted_ms=tried["predicted_ms"])
    return added


def _measure(ctx: StageContext, spec: JobSpec, state: dict[str, Any], state_path: Path) -> None:
    """Each trained baseline measured on the job's device, a miss timed once more as the job's
    own network's is (``deploy.confirm_miss``); re-sends the stage until every answer is in."""
    networks = state["networks"]
    wanted = [m for m in METHODS if "trained" in networks[m]]
    pending = [m for m in wanted if not (ctx.job_dir() / _result_file(m, networks[m])).exists()]
    target = job_target(ctx)
    if pending:
        lost = ctx.broker_lost_since(state.get("sent_at"))
        if "sent_at" not in state or lost or time.time() - state["sent_at"] > VERIFY_TIMEOUT_S:
            if state.get("sent_at") and not lost:
                raise StageFailed(f"device {target.device_name!r} did not answer within {VERIFY_TIMEOUT_S:.0f} s "
                                  "for the baselines; check its agent's log, then re-run this job")
            _wait_for_device(ctx, spec, state, state_path, "the baselines need measuring on it")
            state["sent_at"] = time.time()
            _save(state_path, state)
            for method in pending:
                _send(ctx, target, method, networks[method], _result_file(method, networks[method]))
            # An eager Celery (tests, `automl` on one process) has answered already: no need to come back.
            pending = [m for m in wanted if not (ctx.job_dir() / _result_file(m, networks[m])).exists()]
        if pending:
            ctx.progress(PICK + TRAIN, f"measuring {len(pending)} baseline(s) on {target.device_name}",
                         device_status="online")
            raise StageWait(POLL_S, "waiting for the device's measurements of the baselines")
    target_ms = float(ctx.params["latency_target_ms"])
    sent = state.setdefault("again_sent_at", {})
    timing_again = [m for m in wanted if not confirm_miss(ctx, f"the {m} baseline", _result_file(m, networks[m]),
                                                          target_ms, sent, partial(_send, ctx, target, m, networks[m]))]
    _save(state_path, state)
    if timing_again:
        ctx.progress(PICK + TRAIN, f"timing {len(timing_again)} baseline(s) measured over the target once more "
                     f"on {target.device_name}", device_status="online")
        raise StageWait(POLL_S, "waiting for the device's second measurements of the baselines")


def _send(ctx: StageContext, target: Any, method: str, entry: dict[str, Any], result_file: str) -> None:
    """The baseline's trained network, in the file the device runs, sent to be timed into ``result_file``."""
    from search_spaces import Arch

    work_dir = _work_dir(ctx, method, entry)
    exported = {fmt: work_dir / name for fmt, name in entry["trained"]["exported"].items()}
    send_measurement(ctx, target, Arch.from_dict(entry["arch"]), exported, result_file)


def _output(ctx: StageContext, spec: JobSpec, state: dict[str, Any], bound_ms: float) -> dict[str, Any]:
    r = ctx.results
    target_ms = float(ctx.params["latency_target_ms"])
    verify, train, picked = r["verify"], r["train"], chosen(r)
    searched = {"method": "searched", "label": f"searched ({ctx.params.get('strategy') or spec.strategy})",
                "arch": picked["arch"], "predicted_ms": picked["predicted_ms"],
                "test_accuracy": train["test_accuracy"], "holdout_accuracy": train["holdout_accuracy"],
                "measured_ms": verify["measured_ms"], "raw_measured_ms": verify.get("raw_measured_ms"),
                "meets_target": verify["meets_target"], "search_cost_s": round(search_cost_s(r), 3),
                "train_seconds": train.get("train_seconds"), "epochs": train.get("epochs")}
    rows = [searched]
    device_seconds = 0.0
    for method in METHODS:
        entry = state["networks"][method]
        if "skipped" in entry:
            rows.append({"method": method, "label": _label(method, entry), "skipped": entry["skipped"]})
            continue
        row: dict[str, Any] = {"method": method, "label": _label(method, entry), "arch": entry["arch"],
                               "predicted_ms": entry["predicted_ms"],
                               "meets_predicted_bound": entry["predicted_ms"] <= bound_ms,
                               **{k: entry["trained"][k] for k in ("test_accuracy", "holdout_accuracy",
                                                                   "train_seconds", "epochs")},
                               "search_cost_s": entry["search_cost_s"]}
        row.update({k: entry[k] for k in ("networks", "candidates", "brief_epochs", "brief_holdout_accuracy",
                                          "tried", "topped_up", "block", "zero_cells", "tries", "retry_ended",
                                          "fitted")
                    if k in entry})
        measured = kept_measurement(ctx.job_dir(), _result_file(method, entry))
        if "error" in measured:
            row["measurement_error"] = str(measured["error"])
        else:
            fields = measurement_fields(measured, float(entry["predicted_ms"]), target_ms)
            row.update({k: fields[k] for k in ("measured_ms", "raw_measured_ms", "meets_target", "reliable",
                                               "rounds_ms") if k in fields})
        rows.append(row)
    first_sent = state.get("first_sent_at") or state.get("sent_at")
    if first_sent:
        device_seconds = max(0.0, time.time() - float(first_sent))
    # And the device's time fitting the picked networks before training (_fit).
    device_seconds += sum(float((state["networks"][m].get("fitted") or {}).get("device_seconds", 0.0)) for m in METHODS)
    ctx.event("metric", "baselines: " + "; ".join(
        f"{row['label']}: " + ("skipped" if "skipped" in row else
                               f"test accuracy {row['test_accuracy']:.3f}, measured "
                               + (f"{row['measured_ms']:.4g} ms" if "measured_ms" in row else "-"))
        for row in rows), baselines=[{k: row.get(k) for k in ("method", "test_accuracy", "measured_ms")}
                                     for row in rows])
    return {"target_ms": target_ms, "predicted_at_most_ms": round(bound_ms, 6), "rows": rows,
            "train_budget": {"epochs": spec.budget.train_epochs, "minutes": None if spec.budget.minutes is None
                             else round(spec.budget.minutes * MINUTE_SHARES["train"], 3),
                             "pipeline": ctx.params["pipeline"]},
            "device_seconds": round(device_seconds, 3)}


def _label(method: str, entry: dict[str, Any]) -> str:
    if method == "random":
        return f"random search (N={entry['networks']})" if "networks" in entry else "random search"
    if "block" in entry:
        skipped = len(entry["zero_cells"])
        return f"uniform {entry['block']}" + (f" ({skipped} cell{'s' if skipped != 1 else ''} skipped)" if skipped else "")
    return "uniform"


def _save(path: Path, state: dict[str, Any]) -> None:
    from automl_server.jobs.fit import StateFile

    StateFile(path, state).save()
