from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automl_server.datasets import (
    DatasetRejected,
    DatasetStats,
    UploadLimits,
    detect_format,
    inspect_dataset,
    load_arrays,
)
from . import archives
from .archives import BAD_UPLOADS, NAMED_IN_DETAIL, good_npz, good_zip, image_bytes, write_zip


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def _rejection(path: Path, limits: UploadLimits = UploadLimits()) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        inspect_dataset(path, path.name, limits)
    return info.value


# --------------------------------------------------------------------------- good zips


@pytest.mark.parametrize("wrapper", [None, "pets"])
def test_zip_of_class_folders_is_described(tmp_path: Path, wrapper: str | None) -> None:
    path = good_zip(tmp_path, classes=("dog", "cat"), per_class=3, size=(20, 12), wrapper=wrapper)

    stats = inspect_dataset(path, "My Pets.ZIP")

    assert stats == DatasetStats(
        format="zip",
        classes=["cat", "dog"],
        counts={"cat": 3, "dog": 3},
        num_samples=6,
        image_height=12,
        image_width=20,
        channels=3,
        uniform_size=True,
    )


@pytest.mark.parametrize(("mode", "fmt", "channels"), [("L", "PNG", 1), ("L", "JPEG", 1), ("RGB", "JPEG", 3)])
def test_zip_arrays_have_one_channel_for_grey_and_three_for_colour(
    tmp_path: Path, mode: str, fmt: str, channels: int
) -> None:
    path = good_zip(tmp_path, classes=("a", "b", "c"), per_class=2, size=(10, 8), mode=mode, fmt=fmt)

    x, y, classes = load_arrays(path, "zip")

    assert inspect_dataset(path, path.name).channels == channels
    assert x.shape == (6, 8, 10, channels) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and y.dtype == np.int64
    assert classes == ["a", "b", "c"]


def test_png_pixels_survive_loading_exactly(tmp_path: Path) -> None:
    path = good_zip(tmp_path, per_class=1, size=(6, 4), mode="L")
    with zipfile.ZipFile(path) as zf, zf.open("cat/0.png") as member:
        expected = np.asarray(Image.open(member))

    x, _, _ = load_arrays(path, "zip")

    assert np.array_equal(x[0, :, :, 0], expected)


def test_mixed_sizes_are_resized_to_the_most_common_size(tmp_path: Path) -> None:
    members: dict[str, bytes | None] = {
        "cat/a.png": image_bytes((16, 16)),
        "cat/b.png": image_bytes((16, 16), seed=1),
        "dog/c.jpeg": image_bytes((30, 10), fmt="JPEG"),
        "dog/d.PNG": image_bytes((16, 16), mode="L", seed=2),
        "__MACOSX/dog/._c.jpeg": b"resource fork",
        "dog/.DS_Store": b"finder litter",
    }
    path = write_zip(tmp_path, "mixed.zip", members)

    stats = inspect_dataset(path, path.name)
    x, y, _ = load_arrays(path, "zip")

    assert (stats.uniform_size, stats.image_height, stats.image_width, stats.channels) == (False, 16, 16, 3)
    assert stats.counts == {"cat": 2, "dog": 2}
    assert x.shape == (4, 16, 16, 3)
    assert y.tolist() == [0, 0, 1, 1]


def test_grey_palette_image_counts_as_one_channel(tmp_path: Path) -> None:
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    grey.putpalette([v for i in range(256) for v in (i, i, i)])
    buf = io.BytesIO()
    grey.save(buf, "PNG")
    path = write_zip(tmp_path, "p.zip", {"a/1.png": buf.getvalue(), "b/1.png": image_bytes(mode="L")})

    assert inspect_dataset(path, path.name).channels == 1


# --------------------------------------------------------------------------- good npz


@pytest.mark.parametrize(("shape", "channels"), [((8, 6), 1), ((8, 6, 1), 1), ((8, 6, 3), 3)])
def test_npz_is_described_and_loaded_as_nhwc(tmp_path: Path, shape: tuple[int, ...], channels: int) -> None:
    path = good_npz(tmp_path, n=9, classes=3, shape=shape)

    stats = inspect_dataset(path, path.name)
    x, y, classes = load_arrays(path, "npz")

    assert stats.to_dict() == {
        "format": "npz",
        "classes": ["0", "1", "2"],
        "counts": {"0": 3, "1": 3, "2": 3},
        "num_samples": 9,
        "image_height": 8,
        "image_width": 6,
        "channels": channels,
        "uniform_size": True,
    }
    assert x.shape == (9, 8, 6, channels) and x.dtype == np.uint8
    assert y.tolist() == [0, 1, 2] * 3 and classes == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("values", "expected"), [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 2.4, 255.0], [0, 2, 255])]
)
def test_float_npz_is_scaled_to_uint8(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    x = np.zeros((4, 2, 3), dtype=np.float32)
    x[:, 0, :] = values
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]))

    loaded, _, _ = load_arrays(path, "npz")

    assert loaded.dtype == np.uint8
    assert loaded[0, 0, :, 0].tolist() == expected


def test_npz_labels_map_to_sorted_distinct_values(tmp_path: Path) -> None:
    path = tmp_path / "sparse.npz"
    np.savez(path, x=np.zeros((4, 2, 2), np.uint8), y=np.array([10, 2, 10, 7]))

    stats = inspect_dataset(path, path.name)
    _, y, classes = load_arrays(path, "npz")

    assert stats.classes == classes == ["2", "7", "10"]
    assert stats.counts == {"2": 1, "7": 1, "10": 2}
    assert y.tolist() == [2, 0, 2, 1]


def test_npz_class_names_keep_their_label_order(tmp_path: Path) -> None:
    path = tmp_path / "named.npz"
    np.savez(path, x=np.zeros((3, 2, 2), np.uint8), y=np.array([0, 1, 1]), classes=np.array(["zebra", "ant"]))

    stats = inspect_dataset(path, path.name)
    _, y, classes = load_arrays(path, "npz")

    assert stats.classes == classes == ["zebra", "ant"]
    assert stats.counts == {"zebra": 1, "ant": 2}
    assert y.tolist() == [0, 1, 1]


def test_stats_round_trip_through_a_dict(tmp_path: Path) -> None:
    stats = inspect_dataset(good_zip(tmp_path), "good.zip")

    assert DatasetStats.from_dict(stats.to_dict()) == stats


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("builder", "field", "status"), BAD_UPLOADS, ids=[builder.__name__ for builder, _, _ in BAD_UPLOADS]
)
def test_every_bad_upload_is_rejected_with_a_precise_reason(
    tmp_path: Path, builder: archives.Builder, field: str, status: int
) -> None:
    path = builder(tmp_path)

    error = _rejection(path)

    assert (error.field, error.status) == (field, status)
    assert NAMED_IN_DETAIL[builder] in error.detail


X2 = np.zeros((2, 4, 4), np.uint8)
Y2 = np.array([0, 1])


@pytest.mark.parametrize(
    ("arrays", "field", "named"),
    [
        ({"x": np.zeros((0, 4, 4), np.uint8), "y": np.zeros(0, np.int64)}, "x", "no samples"),
        ({"x": np.zeros((2, 4, 4, 2), np.uint8), "y": Y2}, "x", "(2, 4, 4, 2)"),
        ({"x": np.zeros((2, 4, 4), np.int32), "y": Y2}, "x", "int32"),
        ({"x": np.full((2, 4, 4), 300.0), "y": Y2}, "x", "300"),
        ({"x": np.full((2, 4, 4), np.nan), "y": Y2}, "x", "NaN"),
        ({"x": X2, "y": np.array([0.0, 1.0])}, "y", "float64"),
        ({"x": X2, "y": np.array([-1, 1])}, "y", "-1"),
        ({"x": X2, "y": np.array([0, 2]), "classes": np.array(["a", "b"])}, "y", "2"),
        ({"x": X2, "y": Y2, "classes": np.array(["a", "a"])}, "classes", "'a'"),
        ({"x": X2, "y": Y2, "classes": np.array([[1, 2]])}, "classes", "strings"),
    ],
)
def test_npz_contents_are_checked(
    tmp_path: Path, arrays: dict[str, np.ndarray], field: str, named: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)

    error = _rejection(path)

    assert (error.field, error.status) == (field, 422)
    assert named in error.detail


def test_unknown_extension_is_unsupported_media_type() -> None:
    with pytest.raises(DatasetRejected) as info:
        detect_format("photos.rar")

    assert (info.value.field, info.value.status) == ("file", 415)
    assert ".zip" in info.value.detail and ".npz" in info.value.detail


def test_extension_is_case_insensitive() -> None:
    assert (detect_format("A.ZIP"), detect_format("b.Npz")) == ("zip", "npz")


def test_upload_over_the_size_limit_is_too_large(tmp_path: Path) -> None:
    path = good_zip(tmp_path)

    error = _rejection(path, UploadLimits(max_upload_bytes=100))

    assert (error.field, error.status) == ("file.size", 413)
    assert str(path.stat().st_size) in error.detail and "100" in error.detail


@pytest.mark.parametrize("builder", [good_zip, good_npz])
def test_declared_uncompressed_size_over_the_limit_is_too_large(
    tmp_path: Path, builder: archives.Builder
) -> None:
    error = _rejection(builder(tmp_path), UploadLimits(max_uncompressed_bytes=500))

    assert (error.field, error.status) == ("archive.size", 413)
    assert "500" in error.detail


def test_too_many_entries_respects_the_configured_limit(tmp_path: Path) -> None:
    error = _rejection(archives.zip_too_many_entries(tmp_path, n=11), UploadLimits(max_entries=10))

    assert (error.field, error.status, "11" in error.detail) == ("archive.entries", 413, True)


def test_image_over_the_pixel_limit_is_rejected(tmp_path: Path) -> None:
    error = _rejection(good_zip(tmp_path, size=(16, 16)), UploadLimits(max_image_pixels=255))

    assert (error.field, error.status) == ("image", 422)
    assert "cat/0.png" in error.detail and "256" in error.detail and "255" in error.detail


def test_member_producing_more_than_declared_is_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile itself stops at the declared size; simulate an extractor that does not.
    path = good_zip(tmp_path)
    real_open = zipfile.ZipFile.open

    def doubled(self: zipfile.ZipFile, info: zipfile.ZipInfo, *args: object, **kwargs: object) -> io.BytesIO:
        return io.BytesIO(real_open(self, info).read() * 2)

    monkeypatch.setattr(zipfile.ZipFile, "open", doubled)

    error = _rejection(path)

    assert (error.field, error.status) == ("archive.size", 413)
    assert "cat/0.png" in error.detail


@pytest.mark.parametrize("builder", [good_zip, good_npz, archives.zip_slip, archives.npz_object_array])
def test_inspection_writes_nothing(tmp_path: Path, builder: archives.Builder) -> None:
    path = builder(tmp_path)
    before = _snapshot(tmp_path)

    try:
        inspect_dataset(path, path.name)
    except DatasetRejected:
        pass

    assert _snapshot(tmp_path) == before


def test_load_arrays_validates_too(tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected) as info:
        load_arrays(archives.zip_one_class(tmp_path), "zip")

    assert info.value.field == "classes"
