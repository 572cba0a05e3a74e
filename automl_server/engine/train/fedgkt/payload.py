"""What FedGKT sends, as bytes: named numpy arrays in an uncompressed .npz.

The bytes accounted per round are ``len()`` of exactly these blobs, the ones
handed to the transport; no pickling (``allow_pickle=False``), so a payload
from another process can only carry arrays.

Upload (client -> server), per sample of the client's training data:
``ids``, ``features`` (H), ``logits`` (z_c), ``labels`` (y); and for its test
data ``test_ids``, ``test_features``, ``test_labels``.
Reply (server -> client): ``ids`` and ``logits`` (z_s) per training sample.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

UPLOAD_FIELDS = ("ids", "features", "logits", "labels", "test_ids", "test_features", "test_labels")
REPLY_FIELDS = ("ids", "logits")


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    # Any: typed as arrays, savez's **kwds could also fill its allow_pickle flag.
    contiguous: dict[str, Any] = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    np.savez(buffer, **contiguous)
    return buffer.getvalue()


def decode(blob: bytes, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of a blob; ValueError naming what is missing."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    missing = [name for name in fields if name not in arrays]
    if missing:
        raise ValueError(f"payload lacks {', '.join(missing)}; expected {', '.join(fields)}")
    return arrays
