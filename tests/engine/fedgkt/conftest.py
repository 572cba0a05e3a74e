from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine.data import SplitData, split_arrays
from search_spaces import Arch

BLOCKS = ("mb3_k3",) * 8


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def digits_split() -> SplitData:
    """240 of the bundled digits, split as a job splits them (also used by ``stage_process``)."""
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    return split_arrays(x[:240], raw.target[:240].astype(np.int64), seed=0)


@pytest.fixture(scope="session")
def digits() -> SplitData:
    return digits_split()


def tiny_arch(data: SplitData) -> Arch:
    return Arch("tiny", data.resolution, data.num_classes, data.in_channels, BLOCKS)
