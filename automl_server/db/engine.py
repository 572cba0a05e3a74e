"""Engine and session handling shared by the web app, the workers and the CLI."""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry


class StorageError(RuntimeError):
    """The database refused an operation; the message says what to do."""


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is the database going away (a restart, a
    failover, a dropped connection) rather than a refused statement."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (OperationalError, InterfaceError)):
            return True
        current = current.__cause__
    return False


def wait_until_reachable(db: "Database", timeout_s: float, poll_s: float = 0.5) -> bool:
    """Poll the database until it answers (True) or ``timeout_s`` passes (False)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with db.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


READ_ONLY = "automl_read_only"


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets readers (the web UI) proceed while a worker writes. pysqlite's
    # own transaction handling issues a deferred BEGIN, and a deferred
    # transaction that later upgrades to a write lock fails with
    # "database is locked" at once instead of waiting on busy_timeout. So we
    # take over BEGIN ourselves and make it IMMEDIATE: writers queue politely
    # behind each other for up to busy_timeout (SQLAlchemy's documented recipe).
    # A session that only reads (Database.read_session) begins DEFERRED: under WAL
    # it takes no lock at all, so reads no longer queue behind writers and each other.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """An engine plus a session factory; one per process and database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Commit on success, roll back on any error, always close."""
        with self._session(read_only=False) as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: on SQLite its transaction takes no write lock
        (a plain BEGIN; see _configure_sqlite), so it does not wait for writers nor
        make them wait. Writing in it may fail with "database is locked": use
        `session` for anything that writes."""
        with self._session(read_only=True) as session:
            yield session  # close() ends the transaction, keeping what was read loaded

    @contextmanager
    def _session(self, *, read_only: bool) -> Iterator[Session]:
        session = self.session_factory()
        try:
            if read_only:
                session.connection(execution_options={READ_ONLY: True})
            yield session
            if not read_only:
                session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StorageError(f"database error: {exc.__class__.__name__}: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


_databases: dict[str, Database] = {}


def get_database(url: str) -> Database:
    """The process-wide Database for ``url`` (engines are expensive; share them)."""
    if url not in _databases:
        _databases[url] = Database(url)
    return _databases[url]
