"""The standard training pipeline: it learns, it resumes exactly, it stops when asked."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine.data import split_arrays
from automl_server.engine.train import StandardConfig, evaluate, train_standard
from search_spaces import Arch, build_model

BLOCKS = ("mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    return split_arrays(x[:600], raw.target[:600].astype(np.int64), seed=0)


def model_for(data):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_model(Arch("tiny", data.resolution, data.num_classes, data.in_channels, BLOCKS))


def test_training_learns_far_above_chance(data):
    model = model_for(data)

    result = train_standard(model, data, StandardConfig(epochs=8, batch_size=32))

    assert result.epochs == 8 and len(result.history) == 8
    assert evaluate(model, data.x_holdout, data.y_holdout) > 0.6  # chance is 0.1


def test_resumed_training_equals_an_uninterrupted_one(data, tmp_path):
    config = StandardConfig(epochs=3, batch_size=32)
    straight = model_for(data)
    train_standard(straight, data, config)

    checkpoint = tmp_path / "train.ckpt"
    stopped = model_for(data)
    first = train_standard(stopped, data, config, checkpoint_path=checkpoint, should_stop=lambda: True)
    resumed = model_for(data)  # a new process: fresh weights, then the checkpoint
    second = train_standard(resumed, data, config, checkpoint_path=checkpoint)

    assert first.epochs == 1 and second.epochs == 3 and [h["epoch"] for h in second.history] == [1, 2, 3]
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_raising_step_callback_abandons_training_keeping_the_last_checkpoint(data, tmp_path):
    checkpoint = tmp_path / "train.ckpt"
    steps = 0

    def cancel_in_second_epoch() -> None:
        nonlocal steps
        steps += 1
        if steps > 20:  # 480 training images / 32 = 15 steps an epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_standard(model_for(data), data, StandardConfig(epochs=5, batch_size=32), checkpoint_path=checkpoint,
                       on_step=cancel_in_second_epoch)

    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1


def test_training_on_every_labelled_image_reports_no_holdout_accuracy():
    # A job's final fit: the holdout split joins the training data, none is held out.
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None][:200]
    everything = split_arrays(x, raw.target[:200].astype(np.int64), train_idx=np.arange(200),
                              holdout_idx=np.array([], dtype=np.int64))

    result = train_standard(model_for(everything), everything, StandardConfig(epochs=1, batch_size=32))

    assert len(everything.y_train) == 200
    assert result.history[0]["holdout_accuracy"] is None and 0 <= result.history[0]["train_accuracy"] <= 1
