"""Apply and check the Alembic history programmatically (`automl db upgrade`)."""
from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData

from automl_server.db.engine import Database, StorageError
from automl_server.settings import PROJECT_ROOT

ALEMBIC_DIR = PROJECT_ROOT / "alembic"


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
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> str:
    """Bring the schema to ``revision``; returns the revision now applied."""
    with db.engine.begin() as conn:
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
