"""What an upload is held to and described by: limits, statistics, the
rejection every check raises, and the accepted formats (shared by the archive
and npz readers and the public functions of ``ingest``)."""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, list[str]]  # x uint8 NHWC, y int64 class indices, class names

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ZIP_LAYOUT = "a .zip of class folders, e.g. cat/1.png and dog/2.jpg (optionally in one top-level folder)"
ACCEPTED_FORMATS = f"{ZIP_LAYOUT}, or a .npz with arrays x (N,H,W) or (N,H,W,C) and y (N,)"
_CHUNK = 1024 * 1024
# Small, highly compressible files (blank masks, icons) are legitimate; only members big enough
# to hurt are held to the compression-ratio limit.
_RATIO_MIN_BYTES = 1024 * 1024
_EOCD = struct.Struct("<4s4H2LH")  # end-of-central-directory record
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # its zip64 counterpart


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int = 200 * 1024 * 1024
    max_uncompressed_bytes: int = 2 * 1024**3
    max_entries: int = 200_000
    max_compression_ratio: float = 200.0
    max_image_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class DatasetStats:
    format: str
    classes: list[str]
    counts: dict[str, int]
    num_samples: int
    image_height: int
    image_width: int
    channels: int
    uniform_size: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetStats:
        sizes = {k: int(d[k]) for k in ("num_samples", "image_height", "image_width", "channels")}
        counts = {str(k): int(v) for k, v in d["counts"].items()}
        classes = [str(c) for c in d["classes"]]
        return cls(str(d["format"]), classes, counts, **sizes, uniform_size=bool(d["uniform_size"]))


class DatasetRejected(ValueError):
    """A bad upload: `field` names what was wrong, `detail` says what and what would be
    accepted, `status` is the HTTP status to answer with (413 size, 415 type, else 422)."""

    def __init__(self, field: str, detail: str, status: int = 422) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.status = status
