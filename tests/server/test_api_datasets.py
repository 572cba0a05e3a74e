"""/api/v1/datasets on SQLite and PostgreSQL: upload, list, get, delete, and
every upload rule rejected with a problem document and nothing stored."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from automl_server.app import create_app
from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.models import Dataset
from tests.conftest import make_settings
from tests.datasets import archives


def upload(client, path: Path, **form: str):  # type: ignore[no-untyped-def]
    # Encoded up front: the test client would otherwise spool a large body to a
    # temporary file that it never closes (a ResourceWarning, an error here).
    with path.open("rb") as handle:
        boundary, body = encode_multipart({"file": FileStorage(handle, filename=path.name), **form})
    return client.post("/api/v1/datasets", data=body, content_type=f"multipart/form-data; boundary={boundary}")


def stored_state(settings) -> tuple[int, list[str], list[str]]:  # type: ignore[no-untyped-def]
    """(dataset rows, files under datasets/, leftovers under tmp/): what an upload left behind."""
    with get_database(settings.resolved_database_url).session() as session:
        rows = session.scalar(select(func.count()).select_from(Dataset))
    files = sorted(str(p.relative_to(settings.datasets_dir)) for p in settings.datasets_dir.rglob("*"))
    leftovers = sorted(str(p) for p in settings.uploads_tmp_dir.rglob("*"))
    return rows, files, leftovers


def test_upload_zip_stores_dataset_with_statistics(client, settings, tmp_path):
    path = archives.good_zip(tmp_path, classes=("cat", "dog", "fox"), per_class=4, size=(20, 12))

    response = upload(client, path, name="pets", description="three animals")

    assert response.status_code == 201, response.json
    body = response.json
    assert response.headers["Location"] == f"/api/v1/datasets/{body['id']}"
    assert body["name"] == "pets" and body["format"] == "zip" and body["source"] == "upload"
    assert body["classes"] == ["cat", "dog", "fox"]
    assert body["class_counts"] == {"cat": 4, "dog": 4, "fox": 4}
    assert body["num_samples"] == 12 and body["num_classes"] == 3
    assert (body["image_height"], body["image_width"], body["channels"]) == (12, 20, 3)
    assert (settings.data_dir / "datasets" / body["id"] / "data.zip").read_bytes() == path.read_bytes()


def test_upload_npz_defaults_name_to_file_stem(client, tmp_path):
    path = archives.good_npz(tmp_path, n=30, classes=3, shape=(8, 8))

    body = upload(client, path).json

    assert body["name"] == "good" and body["format"] == "npz"
    assert body["num_samples"] == 30 and body["channels"] == 1


def test_get_by_id_and_by_name(client, tmp_path):
    created = upload(client, archives.good_npz(tmp_path), name="digits-small").json

    by_id = client.get(f"/api/v1/datasets/{created['id']}")
    by_name = client.get("/api/v1/datasets/digits-small")

    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json == by_name.json == created


def test_unknown_dataset_is_a_problem_document(client):
    response = client.get("/api/v1/datasets/nope")

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert "nope" in response.json["detail"]


def test_list_pages_through_every_dataset_once(client, tmp_path):
    path = archives.good_npz(tmp_path)
    names = {f"ds-{i}" for i in range(5)}
    for name in names:
        assert upload(client, path, name=name).status_code == 201

    seen, token, pages = [], None, 0
    while True:
        query = {"page_size": 2} | ({"page_token": token} if token else {})
        page = client.get("/api/v1/datasets", query_string=query).json
        seen += [d["name"] for d in page["datasets"]]
        pages += 1
        token = page["next_page_token"]
        if not token:
            break

    assert pages == 3
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))


def test_bad_page_token_names_the_parameter(client):
    response = client.get("/api/v1/datasets", query_string={"page_token": "garbage!"})

    assert response.status_code == 400
    assert response.json["field"] == "page_token"


def test_page_size_out_of_range_says_what_is_accepted(client):
    response = client.get("/api/v1/datasets", query_string={"page_size": 0})

    assert response.status_code == 422
    assert response.json["field"] == "page_size"
    assert "greater than or equal to 1" in response.json["detail"]


def test_delete_removes_row_and_files(client, settings, tmp_path):
    created = upload(client, archives.good_npz(tmp_path), name="gone").json

    response = client.delete(f"/api/v1/datasets/{created['id']}")

    assert response.status_code == 204
    assert client.get("/api/v1/datasets/gone").status_code == 404
    assert stored_state(settings) == (0, [], [])


def test_duplicate_name_is_refused_and_original_kept(client, settings, tmp_path):
    first = upload(client, archives.good_npz(tmp_path), name="same").json

    response = upload(client, archives.good_zip(tmp_path), name="same")

    assert response.status_code == 409
    assert response.json["field"] == "name"
    assert client.get("/api/v1/datasets/same").json == first
    rows, files, leftovers = stored_state(settings)
    assert rows == 1 and files == [first["id"], f"{first['id']}/data.npz"] and leftovers == []


@pytest.mark.parametrize(("builder", "field", "status"), archives.BAD_UPLOADS,
                         ids=[b.__name__ for b, _, _ in archives.BAD_UPLOADS])
def test_bad_upload_is_rejected_and_nothing_is_stored(client, settings, tmp_path, builder, field, status):
    kept = upload(client, archives.good_npz(tmp_path), name="kept").json
    before = stored_state(settings)

    response = upload(client, builder(tmp_path), name="bad")

    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    assert response.json["field"] == field
    assert archives.NAMED_IN_DETAIL[builder] in response.json["detail"]
    assert stored_state(settings) == before
    assert client.get("/api/v1/datasets/kept").json == kept


def test_file_over_the_upload_limit_is_refused_with_413(tmp_path, database_url):
    settings = make_settings(tmp_path, database_url, max_upload_bytes=2048)
    client = create_app(settings, celery=make_celery(settings, eager=True)).test_client()
    path = archives.good_zip(tmp_path, per_class=10, size=(32, 32))
    assert path.stat().st_size > 2048

    response = upload(client, path)

    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert stored_state(settings) == (0, [], [])


def test_missing_file_field_says_what_to_send(client, settings):
    response = client.post("/api/v1/datasets", data={"name": "x"}, content_type="multipart/form-data")

    assert response.status_code == 422
    assert response.json["field"] == "file"
    assert ".zip" in response.json["detail"] and ".npz" in response.json["detail"]
    assert stored_state(settings) == (0, [], [])


def test_bad_dataset_name_is_refused(client, settings, tmp_path):
    response = upload(client, archives.good_npz(tmp_path), name="../etc")

    assert response.status_code == 422
    assert response.json["field"] == "name"
    assert stored_state(settings) == (0, [], [])


@pytest.mark.parametrize("filename", ["pets.zip", "pets.npz"])
def test_empty_upload_says_it_is_empty_and_nothing_is_stored(client, settings, tmp_path, filename):
    empty = tmp_path / filename
    empty.write_bytes(b"")

    response = upload(client, empty)

    assert response.status_code == 422 and response.json["field"] == "file"
    assert response.json["detail"].startswith("the uploaded file is empty (0 bytes)")
    assert stored_state(settings) == (0, [], [])
