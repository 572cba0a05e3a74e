"""Uploads as .npz arrays: x (N,H,W) or (N,H,W,C), y (N,), optional class
names; read without pickles, after the same bomb checks as any zip."""

from __future__ import annotations

import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from automl_server.datasets.archives import _corrupt_member, _open_zip
from automl_server.datasets.upload import ACCEPTED_FORMATS, Arrays, DatasetRejected, DatasetStats, UploadLimits

# --------------------------------------------------------------------------- npz arrays


def _load_npz(path: Path, limits: UploadLimits) -> Arrays:
    """Validated x (as stored), y as indices into classes, and class names."""
    # An npz is a zip: the same bomb checks run before numpy reads it, and numpy's reads go
    # through zipfile, which never yields more than the (checked) declared sizes.
    _open_zip(path, limits, "npz").close()
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for malformed files
        raise DatasetRejected("file", f"not a valid npz ({exc}); upload {ACCEPTED_FORMATS}") from exc
    with npz:
        keys = sorted(npz.files)
        x = _npz_array(npz, "x", keys)
        y = _npz_array(npz, "y", keys)
        names = _npz_array(npz, "classes", keys) if "classes" in keys else None
    _check_x(x)
    _check_y(y, len(x))
    y_index, classes = _npz_classes(y, names)
    return x, y_index, classes


def _npz_array(npz: Any, key: str, keys: list[str]) -> np.ndarray:
    if key not in keys:
        raise DatasetRejected(key, f"array {key!r} is missing; found {keys}; a .npz needs arrays x and y")
    try:
        return np.asarray(npz[key])
    except ValueError as exc:  # e.g. object arrays, which need pickle: never allowed
        detail = f"array {key!r} cannot be loaded ({exc}); accepted: numeric arrays (strings for 'classes')"
        raise DatasetRejected(key, detail + " saved without pickle") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _corrupt_member(key + ".npy", exc) from exc


def _check_x(x: np.ndarray) -> None:
    accepted = "accepted: (N,H,W) or (N,H,W,C) with C 1 or 3, uint8 or float in [0,1] or [0,255]"
    shape_ok = x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))
    if not shape_ok or x.shape[1] == 0 or x.shape[2] == 0:
        raise DatasetRejected("x", f"x has shape {x.shape}; {accepted}")
    if len(x) == 0:
        raise DatasetRejected("x", f"x has shape {x.shape}, i.e. no samples; each class needs at least one")
    if x.dtype == np.uint8:
        return
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetRejected("x", f"x has dtype {x.dtype}; {accepted}")
    if not np.isfinite(x).all():
        raise DatasetRejected("x", f"x contains NaN or infinite values; {accepted}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise DatasetRejected("x", f"x values span [{low:g}, {high:g}]; {accepted}")


def _check_y(y: np.ndarray, n: int) -> None:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        detail = f"y has shape {y.shape} and dtype {y.dtype}; accepted: 1-D integer labels (N,)"
        raise DatasetRejected("y", detail)
    if len(y) != n:
        raise DatasetRejected("y", f"y has {len(y)} labels but x has {n} samples; they must match")
    if len(y) and int(y.min()) < 0:
        raise DatasetRejected("y", f"y contains the negative label {int(y.min())}; labels must be >= 0")


def _npz_classes(y: np.ndarray, names: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    if names is None:
        # Without names, classes are the distinct labels in numeric order.
        labels, y_index = np.unique(y, return_inverse=True)
        classes = [str(int(v)) for v in labels]
    else:
        classes = _check_class_names(names)
        if int(y.max()) >= len(classes):
            detail = f"y contains label {int(y.max())} but classes has {len(classes)} names"
            raise DatasetRejected("y", f"{detail}; labels must be < {len(classes)}")
        counts = np.bincount(y, minlength=len(classes))
        empty = [c for c, k in zip(classes, counts) if k == 0]
        if empty:
            listed = ", ".join(map(repr, empty))
            raise DatasetRejected("classes", f"class(es) {listed} have no samples; each needs at least one")
        y_index = y
    if len(classes) < 2:
        found = ", ".join(map(repr, classes))
        raise DatasetRejected("classes", f"found {len(classes)} class ({found}); at least 2 are needed")
    return y_index.astype(np.int64), classes


def _check_class_names(names: np.ndarray) -> list[str]:
    if names.ndim != 1 or names.dtype.kind not in "US":
        detail = f"classes has shape {names.shape} and dtype {names.dtype}"
        raise DatasetRejected("classes", detail + "; accepted: a 1-D array of strings")
    classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(set(classes)) != len(classes):
        dupes = sorted(c for c, k in Counter(classes).items() if k > 1)
        raise DatasetRejected("classes", f"class names {dupes} appear more than once; names must be unique")
    return classes


def _npz_stats(x: np.ndarray, y: np.ndarray, classes: list[str]) -> DatasetStats:
    counts = np.bincount(y, minlength=len(classes))
    counted = {c: int(k) for c, k in zip(classes, counts)}
    channels = 1 if x.ndim == 3 else int(x.shape[3])
    return DatasetStats("npz", classes, counted, len(x), int(x.shape[1]), int(x.shape[2]), channels, True)


def _to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.dtype == np.uint8:
        return x
    # Floats within [0,1] are taken as normalised intensities, anything up to 255 as raw ones.
    scale = 255.0 if float(x.max()) <= 1.0 else 1.0
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
