"""One machine's cores, shared by training and measuring without overlap.

On the embedded default (``automl serve``: a worker and the local agent on one
machine) the agent used to time networks on the very cores where the worker
was training; a measurement then timed the training as much as the network
(issue 18: 6 of 12 held-out networks within 10% beside a job, against 9 of 12
quiet). The mechanism chosen here is a **cross-process lock file** that
*pauses training between weight steps while a measurement runs*:

* a training stage holds the lock **shared** for as long as it runs (several
  trainers may share it) and, at every weight step (the same place it checks
  for a cancellation), looks whether a measurement is waiting; if one is, it
  lets go and blocks until the measurement is done, then takes it again;
* a measurement takes a *gate* lock exclusively first (so trainers stop
  taking the lock anew: no measurement waits behind a stream of trainers),
  then the lock itself **exclusively**, which it gets as soon as every
  trainer reached its next step. Steps last milliseconds to a second, so a
  measurement waits at most about a step.

Why a lock and not CPU affinity: on a 2-core VM, splitting the cores would
halve training for good and still leave the memory bus and the caches shared;
and why not a pause per epoch: an epoch lasts minutes on a real dataset, a step
does not. A measurement that could not get the cores within its wait (a
trainer inside a long stretch without steps: evaluation, export) goes ahead and
says so (``cores_shared_with_training``), which makes it a noisy measurement
that is retaken or flagged (``device_agents.profiling.contention``).

The lock is ``fcntl.flock`` on ``<data>/cores.lock`` (``AUTOML_CORES_LOCK``,
set by ``automl serve`` for its worker and its agent): the kernel drops a
dead process's locks, so a crashed trainer never blocks the agent. Without
that variable (an agent on its own device, a worker on a GPU server) every
call here does nothing. POSIX only; elsewhere it does nothing either.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, as without AUTOML_CORES_LOCK
    fcntl = None  # type: ignore[assignment]

CORES_LOCK_ENV = "AUTOML_CORES_LOCK"
# How long a measurement waits for trainers to reach their next step before it goes ahead (and says so).
MEASURE_WAIT_S = 60.0
_POLL_S = 0.01


def lock_path() -> Path | None:
    """The lock file this process shares with its machine's trainers or agent, if any."""
    value = os.environ.get(CORES_LOCK_ENV, "").strip()
    return Path(value) if value and fcntl is not None else None


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _gate(path: Path) -> Path:
    return path.with_name(path.name + ".gate")


@dataclass(frozen=True)
class CoresGrant:
    """What a measurement got: the cores to itself, or not (and how long it waited)."""

    exclusive: bool
    waited_s: float
    lock: str | None  # the lock file, None when there is none to take

    def evidence(self) -> dict[str, object]:
        return {"cores_lock": self.lock is not None, "cores_waited_s": round(self.waited_s, 3),
                "cores_shared_with_training": self.lock is not None and not self.exclusive}


@contextmanager
def measuring(wait_s: float = MEASURE_WAIT_S, path: Path | None = None) -> Iterator[CoresGrant]:
    """Hold the machine's cores for a measurement: trainers pause at their next step.

    Yields a ``CoresGrant``; ``exclusive`` is False when the trainers did not
    pause within ``wait_s`` (the measurement then runs beside them and must say so).
    """
    path = path or lock_path()
    if path is None:
        yield CoresGrant(True, 0.0, None)
        return
    assert fcntl is not None
    gate, main = _open(_gate(path)), _open(path)
    started = time.monotonic()
    got_gate = got_main = False
    try:
        got_gate = _acquire(gate, fcntl.LOCK_EX, started + wait_s)
        got_main = got_gate and _acquire(main, fcntl.LOCK_EX, started + wait_s)
        yield CoresGrant(got_main, time.monotonic() - started, str(path))
    finally:
        if got_main:
            fcntl.flock(main, fcntl.LOCK_UN)
        if got_gate:
            fcntl.flock(gate, fcntl.LOCK_UN)
        os.close(main)
        os.close(gate)


def _acquire(fd: int, kind: int, deadline: float) -> bool:
    assert fcntl is not None
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)


class Training:
    """A trainer's share of the cores: ``step()`` at every weight step pauses
    while a measurement runs. Use as a context manager around the training."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or lock_path()
        self._main: int | None = None
        self._gate: int | None = None
        self.paused_s = 0.0  # time spent paused for measurements
        self.pauses = 0
        self._lock = threading.Lock()

    def __enter__(self) -> Training:
        if self.path is not None:
            self._gate, self._main = _open(_gate(self.path)), _open(self.path)
            self._take()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._main is not None and self._gate is not None:
            assert fcntl is not None
            fcntl.flock(self._main, fcntl.LOCK_UN)
            os.close(self._main)
            os.close(self._gate)
            self._main = self._gate = None

    def _take(self) -> None:
        """Shared hold of the lock, behind any measurement waiting at the gate."""
        assert fcntl is not None and self._gate is not None and self._main is not None
        fcntl.flock(self._gate, fcntl.LOCK_SH)  # blocks while a measurement holds the gate
        try:
            fcntl.flock(self._main, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def step(self) -> None:
        """Cheap (one non-blocking flock) unless a measurement waits: then pause until it is done."""
        if self._main is None or self._gate is None:
            return
        assert fcntl is not None
        with self._lock:
            try:
                fcntl.flock(self._gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a measurement holds the gate: let it have the cores
                started = time.monotonic()
                fcntl.flock(self._main, fcntl.LOCK_UN)
                self._take()
                self.paused_s += time.monotonic() - started
                self.pauses += 1
                return
            fcntl.flock(self._gate, fcntl.LOCK_UN)
