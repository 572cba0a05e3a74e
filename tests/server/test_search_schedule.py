"""The search stage's settings for a job: the loss the target allows, the schedule the
dataset's size needs, and no budget spent tuning a latency term that is not there."""
from __future__ import annotations

from types import SimpleNamespace

from automl_server.jobs.search_stage import search_config, tune_latency_loss
from automl_server.jobs.spec import JobSpec


def ctx(target_ms: float, train_samples: int, **results) -> SimpleNamespace:  # type: ignore[no-untyped-def]
    return SimpleNamespace(params={"latency_target_ms": target_ms}, job_id="j",
                           results={"profile": {"achievable_ms": [1.0, 4.0], "calibration": None},
                                    "validate": {"train_samples": train_samples}, **results})


def test_a_target_every_network_meets_searches_for_accuracy_alone_on_a_small_dataset():
    # 200 images -> 120 training images, 1 batch of 64 an epoch; the budget's 10 + 30 epochs
    config = search_config(ctx(50.0, 120), JobSpec())

    assert config.loss_kind == "none"
    assert config.derive == "argmax"  # not the slowest blocks that would fill a target band
    assert config.warmup_epochs == 200  # 200 weight steps of warm-up, not 10
    assert config.search_epochs == 30 and config.min_arch_steps == 300


def test_a_target_inside_the_range_on_a_large_dataset_keeps_the_budget_and_the_paper_loss():
    config = search_config(ctx(3.0, 50_000), JobSpec())

    assert config.loss_kind == "mul#log" and config.derive == "target"
    assert (config.warmup_epochs, config.search_epochs) == (10, 30)


def test_tuning_is_skipped_when_accuracy_alone_counts():
    searched = {"arch": {"blocks": []}, "predicted_ms": 2.0, "holdout_accuracy": 0.9, "accuracy_alone": True}

    output = tune_latency_loss(ctx(50.0, 120, search=searched))

    assert "accuracy alone counts" in output["skipped"]
    assert output["arch"] == searched["arch"]
