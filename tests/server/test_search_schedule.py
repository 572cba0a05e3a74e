"""The search stage's settings for a job: the loss the target allows, the derivation
when accuracy alone counts, and the schedule the dataset's size needs."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import load_digits

from automl_server.engine.data import split_arrays
from automl_server.engine.latency import FlopsLatencyModel
from automl_server.engine.search import run_search
from automl_server.engine.search_plan import arch_lr_for
from automl_server.jobs.search_stage import resumed_config, search_config
from automl_server.jobs.spec import JobSpec
from search_spaces import get_space


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


def test_the_architecture_step_size_follows_the_number_of_architecture_steps():
    # ARCH_TRAVEL_NATS / steps within (3e-3, 0.1): by hand, 9 / 300 = 0.03
    assert arch_lr_for(300) == pytest.approx(0.03)
    assert arch_lr_for(88) == 0.1  # 9 / 88 = 0.102, capped
    assert arch_lr_for(11_700) == 3e-3  # 9 / 11,700 = 7.7e-4, floored at the reference's order

    small = search_config(ctx(50.0, 120), JobSpec())  # 30 search epochs of 10 steps
    large = search_config(ctx(3.0, 50_000), JobSpec())  # 781 batches: 390 steps an epoch, 11,700 in all
    assert small.arch_lr == pytest.approx(0.03) and large.arch_lr == 3e-3


def test_a_search_checkpointed_with_the_learning_rates_of_an_earlier_version_resumes_with_them(tmp_path):
    raw = load_digits()
    x = np.rint(raw.images[:300] * 255 / 16).astype(np.uint8)[..., None]
    data = split_arrays(x, raw.target[:300].astype(np.int64), seed=0)
    layout = get_space("tiny").layout(data.resolution, data.num_classes, data.in_channels)
    job = ctx(50.0, len(data.y_train))
    events: list[str] = []
    job.event = lambda kind, message, **fields: events.append(message)
    now = search_config(job, JobSpec(), warmup_epochs=1, search_epochs=2)
    earlier = replace(now, lr=0.025, arch_lr=3e-3)  # what the service chose before
    checkpoint = tmp_path / "search.ckpt"
    run_search(layout, data, FlopsLatencyModel(), earlier, checkpoint_path=checkpoint, stop_after_epoch=1)
    with pytest.raises(ValueError, match="another search config"):  # what the engine says to the new settings
        run_search(layout, data, FlopsLatencyModel(), now, checkpoint_path=checkpoint)

    resumed = resumed_config(job, now, checkpoint)
    result = run_search(layout, data, FlopsLatencyModel(), resumed, checkpoint_path=checkpoint)

    assert (resumed.lr, resumed.arch_lr) == (0.025, 3e-3)
    assert len(result.history) == now.total_epochs  # the checkpointed epoch kept, the rest run
    assert len(events) == 1 and "lr 0.05" in events[0] and "lr 0.025" in events[0]
    assert resumed_config(job, now, tmp_path / "none.ckpt") is now  # a fresh search takes this version's
