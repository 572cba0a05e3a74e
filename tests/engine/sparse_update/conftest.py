"""Shared fixtures: a tiny network pretrained on digits 0-4, data of digits 5-9
(the transfer task), and a callbacks object that records what a job would see."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine.data import SplitData, split_arrays
from automl_server.engine.train import StandardConfig, train_standard
from search_spaces import Arch, build_model

BLOCKS = ("mb3_k3", "mb3_k3", "zero", "mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3", "mb3_k3")


def digits(classes: range, limit: int) -> tuple[np.ndarray, np.ndarray]:
    raw = load_digits()
    keep = np.isin(raw.target, list(classes))
    x = np.rint(raw.images[keep] * 255 / 16).astype(np.uint8)[..., None][:limit]
    y = (raw.target[keep] - classes.start).astype(np.int64)[:limit]
    return x, y


def tiny_model(num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Arch("tiny", 8, num_classes, 1, BLOCKS))


@pytest.fixture(scope="session")
def pretrained() -> dict[str, torch.Tensor]:
    """State of a tiny network trained briefly on digits 0-4 (the 'parent job')."""
    torch.set_num_threads(1)
    x, y = digits(range(0, 5), 400)
    model = tiny_model()
    train_standard(model, split_arrays(x, y, seed=0), StandardConfig(epochs=3, batch_size=32))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def new_classes() -> SplitData:
    """Digits 5-9, labelled 0-4: what the network is fine-tuned on."""
    x, y = digits(range(5, 10), 300)
    return split_arrays(x, y, seed=0)


@pytest.fixture
def parent(pretrained: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = tiny_model()
    model.load_state_dict(pretrained)
    return model.eval()


class RecordingCallbacks:
    def __init__(self, cancel_after_steps: int | None = None) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.logs: list[str] = []
        self.progress_seen: list[float] = []
        self.artifacts: list[tuple[str, Path]] = []
        self.steps = 0
        self.cancel_after_steps = cancel_after_steps

    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        self.progress_seen.append(fraction)

    def metric(self, message: str, **data: Any) -> None:
        self.metrics.append(data)

    def log(self, message: str, **data: Any) -> None:
        self.logs.append(message)

    def check_cancelled(self) -> None:
        self.steps += 1
        if self.cancel_after_steps is not None and self.steps > self.cancel_after_steps:
            raise KeyboardInterrupt("cancelled")

    def should_stop(self) -> bool:
        return False

    def store_artifact(self, kind: str, path: Path) -> None:
        self.artifacts.append((kind, path))
