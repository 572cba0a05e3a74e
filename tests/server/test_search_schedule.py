"""The search stage's settings for a job: the loss the target allows, the derivation
when accuracy alone counts, and the schedule the dataset's size needs."""
from __future__ import annotations

from types import SimpleNamespace

from automl_server.jobs.search_stage import search_config
from automl_server.jobs.spec import JobSpec


def ctx(target_ms: float, train_samples: int) -> SimpleNamespace:
    return SimpleNamespace(params={"latency_target_ms": target_ms}, job_id="j",
                           results={"profile": {"achievable_ms": [1.0, 4.0], "calibration": None},
                                    "validate": {"train_samples": train_samples}})


def test_a_target_every_network_meets_searches_for_accuracy_alone_on_a_small_dataset():
    # 200 images -> 120 training images, 1 batch of 64 an epoch; the budget's 10 + 30 epochs
    config = search_config(ctx(50.0, 120), JobSpec())

    assert config.loss_kind == "none"
    assert config.derive == "argmax"  # not the slowest blocks that would fill a target band
    assert config.warmup_epochs == 100  # 100 weight steps of warm-up, not 10
    assert config.search_epochs == 30 and config.min_arch_steps_per_epoch == 10  # 300 in the search


def test_a_target_inside_the_range_on_a_large_dataset_keeps_the_budget_and_the_paper_loss():
    config = search_config(ctx(3.0, 50_000), JobSpec())

    assert config.loss_kind == "mul#log" and config.derive == "target"
    assert (config.warmup_epochs, config.search_epochs) == (10, 30)
