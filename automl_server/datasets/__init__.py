"""Dataset ingestion: validate uploads (.zip of class folders or .npz) and
provide the small bundled datasets."""

from __future__ import annotations

from automl_server.datasets.bundled import BUNDLED_DATASETS, BundledDataset
from automl_server.datasets.ingest import (
    DatasetRejected,
    DatasetStats,
    UploadLimits,
    detect_format,
    inspect_dataset,
    load_arrays,
)

__all__ = [
    "BUNDLED_DATASETS",
    "BundledDataset",
    "DatasetRejected",
    "DatasetStats",
    "UploadLimits",
    "detect_format",
    "inspect_dataset",
    "load_arrays",
]
