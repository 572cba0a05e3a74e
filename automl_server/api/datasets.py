"""/api/v1/datasets: upload, list, get, delete."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.pagination import newest_first_page
from automl_server.api.problems import ProblemError, not_found
from automl_server.api.schemas import DATASET_FORMATS, DATASET_SOURCES, DatasetList, DatasetOut, PageQuery, one_of
from automl_server.datasets.ingest import DatasetRejected
from automl_server.datasets.store import DatasetConflict, default_name, remove_dataset_files, store_dataset
from automl_server.db.engine import StorageError
from automl_server.db.models import Dataset, Job, JobState
from automl_server.service_state import state

_UPLOAD_FORM: dict[str, dict[str, Any]] = {
    "file": {"type": "string", "format": "binary", "x-required": True,
             "description": "A .zip of class folders of PNG/JPEG images, or an .npz with arrays x and y."},
    "name": {"type": "string", "description": "Unique name; default: the file name without extension."},
    "description": {"type": "string"},
}


def to_out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id, name=row.name, source=one_of(row.source, DATASET_SOURCES), format=one_of(row.format, DATASET_FORMATS),
        description=row.description,
        size_bytes=row.size_bytes, sha256=row.sha256, num_samples=row.num_samples, num_classes=len(row.classes),
        classes=row.classes, class_counts=row.class_counts, image_height=row.image_height,
        image_width=row.image_width, channels=row.channels, uniform_size=row.uniform_size, created_at=row.created_at,
    )


def find_dataset(session: Session, key: str) -> Dataset | None:
    """A dataset by id or by name."""
    return session.get(Dataset, key) or session.scalar(select(Dataset).where(Dataset.name == key))


def _rejected(exc: DatasetRejected) -> ProblemError:
    return ProblemError(exc.status, "Dataset rejected", exc.detail, field=exc.field, slug="dataset-rejected")


@registry.operation(
    api_blueprint, "/datasets", "POST", scope="submit", summary="Upload a dataset", tag="datasets",
    responses={201: DatasetOut}, multipart=_UPLOAD_FORM, errors=(409, 413, 415, 507),
)
def upload_dataset() -> tuple[DatasetOut, int, dict[str, str]]:
    """Validates the whole file before anything is stored; a rejected upload
    leaves no file and no row behind."""
    s = state()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ProblemError(
            422, "Dataset rejected",
            "send the dataset as multipart/form-data field 'file' (a .zip of class folders of PNG/JPEG images, "
            "or an .npz with x and y)",
            field="file", slug="dataset-rejected",
        )
    filename = Path(upload.filename).name
    name = (request.form.get("name") or "").strip() or default_name(filename)
    description = request.form.get("description", "")
    with tempfile.TemporaryDirectory(dir=s.settings.uploads_tmp_dir) as tmp:
        tmp_path = Path(tmp) / "upload.bin"
        try:
            upload.save(tmp_path)
        finally:
            upload.close()  # werkzeug spools large uploads to a temp file; release it now
        stored_dir: Path | None = None
        try:
            with s.db.session() as session:
                row = store_dataset(session, s.settings, tmp_path, filename, name=name, description=description)
                stored_dir = s.settings.datasets_dir / row.id
                out = to_out(row)
        except DatasetRejected as exc:
            raise _rejected(exc) from None
        except (DatasetConflict, StorageError) as exc:
            if stored_dir is not None:  # the commit failed after the file was moved in place
                remove_dataset_files(s.settings, row)
            if isinstance(exc, DatasetConflict) or isinstance(exc.__cause__, IntegrityError):
                raise ProblemError(
                    409, "Conflict", f"a dataset named {name!r} exists already; choose another 'name'",
                    field="name", slug="conflict",
                ) from None
            raise
    return out, 201, {"Location": f"/api/v1/datasets/{out.id}"}


@registry.operation(
    api_blueprint, "/datasets", "GET", scope="read", summary="List datasets", tag="datasets",
    query=PageQuery, responses={200: DatasetList},
)
def list_datasets(query: PageQuery) -> DatasetList:
    with state().db.session() as session:
        rows, token = newest_first_page(session, select(Dataset), Dataset, query.page_size, query.page_token)
    return DatasetList(datasets=[to_out(r) for r in rows], next_page_token=token)


@registry.operation(
    api_blueprint, "/datasets/<key>", "GET", scope="read", summary="Get a dataset by id or name", tag="datasets",
    responses={200: DatasetOut}, errors=(404,),
)
def get_dataset(key: str) -> DatasetOut:
    with state().db.session() as session:
        row = find_dataset(session, key)
        if row is None:
            raise not_found("dataset", key)
        return to_out(row)


@registry.operation(
    api_blueprint, "/datasets/<key>", "DELETE", scope="admin", summary="Delete a dataset", tag="datasets",
    responses={204: None}, errors=(404, 409),
)
def delete_dataset(key: str) -> tuple[None, int]:
    """Refused while a queued or running job uses the dataset; finished jobs keep its name."""
    s = state()
    with s.db.session() as session:
        row = find_dataset(session, key)
        if row is None:
            raise not_found("dataset", key)
        active = session.scalars(
            select(Job.id).where(Job.dataset_id == row.id, Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
        ).all()
        if active:
            raise ProblemError(
                409, "Conflict", f"dataset {row.name!r} is used by unfinished jobs {', '.join(active)}; "
                "cancel them or wait for them to finish", field="dataset", slug="conflict",
            )
        session.delete(row)
    remove_dataset_files(s.settings, row)  # only after the row's deletion is committed
    return None, 204

