"""`automl serve`: everything on one machine in one command.

Upgrades the database, registers the bundled datasets and the local CPU
device, starts an embedded Celery worker and the local device agent as child
processes, and serves the web UI and REST API with waitress. Stopping it
(Ctrl-C or SIGTERM) stops the children too.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import update

from automl_server.auth import agent_scope, create_token
from automl_server.datasets.store import register_bundled_datasets
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from automl_server.db.models import ApiToken, utcnow
from automl_server.settings import ENV_PREFIX, Settings
from device_agents.cores import CORES_LOCK_ENV
from automl_server.wsgi_server import serve_wsgi

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("automl.serve")
EMBEDDED_AGENT_TOKEN = "embedded-agent"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = dict(os.environ)
    for f in fields(Settings):
        env[ENV_PREFIX + f.name.upper()] = str(getattr(settings, f.name))
    env["AUTOML_SERVER_URL"] = settings.resolved_server_url
    return env


def prepare(settings: Settings) -> None:
    """Schema, bundled datasets: idempotent, fast when already done."""
    settings.ensure_dirs()
    db = get_database(settings.resolved_database_url)
    revision = upgrade(db)
    log.info("database %s at revision %s", db.engine.url.render_as_string(hide_password=True), revision)
    with db.session() as session:
        added = register_bundled_datasets(session, settings)
    if added:
        log.info("registered bundled datasets: %s", ", ".join(added))


def _agent_token(settings: Settings) -> str | None:
    """A fresh token for the embedded agent when auth is on; old ones are revoked."""
    if not settings.auth_required:
        return None
    db = get_database(settings.resolved_database_url)
    with db.session() as session:
        session.execute(
            update(ApiToken).where(ApiToken.name == EMBEDDED_AGENT_TOKEN, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        # Its agent registers and heartbeats the local device, and needs nothing more.
        return create_token(session, EMBEDDED_AGENT_TOKEN, [agent_scope(settings.local_device_name)]).secret


def agent_state_dir(settings: Settings) -> Path:
    """Where the local agent keeps its device's agent token."""
    return settings.data_dir / "agent"


def start_children(settings: Settings, *, worker: bool, agent: bool) -> list[subprocess.Popen[bytes]]:
    env = settings_env(settings)
    # The worker and the local agent share this machine's cores: training pauses at its next
    # weight step while the agent measures (device_agents.cores). AUTOML_CORES_LOCK="" turns it off.
    env.setdefault(CORES_LOCK_ENV, str(settings.data_dir / "cores.lock"))
    children = []
    if worker:
        queues = "default,search"  # device.<local> is the local agent's: it measures one op at a time
        children.append(subprocess.Popen(
            [sys.executable, "-m", "automl_server.cli", "worker", "--queues", queues,
             "--concurrency", str(settings.worker_concurrency), "--hostname", "embedded@%h"],
            env=env,
        ))
    if agent:
        token = _agent_token(settings)
        if token:
            env = {**env, "AUTOML_TOKEN": token}
        # The local agent keeps its device's agent token beside the data, so a
        # restarted `automl serve` re-registers the device it already owns.
        env = {**env, "AUTOML_AGENT_STATE_DIR": str(agent_state_dir(settings))}
        children.append(subprocess.Popen(
            [sys.executable, "-m", "automl_server.cli", "agent", "--device", settings.local_device_name, "--kind", "cpu"],
            env=env,
        ))
    return children


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()


def start_recovery_sweep(app: Flask) -> threading.Thread:
    """At start, then every ``settings.recovery_sweep_s`` (30 s), re-send what was lost:
    job stages whose lease ran out (a worker that died, killed or with its machine,
    with a message the broker will not redeliver), and every waiting stage of an
    active job when a Redis broker came back empty (``jobs.tasks.recover``)."""
    from automl_server.jobs.tasks import recover

    s = app.extensions["automl"]
    interval_s = s.settings.recovery_sweep_s

    def sweep() -> None:
        while True:
            try:
                recover(s.celery, s.db)
            except Exception:  # noqa: BLE001 - the sweep must outlive a broker or database hiccup
                log.exception("recovery sweep failed; trying again in %.0f s", interval_s)
            time.sleep(interval_s)

    thread = threading.Thread(target=sweep, name="automl-recovery", daemon=True)
    thread.start()
    return thread


def serve(settings: Settings, *, worker: bool = True, agent: bool = True) -> None:
    from automl_server.app import create_app

    prepare(settings)
    app = create_app(settings)
    children = start_children(settings, worker=worker, agent=agent)
    start_recovery_sweep(app)

    def _terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    log.info("serving on %s (auth %s)", settings.resolved_server_url,
             "required" if settings.auth_required else "off: local mode")
    try:
        serve_wsgi(app, settings)
    except KeyboardInterrupt:
        pass
    finally:
        stop_children(children)
