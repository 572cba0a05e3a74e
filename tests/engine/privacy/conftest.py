from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine.data import SplitData, split_arrays


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> SplitData:
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None]
    return split_arrays(x[:240], raw.target[:240].astype(np.int64), seed=0)
