"""Keeping datasets: validated files under the data directory plus a Dataset row.

The order of operations is what keeps "nothing stored" true for a rejected
upload and "nothing lost" for a failed one: validate the temporary file
first, then move it into place, then commit the row; on any error after the
move, the moved file is removed again.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from automl_server.datasets.bundled import BUNDLED_DATASETS
from automl_server.datasets.ingest import DatasetRejected, DatasetStats, UploadLimits, detect_format, inspect_dataset
from automl_server.db.models import Dataset, new_id
from automl_server.files import sha256_of
from automl_server.settings import Settings

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class DatasetConflict(Exception):
    """A dataset with this name exists already."""


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_uncompressed_bytes=settings.max_uncompressed_bytes,
        max_entries=settings.max_archive_entries,
    )


def default_name(filename: str) -> str:
    stem = Path(filename).name.rsplit(".", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "dataset"
    return cleaned[:200]


def check_name(name: str) -> None:
    if not _NAME_OK.match(name):
        raise DatasetRejected(
            "name",
            f"dataset name {name!r} is not accepted; use 1-200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )


def store_dataset(
    session: Session,
    settings: Settings,
    source_path: Path,
    filename: str,
    *,
    name: str,
    description: str = "",
    source: str = "upload",
) -> Dataset:
    """Validate ``source_path`` and keep it as a new dataset; raises
    DatasetRejected (nothing stored) or DatasetConflict (name taken)."""
    check_name(name)
    fmt = detect_format(filename)
    stats: DatasetStats = inspect_dataset(source_path, filename, upload_limits(settings))
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise DatasetConflict(name)
    dataset_id = new_id()
    target_dir = settings.datasets_dir / dataset_id
    target_dir.mkdir(parents=True, exist_ok=False)
    target = target_dir / f"data.{fmt}"
    try:
        shutil.copyfile(source_path, target)
        row = Dataset(
            id=dataset_id,
            name=name,
            source=source,
            format=fmt,
            file_path=str(target.relative_to(settings.data_dir)),
            size_bytes=target.stat().st_size,
            sha256=sha256_of(target),
            num_samples=stats.num_samples,
            classes=list(stats.classes),
            class_counts=dict(stats.counts),
            image_height=stats.image_height,
            image_width=stats.image_width,
            channels=stats.channels,
            uniform_size=stats.uniform_size,
            description=description,
        )
        session.add(row)
        session.flush()
    except BaseException:
        shutil.rmtree(target_dir, ignore_errors=True)
        raise
    return row


def remove_dataset_files(settings: Settings, dataset: Dataset) -> None:
    """Remove the files of a dataset whose row was deleted and committed."""
    shutil.rmtree(settings.datasets_dir / dataset.id, ignore_errors=True)


def register_bundled_datasets(session: Session, settings: Settings) -> list[str]:
    """Register the datasets that ship inside installed packages; returns the
    names newly registered (none on later runs)."""
    added = []
    for bundled in BUNDLED_DATASETS.values():
        if session.scalar(select(Dataset.id).where(Dataset.name == bundled.name)) is not None:
            continue
        settings.uploads_tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=settings.uploads_tmp_dir) as tmp:
            path = Path(tmp) / f"{bundled.name}.npz"
            bundled.build(path)
            store_dataset(
                session, settings, path, path.name,
                name=bundled.name, description=f"{bundled.description} (source: {bundled.source})", source="bundled",
            )
        added.append(bundled.name)
    return added
