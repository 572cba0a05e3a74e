"""Validate uploaded datasets (.zip of class folders, or .npz arrays) and turn them into arrays.

Uploads are untrusted: nothing is extracted to disk, every zip member is checked for path tricks
and bomb-like sizes before anything is decompressed, and images are decoded one at a time under
a pixel limit of our own. The checks live in ``archives`` (zips and images) and ``npz``; the
limits, statistics and the rejection in ``upload``.
"""

from __future__ import annotations

from pathlib import Path

from automl_server.datasets.archives import _check_upload_size, _inspect_zip, _load_zip
from automl_server.datasets.npz import _load_npz, _npz_stats, _to_uint8_nhwc
from automl_server.datasets.upload import (  # noqa: F401  (re-exported: the package's public names)
    ACCEPTED_FORMATS,
    IMAGE_EXTENSIONS,
    ZIP_LAYOUT,
    Arrays,
    DatasetRejected,
    DatasetStats,
    UploadLimits,
)

def detect_format(filename: str) -> str:
    name = (filename or "").lower()
    for fmt in ("zip", "npz"):
        if name.endswith("." + fmt):
            return fmt
    raise DatasetRejected("file", f"unsupported file type {filename!r}; upload {ACCEPTED_FORMATS}", 415)


def inspect_dataset(path: Path, filename: str, limits: UploadLimits = UploadLimits()) -> DatasetStats:
    """Validate the upload completely and describe it. Reads only."""
    fmt = detect_format(filename)
    _check_upload_size(path, limits)
    if fmt == "zip":
        return _inspect_zip(path, limits)
    return _npz_stats(*_load_npz(path, limits))


def load_arrays(path: Path, fmt: str, limits: UploadLimits = UploadLimits()) -> Arrays:
    """Return x (uint8 NHWC), y (int64 indices into classes) and classes."""
    if fmt not in ("zip", "npz"):
        raise DatasetRejected("file", f"unsupported format {fmt!r}; expected 'zip' or 'npz'", 415)
    _check_upload_size(path, limits)
    if fmt == "npz":
        x, y, classes = _load_npz(path, limits)
        return _to_uint8_nhwc(x), y, classes
    return _load_zip(path, limits)
