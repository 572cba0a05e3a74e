"""Shared fixtures: settings on a temporary data directory, the Flask app and
its test client, on SQLite and (when AUTOML_TEST_POSTGRES_URL is set) on
PostgreSQL. With AUTOML_TEST_REQUIRE_SERVICES=1 (set by .ci/run), a server
test that would be skipped for a missing service fails instead."""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from automl_server import audit_log
from automl_server.app import create_app
from automl_server.celery_app import make_celery
from automl_server.db.engine import _databases, get_database
from automl_server.db.migrate import combined_metadata, upgrade
from automl_server.settings import Settings, settings_from_env

# Whole networks are timed for 2 s each by default (settings.network_measure_s);
# the tests assert what a measurement says, not how steady it is (bench/ does),
# so they time each for 0.2 s. Set here so that the processes the tests start
# (serve, agents, the CLI) inherit it.
os.environ.setdefault("AUTOML_NETWORK_MEASURE_S", "0.2")
# A noisy measurement is retaken twice by default (settings.measure_retakes); in the
# tests' jobs it is flagged at once instead, so that the suite's time does not grow
# with the machine's load. tests/device_agents/test_contention.py tests the retakes.
os.environ.setdefault("AUTOML_MEASURE_RETAKES", "0")
# A job times each network three times by default (settings.network_timings); the
# processes the tests start (serve, agents, the CLI) time it once, as jobs did before,
# each extra timing being a broker round trip there. The in-process jobs (make_settings)
# keep the default: tests/server/test_network_timings.py, test_job_pipeline.py,
# test_promise.py and test_baselines_job.py run the three timings through the agent.
os.environ.setdefault("AUTOML_NETWORK_TIMINGS", "1")
POSTGRES_URL = os.environ.get("AUTOML_TEST_POSTGRES_URL")


def redis_url_of_this_worker(url: str | None) -> str | None:
    """`make test` runs the suite in parallel (pytest-xdist, workers gw0, gw1, ...).
    The Redis tests empty their database (flushdb), so each worker gets its own:
    the configured number for gw0, one less for gw1, and so on."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not url or not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    number = base - int(worker[2:])
    if number < 0:
        raise RuntimeError(f"AUTOML_TEST_REDIS_URL names database {base}: too few for xdist worker {worker}; "
                           "name a higher database (Redis has 0-15 by default) or run fewer workers")
    return urlunsplit(parts._replace(path=f"/{number}"))


REDIS_URL = redis_url_of_this_worker(os.environ.get("AUTOML_TEST_REDIS_URL"))
REQUIRE_SERVICES = os.environ.get("AUTOML_TEST_REQUIRE_SERVICES") == "1"


# The tests that run whole jobs through `automl serve` as processes (its worker and
# agents, a browser) run one at a time, on one xdist worker: two such pipelines at
# once on a 2-core machine slow each other past their waits (and double the memory).
# Everything else, lighter `automl serve` tests included, is spread over the workers.
SERVICE_PROCESS_MODULES = {
    "server/test_fault_processes.py", "server/test_job_processes.py", "web/test_browser.py",
}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's own `--dist loadgroup` marks a group by rewriting ``item._nodeid``, which
    pytest 9 no longer reads (it silently runs grouped tests on every worker), so the
    grouping is done here: one scope for the whole-job process modules, one per test
    for the rest."""
    from xdist.scheduler import LoadScopeScheduling

    class ServiceProcessesOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].removeprefix("tests/")
            return "service-processes" if module in SERVICE_PROCESS_MODULES else nodeid

    return ServiceProcessesOnOneWorker(config, log)


def need_service(url: str | None, variable: str) -> str:
    """The service URL, or skip (fail under AUTOML_TEST_REQUIRE_SERVICES=1)."""
    if url:
        return url
    message = f"{variable} is not set"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}, and AUTOML_TEST_REQUIRE_SERVICES=1 forbids skipping this test")
    pytest.skip(message)


def create_postgres_database(server_url: str, prefix: str) -> str:
    """A new empty database on the test server; returns its URL."""
    url = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(server_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    _forget_database(database_url)
    admin = create_engine(make_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(autouse=True)
def _no_audit_counts_across_tests() -> Iterator[None]:
    """Counts of repeated reads (audit_log) belong to the test's own database."""
    yield
    audit_log.forget_windows()


def _forget_database(url: str) -> None:
    db = _databases.pop(url, None)
    if db is not None:
        db.dispose()


@pytest.fixture(scope="session")
def postgres_api_url() -> Iterator[str]:
    """One migrated PostgreSQL database for the API suite; tables are emptied per test."""
    server = need_service(POSTGRES_URL, "AUTOML_TEST_POSTGRES_URL")
    url = create_postgres_database(server, "automl_api")
    upgrade(get_database(url))
    yield url
    drop_postgres_database(server, url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
        upgrade(get_database(url))
        yield url
        _forget_database(url)
        return
    url = request.getfixturevalue("postgres_api_url")
    yield url
    db = _databases.get(url)
    if db is not None:
        with db.engine.begin() as conn:
            tables = ", ".join(f'"{t.name}"' for t in combined_metadata().sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} CASCADE"))


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "broker_url": "memory://",
        "result_backend": "cache+memory://",
        "network_measure_s": float(os.environ["AUTOML_NETWORK_MEASURE_S"]),  # 0.2 s, see the top
        "measure_retakes": int(os.environ["AUTOML_MEASURE_RETAKES"]),  # 0, see the top
    }
    values.update(overrides)
    return settings_from_env({}, **values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    """The app with an eager Celery: stages run inside the request, for fast API tests.
    Real worker processes are tested in tests/server/test_processes.py."""
    return create_app(settings, celery=make_celery(settings, eager=True))


@pytest.fixture
def queued_app(settings: Settings):  # type: ignore[no-untyped-def]
    """The app with a Celery whose in-memory broker nobody consumes: jobs stay queued."""
    return create_app(settings, celery=make_celery(settings))


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spaces registered by a test vanish after it, so other tests see the built-in list."""
    import search_spaces.spaces as spaces_module

    monkeypatch.setattr(spaces_module, "_REGISTRY", dict(spaces_module._REGISTRY))
