"""The production WSGI server (waitress) configured for many concurrent clients.

Why these settings: waitress runs the app in a fixed pool of threads fed by one
asyncore loop. Under the GIL, more threads than a few per core add no
throughput, but an SSE stream (``/jobs/<id>/events/stream``) holds a thread for
as long as it is open, so the pool leaves room for them. Connections beyond
``connection_limit`` wait in the kernel's backlog instead of being accepted and
starved. When every thread is busy, waitress logs "Task queue depth is N" for
each request queued; under load that is one line per request (4,023 lines in
30 s in issue 19), so they are summarised: at most one line per interval with
the deepest queue seen and how many requests waited.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import waitress

if TYPE_CHECKING:
    from automl_server.settings import Settings

log = logging.getLogger("automl.serve")
QUEUE_LOGGER = "waitress.queue"


def server_threads(settings: Settings) -> int:
    """AUTOML_SERVER_THREADS, or 8 per core (16 on 2 cores), at most 64."""
    if settings.server_threads > 0:
        return settings.server_threads
    return min(64, max(8, 8 * (os.cpu_count() or 1)))


class QueueDepthSummary(logging.Filter):
    """Swallows waitress' per-request queue-depth warnings and lets one summary
    through per ``interval_s``: how many requests waited and the deepest queue."""

    def __init__(self, threads: int, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.threads = threads
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._count = 0
        self._deepest = 0

    def filter(self, record: logging.LogRecord) -> bool:
        depth = record.args[0] if isinstance(record.args, tuple) and record.args else 0
        with self._lock:
            self._count += 1
            self._deepest = max(self._deepest, depth if isinstance(depth, int) else 0)
            now = self._clock()
            if now - self._window_start < self.interval_s:
                return False
            count, deepest, span = self._count, self._deepest, now - self._window_start
            self._window_start, self._count, self._deepest = now, 0, 0
        record.msg = ("all %d server threads were busy: %d requests waited in the last %.0f s, the queue was "
                      "%d deep at most (AUTOML_SERVER_THREADS sets the threads)")
        record.args = (self.threads, count, span, deepest)
        return True


def install_queue_summary(threads: int, interval_s: float = 10.0) -> QueueDepthSummary:
    """Summarise waitress' queue warnings (one filter per process)."""
    logger = logging.getLogger(QUEUE_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, QueueDepthSummary):
            return existing
    summary = QueueDepthSummary(threads, interval_s)
    logger.addFilter(summary)
    return summary


def serve_wsgi(app: Any, settings: Settings) -> None:
    """Serve ``app`` on the settings' host and port until interrupted."""
    threads = server_threads(settings)
    install_queue_summary(threads)
    log.info("waitress: %d threads, at most %d connections", threads, settings.server_connection_limit)
    waitress.serve(
        app, host=settings.host, port=settings.port, threads=threads,
        connection_limit=settings.server_connection_limit,
        # Accepted connections beyond the limit wait here rather than being refused.
        backlog=max(1024, settings.server_connection_limit),
        channel_timeout=300, ident="automl",
    )
