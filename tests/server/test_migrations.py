"""One Alembic history; the migrated schema equals the models, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from automl_server.app import create_app
from automl_server.db.engine import StorageError, get_database
from automl_server.db.migrate import (
    VERSION_TABLE,
    combined_metadata, current_revision, head_revision, require_current_schema, upgrade,
)
from tests.conftest import (
    POSTGRES_URL, _forget_database, create_postgres_database, drop_postgres_database, make_settings, need_service,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
        yield url
        _forget_database(url)
        return
    server = need_service(POSTGRES_URL, "AUTOML_TEST_POSTGRES_URL")
    url = create_postgres_database(server, "automl_migrate")
    yield url
    drop_postgres_database(server, url)


def test_migrated_schema_equals_the_models(empty_database_url):
    db = get_database(empty_database_url)

    applied = upgrade(db)

    assert applied == head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE}), combined_metadata())
    assert diff == []


def test_upgrade_twice_is_harmless(empty_database_url):
    db = get_database(empty_database_url)

    upgrade(db)
    upgrade(db)

    assert current_revision(db) == head_revision()


def test_unmigrated_database_is_refused_with_the_fix(empty_database_url, tmp_path):
    settings = make_settings(tmp_path, empty_database_url)

    with pytest.raises(StorageError, match="run `automl db upgrade`"):
        require_current_schema(get_database(empty_database_url))
    with pytest.raises(StorageError, match="empty"):
        create_app(settings)


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.sqlite'}"
    db = get_database(url)
    upgrade(db)

    with db.engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        foreign_keys = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
    _forget_database(url)

    assert mode == "wal" and foreign_keys == 1


def test_tokens_made_before_scopes_keep_what_they_could_do(empty_database_url):
    from sqlalchemy import text

    from automl_server.auth import verify_token, token_scopes

    db = get_database(empty_database_url)
    upgrade(db, "0005")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO api_tokens (id, name, token_hash, prefix, created_at) "
                          "VALUES ('t1', 'old-ci', :hash, 'aml_old', CURRENT_TIMESTAMP)"),
                     {"hash": __import__("hashlib").sha256(b"aml_old-secret").hexdigest()})

    upgrade(db)

    with db.session() as session:
        token = verify_token(session, "aml_old-secret")
        assert token is not None and token_scopes(token) == ("read", "submit", "admin")
