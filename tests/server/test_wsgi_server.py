"""waitress' queue-depth warnings are summarised, not logged once per request."""
from __future__ import annotations

import logging

from automl_server.wsgi_server import QueueDepthSummary, server_threads
from tests.conftest import make_settings


def _queue_warning(depth: int) -> logging.LogRecord:
    return logging.LogRecord("waitress.queue", logging.WARNING, __file__, 1, "Task queue depth is %d", (depth,), None)


def test_queue_warnings_pass_as_one_summary_per_interval() -> None:
    now = [0.0]
    summary = QueueDepthSummary(threads=16, interval_s=10.0, clock=lambda: now[0])
    burst = [_queue_warning(depth) for depth in (1, 7, 3, *[2] * 96)]

    passed_in_burst = [record for record in burst if summary.filter(record)]
    now[0] = 10.5
    last = _queue_warning(4)
    passed_after = summary.filter(last)

    assert passed_in_burst == [] and passed_after
    assert last.getMessage() == ("all 16 server threads were busy: 100 requests waited in the last 10 s, "
                                 "the queue was 7 deep at most (AUTOML_SERVER_THREADS sets the threads)")


def test_server_threads_follow_the_setting_or_the_cores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert server_threads(make_settings(tmp_path, "sqlite://", server_threads=5)) == 5
    assert 8 <= server_threads(make_settings(tmp_path, "sqlite://")) <= 64
