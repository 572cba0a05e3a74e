"""`automl serve`: everything on one machine in one command.

Upgrades the database, registers the bundled datasets and the local CPU
device, starts an embedded Celery worker and the local device agent as child
processes, and serves the web UI and REST API with waitress. Stopping it
(Ctrl-C or SIGTERM) stops the children too, and everything they started
(``stop_children``): a stage cut short is resumed from its checkpoint by the
next `automl serve` once its lease runs out.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
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
# Every process `automl serve` starts, and every process they start (pool children, torchrun
# and its workers, Flower, ONNX Runtime training: some in sessions of their own), inherits
# this variable with one value per run of `automl serve`: stopping finds them all by it,
# orphans included, never a process of another run.
RUN_ENV = "AUTOML_SERVE_RUN"
# The pid of the `automl serve` that started a child: the worker stops when its parent is
# no longer that process (exit_with_parent).
SERVE_PID_ENV = "AUTOML_SERVE_PID"
# On Ctrl-C or SIGTERM the worker gets this long for a warm shutdown (an idle worker, or a
# short task, ends in a second or two); a search or training does not end that soon and is
# ended, then resumed from its checkpoint by the next `automl serve` (its lease runs out,
# AUTOML_STAGE_LEASE_S). With KILL_WAIT_S the whole stop stays under `docker stop`'s default
# 10 s, after which Docker kills the server without letting it log what it stopped.
SHUTDOWN_GRACE_S = 6.0
KILL_WAIT_S = 2.0  # between SIGTERM and SIGKILL to what is left (torchrun ends its workers on SIGTERM)


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


def start_children(settings: Settings, *, worker: bool, agent: bool,
                   run_id: str = "") -> list[subprocess.Popen[bytes]]:
    """The embedded worker and the local agent, each in a process group of its own (so that
    stopping can signal a child with its pool without signalling `automl serve` itself),
    marked with ``RUN_ENV=run_id`` when given."""
    env = settings_env(settings)
    if run_id:
        env[RUN_ENV] = run_id
        env[SERVE_PID_ENV] = str(os.getpid())
    # The worker and the local agent share this machine's cores: training pauses at its next
    # weight step while the agent measures (device_agents.cores). AUTOML_CORES_LOCK="" turns it off.
    env.setdefault(CORES_LOCK_ENV, str(settings.data_dir / "cores.lock"))
    children = []
    if worker:
        queues = "default,search"  # device.<local> is the local agent's: it measures one op at a time
        children.append(subprocess.Popen(
            [sys.executable, "-m", "automl_server.cli", "worker", "--queues", queues,
             "--concurrency", str(settings.worker_concurrency), "--hostname", "embedded@%h"],
            env=env, process_group=0,  # ends with serve: cli.worker calls exit_with_parent
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
            env=env, process_group=0, preexec_fn=_dies_with_parent(signal.SIGTERM),
        ))
    return children


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """Linux: the child (the agent) is sent ``sig`` when `automl serve` dies, even by
    SIGKILL: in a process group of its own, it no longer gets the signals of serve's group.
    (The Celery worker does not act on a parent-death signal, seen here: it watches its
    parent instead, `exit_with_parent`.)"""
    if not sys.platform.startswith("linux"):
        return None

    def set_parent_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return set_parent_death_signal


def exit_with_parent(sig: signal.Signals = signal.SIGQUIT, every_s: float = 1.0) -> None:
    """In a child of `automl serve` (``RUN_ENV`` set): a daemon thread sends this process
    ``sig`` once its parent is gone, even if serve was killed with SIGKILL. For the worker
    SIGQUIT is Celery's cold shutdown: its pool children end at once (a warm shutdown would
    finish the running stage for a job nobody serves; its lease runs out and the next
    serve resumes it from its checkpoint)."""
    if not os.environ.get(RUN_ENV) or not os.environ.get(SERVE_PID_ENV, "").isdigit():
        return
    # From the environment, not getppid() now: serve may have died while this process was
    # still importing, and then getppid() already names init.
    parent = int(os.environ[SERVE_PID_ENV])

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.warning("automl serve (pid %d) is gone: stopping this process", parent)
        # Sent again until it takes: a signal that arrives before Celery installed its
        # handlers (still starting up) is lost. Past the grace, the whole process group
        # (this worker and its pool children; serve made it a group leader) is killed.
        deadline = time.monotonic() + SHUTDOWN_GRACE_S * 3
        while time.monotonic() < deadline:
            os.kill(os.getpid(), sig)
            time.sleep(SHUTDOWN_GRACE_S / 2)
        log.warning("still running %.0f s after serve died: killing this process group", SHUTDOWN_GRACE_S * 3)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:  # the same as engine.train.processes.alive, without importing torch
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return command if len(command) <= 100 else command[:97] + "..."


def processes_of_run(run_id: str) -> dict[int, str]:
    """pid -> command line of every live process that carries ``RUN_ENV=run_id`` (Linux
    /proc; elsewhere none are found, and stopping signals the children's groups only)."""
    if not run_id or not os.path.isdir("/proc"):
        return {}
    marker = f"{RUN_ENV}={run_id}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
        except OSError:  # gone, or not ours
            continue
        if _alive(int(entry)):
            found[int(entry)] = _command(int(entry))
    return found


def _signal(children: list[subprocess.Popen[bytes]], pids: list[int], sig: signal.Signals) -> None:
    for child in children:
        if child.poll() is None:  # not reaped yet: its pid is still its process group's id
            try:
                os.killpg(child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_children(children: list[subprocess.Popen[bytes]], run_id: str = "", *,
                  grace_s: float = SHUTDOWN_GRACE_S, kill_wait_s: float = KILL_WAIT_S,
                  hurry: threading.Event | None = None) -> dict[int, str]:
    """Stop the children and everything they started; returns what had to be ended
    (pid -> command line) after the grace period.

    SIGTERM first: the worker begins a warm shutdown (it ends once its running tasks end), the
    agent stops after its current measurement. After ``grace_s`` (or at once when ``hurry`` is
    set: a second Ctrl-C), SIGTERM to each child's process group and to every process of this
    run (found by ``RUN_ENV``, in whatever session it runs), then SIGKILL after ``kill_wait_s``
    to what is left. A stage cut short keeps its lease until it runs out; then the recovery
    sweep of the next `automl serve` sends it again, and it resumes from its checkpoint."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    started = time.monotonic()
    deadline = started + grace_s
    while (any(child.poll() is None for child in children) and time.monotonic() < deadline
           and not (hurry is not None and hurry.is_set())):
        time.sleep(0.1)
    left = processes_of_run(run_id)
    late = [child for child in children if child.poll() is None]
    if late or left:
        log.warning("still running %.1f s after the stop signal: ending %s", time.monotonic() - started,
                    "; ".join(f"pid {pid}: {command}" for pid, command in left.items())
                    or ", ".join(f"pid {child.pid}" for child in late))
        _signal(children, list(left), signal.SIGTERM)
        deadline = time.monotonic() + kill_wait_s
        while time.monotonic() < deadline and (any(child.poll() is None for child in children)
                                               or any(_alive(pid) for pid in left)):
            time.sleep(0.05)
        stubborn = list(processes_of_run(run_id))
        if stubborn or any(child.poll() is None for child in children):
            log.warning("killing what did not end on SIGTERM within %.0f s: %s", kill_wait_s,
                        ", ".join(f"pid {pid}" for pid in stubborn) or "the children's process groups")
        _signal(children, stubborn, signal.SIGKILL)
        deadline = time.monotonic() + 1.0  # SIGKILL is delivered at once; dying takes a moment
        while time.monotonic() < deadline and any(_alive(pid) for pid in stubborn):
            time.sleep(0.02)
    for child in children:
        child.wait()
    # SIGKILL is not ignorable: anything still found now is a process that has not been reaped by
    # its (dying) parent yet, or one that dropped RUN_ENV; say so rather than claim a clean stop.
    remaining = processes_of_run(run_id)
    if remaining:
        log.error("still running after the stop: %s", "; ".join(f"pid {p}: {c}" for p, c in remaining.items()))
    log.info("stopped: %s%s", ", ".join(f"{_role(child)} (pid {child.pid}, exit {child.returncode})"
                                        for child in children) or "no child processes",
             f"; ended {len(left)} process(es) still running after the grace period" if left else
             ", each within the grace period")
    return left


def _role(child: subprocess.Popen[bytes]) -> str:
    args = [str(a) for a in child.args] if isinstance(child.args, (list, tuple)) else [str(child.args)]
    return "the worker" if "worker" in args else "the agent" if "agent" in args else "a child"


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
    run_id = uuid.uuid4().hex
    children = start_children(settings, worker=worker, agent=agent, run_id=run_id)
    start_recovery_sweep(app)
    stopping, hurry = threading.Event(), threading.Event()

    def _terminate(signum: int, _frame: object) -> None:
        if stopping.is_set():  # a second Ctrl-C or SIGTERM: skip the grace period, not the cleanup
            hurry.set()
            return
        stopping.set()
        log.info("%s: stopping (the worker gets %.0f s to finish; Ctrl-C again to stop it now)",
                 signal.Signals(signum).name, SHUTDOWN_GRACE_S)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    log.info("serving on %s (auth %s)", settings.resolved_server_url,
             "required" if settings.auth_required else "off: local mode")
    try:
        serve_wsgi(app, settings)
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        stop_children(children, run_id, hurry=hurry)
