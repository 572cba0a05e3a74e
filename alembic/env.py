"""Alembic environment: one history for every table of the service."""
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from automl_server.db.models import Base
from latency_db import LatencyBase

# One history for every table: the service's and the latency database's.
target_metadata = [Base.metadata, LatencyBase.metadata]


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    """Autogenerate compares only our tables, not Optuna's (studies, trials, ...)."""
    if type_ != "table":
        return True
    return any(name in metadata.tables for metadata in target_metadata)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Optuna's own Alembic history lives in the same database (see db/migrate.py).
        version_table="automl_alembic_version",
        include_name=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from automl_server.db.engine import make_engine
    from automl_server.settings import get_settings

    url = context.config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `automl db upgrade`")
run_migrations_online()
