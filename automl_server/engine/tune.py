"""Tuning the latency loss with Optuna, warm-started from a finished search.

Each trial continues the searched supernet (weights and architecture logits)
for a few epochs with its own loss strength beta (mul#log) and learning rates,
chosen by TPE, and derives a network. A trial's value is the network's holdout
accuracy minus a penalty for a prediction over the target (``OVER_PENALTY``
per unit of relative excess), so a network over the target loses to one under
it. The best trial's network replaces the searched one only when its value is
better. Used by the job's tune stage (study in the service's database, so a
resumed stage keeps its finished trials) and by ``automl search --tune-trials``
(an in-memory study).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import optuna

from automl_server.engine.data import SplitData
from automl_server.engine.latency import LatencyModel
from automl_server.engine.search import EpochReport, ProxylessSearch, SearchConfig
from search_spaces import SpaceLayout

OVER_PENALTY = 2.0
# Ranges of the three tuned values (log-uniform). The loss strength's is absolute (the
# search script's 0.3 inside). The learning rates' are factors of the search's own, which
# a job chooses from its data (engine/search_plan.arch_lr_for: 3e-3 to 0.1 for the
# architecture, 0.05 for the weights; the CLI keeps the reference's 1e-3 and 0.025): a
# fixed range would centre the trials on one of them and clip the others (a job's 0.1
# lay above the earlier fixed (3e-4, 3e-2)). The factors give the earlier ranges back for
# the CLI's weight rate (0.025 -> 1e-3 .. 5e-2) and one decade each side of the
# architecture rate. Optuna accepts a parameter's range changing between trials of one
# study (only its kind and log scale must stay), so a study resumed across this change
# goes on.
LOSS_BETA = (0.1, 3.0)
ARCH_LR_FACTORS = (0.1, 10.0)
WEIGHT_LR_FACTORS = (0.04, 2.0)


def tuned_ranges(base: SearchConfig) -> dict[str, tuple[float, float]]:
    """The log-uniform range of each tuned value around the search config ``base``."""
    return {"loss_beta": LOSS_BETA,
            "arch_lr": (base.arch_lr * ARCH_LR_FACTORS[0], base.arch_lr * ARCH_LR_FACTORS[1]),
            "lr": (base.lr * WEIGHT_LR_FACTORS[0], base.lr * WEIGHT_LR_FACTORS[1])}


@dataclass(frozen=True)
class Candidate:
    """A derived network and how it was judged."""

    arch: dict[str, Any]
    predicted_ms: float
    holdout_accuracy: float


@dataclass(frozen=True)
class TuneOutcome:
    chosen: Candidate  # the best trial's network, or the searched one when no trial beat it
    used_trial: bool
    best_number: int
    best_params: dict[str, Any]
    best_value: float | None
    searched_value: float
    trials: int


def value_of(holdout_accuracy: float, predicted_ms: float, target_ms: float) -> float:
    """A trial's objective: accuracy, minus OVER_PENALTY per unit over the target."""
    return holdout_accuracy - OVER_PENALTY * max(0.0, predicted_ms / target_ms - 1.0)


def tune(layout: SpaceLayout, data: SplitData, latency_model: LatencyModel, base: SearchConfig,
         warm_state: Mapping[str, Any], searched: Candidate, *, trials: int, epochs: int, target_ms: float,
         seed: int, study_name: str, storage: optuna.storages.BaseStorage | None = None,
         on_step: Callable[[], None] | None = None,
         on_epoch: Callable[[int, EpochReport], None] | None = None,
         on_trial: Callable[[int, Candidate], None] | None = None,
         should_stop: Callable[[], bool] | None = None) -> TuneOutcome:
    """Run up to ``trials`` trials (fewer when the study already holds finished
    ones, or once ``should_stop`` says so) and choose the network."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)
    # A trial left RUNNING by a lost worker is marked failed; a resumed run does only what is left.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    ranges = tuned_ranges(base)

    def objective(trial: optuna.Trial) -> float:
        tried = {name: trial.suggest_float(name, low, high, log=True) for name, (low, high) in ranges.items()}
        config = replace(base, warmup_epochs=0, search_epochs=epochs, loss_beta=tried["loss_beta"],
                         arch_lr=tried["arch_lr"], lr=tried["lr"], seed=seed + 100 + trial.number)
        search = ProxylessSearch(layout, data, latency_model, config)
        search.net.load_state_dict(dict(warm_state))  # warm start: the searched weights and alphas
        search.on_step = on_step
        for _ in range(config.total_epochs):
            report = search.run_epoch()
            if on_epoch is not None:
                on_epoch(trial.number, report)
        result = search.result()
        candidate = Candidate(result.arch.to_dict(), result.expected_latency_ms, result.holdout_accuracy)
        trial.set_user_attr("arch", candidate.arch)
        trial.set_user_attr("predicted_ms", candidate.predicted_ms)
        trial.set_user_attr("holdout_accuracy", candidate.holdout_accuracy)
        if on_trial is not None:
            on_trial(trial.number, candidate)
        return value_of(candidate.holdout_accuracy, candidate.predicted_ms, target_ms)

    for _ in range(max(trials - finished, 0)):
        if should_stop is not None and should_stop():
            break
        study.optimize(objective, n_trials=1, catch=())
    best = study.best_trial
    searched_value = value_of(searched.holdout_accuracy, searched.predicted_ms, target_ms)
    use_trial = best.value is not None and best.value > searched_value
    chosen = Candidate(best.user_attrs["arch"], round(best.user_attrs["predicted_ms"], 6),
                       round(best.user_attrs["holdout_accuracy"], 6)) if use_trial else searched
    if not math.isfinite(chosen.predicted_ms):
        raise ValueError("tuning produced no usable network (its predicted latency is not finite)")
    return TuneOutcome(chosen=chosen, used_trial=use_trial, best_number=best.number, best_params=dict(best.params),
                       best_value=best.value, searched_value=searched_value, trials=len(study.trials))
