"""Apply and check the Alembic history programmatically (`automl db upgrade`)."""
from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData

from automl_server.db.engine import Database, StorageError
from automl_server.settings import PROJECT_ROOT

ALEMBIC_DIR = PROJECT_ROOT / "alembic"
# Our own name for Alembic's bookkeeping table: Optuna's RDB storage (the tune
# stage keeps its studies in this database) runs its own Alembic history in the
# default "alembic_version" table, and the two histories must not share it.
VERSION_TABLE = "automl_alembic_version"
LEGACY_VERSION_TABLE = "alembic_version"
OUR_REVISIONS = ("0001", "0002")  # revisions written to the legacy table before the rename


def combined_metadata() -> MetaData:
    """Every table of the one Alembic history: the service's and the latency database's."""
    from automl_server.db.models import Base
    from latency_db import LatencyBase

    combined = MetaData()
    for metadata in (Base.metadata, LatencyBase.metadata):
        for table in metadata.tables.values():
            table.to_metadata(combined)
    return combined


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "the Alembic history is empty"
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _adopt_legacy_version_table(conn: Connection) -> None:
    """Databases made before VERSION_TABLE recorded our revision in alembic_version: move it."""
    from sqlalchemy import inspect, text

    tables = set(inspect(conn).get_table_names())
    if LEGACY_VERSION_TABLE not in tables or VERSION_TABLE in tables:
        return
    revision = conn.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).scalar()
    if revision in OUR_REVISIONS:
        conn.execute(text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
                          f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"))
        conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:r)"), {"r": revision})
        conn.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))


def upgrade(db: Database, revision: str = "head") -> str:
    """Bring the schema to ``revision``; returns the revision now applied."""
    with db.engine.begin() as conn:
        _adopt_legacy_version_table(conn)
        config = alembic_config(db.url)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    applied = current_revision(db)
    assert applied is not None
    return applied


def require_current_schema(db: Database) -> None:
    """Refuse to run against a database whose schema is not at the code's head."""
    current, head = current_revision(db), head_revision()
    if current != head:
        shown = current or "empty (no tables)"
        raise StorageError(
            f"database schema is at {shown} but this code needs {head}; run `automl db upgrade`"
        )
