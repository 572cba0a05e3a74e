"""Repeated failed logins are slowed down.

Every API token is 256-bit random, so guessing one is hopeless anyway; the
throttle keeps a guesser from filling the log and the database with
attempts, and answers it in constant effort. Per client address, the first
``free_attempts`` failures within ``window_s`` cost nothing; after that each
attempt must wait 1, 2, 4, ... seconds (at most ``max_wait_s``) after the
last failure, and an attempt that comes sooner is refused with 429 and
``Retry-After`` without even checking the token. A success does not reset
the count (a caller holding one valid token could otherwise reset it between
guesses); failures simply age out of the window.

Deviations, stated: the count lives in the server process (``automl serve``
is one process; several web processes would each count on their own), and
clients behind one proxy share an address (and so a count).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, current_app

_EXTENSION = "automl_failed_logins"


@dataclass
class FailedLogins:
    free_attempts: int = 5
    window_s: float = 900.0
    max_wait_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            self._failures.pop(client, None)
        return failures

    def wait_s(self, client: str) -> int:
        """Whole seconds ``client`` must wait before its next attempt (0: it may try now)."""
        with self._lock:
            now = self.clock()
            failures = self._recent(client, now)
            over = len(failures) - self.free_attempts
            if over < 0:
                return 0
            ready_at = failures[-1] + min(self.max_wait_s, 2.0 ** over)
            return max(0, math.ceil(ready_at - now))

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            failures = self._recent(client, now)
            failures.append(now)
            self._failures[client] = failures


def failed_logins(app: Flask | None = None) -> FailedLogins:
    """The app's throttle (one per app, made on first use)."""
    app = app or current_app
    found = app.extensions.get(_EXTENSION)
    if not isinstance(found, FailedLogins):
        found = app.extensions[_EXTENSION] = FailedLogins()
    return found
