"""Tuning the latency loss with Optuna: the trials' learning rates are tried
around the search's own, whichever rates the search ran with."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from sklearn.datasets import load_digits

from automl_server.engine.data import split_arrays
from automl_server.engine.latency import FlopsLatencyModel
from automl_server.engine.search import ProxylessSearch, SearchConfig
from automl_server.engine.tune import Candidate, tune, tuned_ranges
from search_spaces import get_space


def test_the_learning_rate_ranges_are_a_decade_around_the_searchs_own() -> None:
    # A job's search at architecture lr 0.03 and weight lr 0.05 (engine/search_plan.arch_lr_for).
    job = tuned_ranges(SearchConfig(arch_lr=0.03, lr=0.05))
    assert job["arch_lr"] == pytest.approx((0.003, 0.3))
    assert job["lr"] == pytest.approx((0.002, 0.1))
    # The CLI's reference rates (1e-3, 0.025): the weight range as before, 1e-3 inside the architecture one.
    cli = tuned_ranges(SearchConfig())
    assert cli["arch_lr"] == pytest.approx((1e-4, 1e-2))
    assert cli["lr"] == pytest.approx((1e-3, 5e-2))
    assert cli["loss_beta"] == job["loss_beta"] == (0.1, 3.0)


@pytest.mark.parametrize("arch_lr", [0.1, 1e-3])
def test_every_trial_tries_rates_in_the_range_of_the_search_it_continues(arch_lr: float) -> None:
    raw = load_digits()
    x = np.rint(raw.images[:200] * 255 / 16).astype(np.uint8)[..., None]
    data = split_arrays(x, raw.target[:200].astype(np.int64), seed=0)
    layout = get_space("tiny").layout(data.resolution, data.num_classes, data.in_channels)
    base = SearchConfig(warmup_epochs=1, search_epochs=1, batch_size=32, arch_update_every=1, target_ms=0.05,
                        arch_lr=arch_lr, seed=3)
    search = ProxylessSearch(layout, data, FlopsLatencyModel(), base)
    for _ in range(base.total_epochs):
        search.run_epoch()
    result = search.result()
    searched = Candidate(result.arch.to_dict(), result.expected_latency_ms, result.holdout_accuracy)

    storage = optuna.storages.InMemoryStorage()
    outcome = tune(layout, data, FlopsLatencyModel(), base, search.net.state_dict(), searched, trials=4, epochs=1,
                   target_ms=0.05, seed=0, study_name="t", storage=storage)

    assert outcome.trials == 4
    tried = [trial.params["arch_lr"] for trial in optuna.load_study(study_name="t", storage=storage).trials]
    assert len(tried) == 4
    assert all(arch_lr / 10 <= value <= arch_lr * 10 for value in tried), tried
