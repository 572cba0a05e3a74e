"""Stopping `automl serve` ends its children and everything they started, in
whatever session: here with stand-in processes (a child that ignores SIGTERM,
as a worker finishing a search in a warm shutdown does, and a grandchild in a
session of its own, as torchrun, Flower and ORT training run). The real
server stopped mid-search: tests/server/test_job_processes.py."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid

import pytest

from automl_server.serve import RUN_ENV, stop_children
from tests.server.processes import is_running, wait_for

CHILD = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a warm shutdown that would outlast any patience
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(grandchild.pid))
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes in /proc")
def test_stopping_ends_a_child_that_ignores_sigterm_and_what_it_started_in_another_session(tmp_path, caplog):
    run_id = uuid.uuid4().hex
    pid_file = tmp_path / "grandchild.pid"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(pid_file)], env={**os.environ, RUN_ENV: run_id},
                             process_group=0)
    try:
        grandchild = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the grandchild"))
        assert os.getsid(grandchild) != os.getsid(child.pid)  # out of reach of a signal to the child's group
        with caplog.at_level(logging.INFO, logger="automl.serve"):
            ended = stop_children([child], run_id, grace_s=0.5, kill_wait_s=0.5)

        assert child.returncode == -9  # SIGTERM ignored: killed after the wait
        assert set(ended) == {child.pid, grandchild}
        wait_for(lambda: not is_running(grandchild), 5, "the grandchild to end")
        # The log says what was still running and what was killed.
        assert f"pid {grandchild}: " in caplog.text and "killing what did not end on SIGTERM" in caplog.text
        assert "ended 2 process(es) still running after the grace period" in caplog.text
        assert "still running after the stop" not in caplog.text
    finally:
        child.kill()
        child.wait()
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 9)
            except ProcessLookupError:
                pass


def test_children_that_end_on_sigterm_are_not_killed(caplog):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
    with caplog.at_level(logging.INFO, logger="automl.serve"):
        ended = stop_children([child], uuid.uuid4().hex, grace_s=60)

    assert ended == {} and child.returncode == -15
    assert f"stopped: a child (pid {child.pid}, exit -15), each within the grace period" in caplog.text


@pytest.mark.timeout(30)  # a grace period of 60 s that the second Ctrl-C did not cut short fails here
def test_a_second_ctrl_c_skips_the_grace_period(caplog):
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(flush=True)\ntime.sleep(600)"],
                             stdout=subprocess.PIPE, process_group=0)
    assert child.stdout is not None and child.stdout.readline()  # SIGTERM is ignored from now on
    hurry = threading.Event()
    hurry.set()
    with caplog.at_level(logging.INFO, logger="automl.serve"):
        stop_children([child], uuid.uuid4().hex, grace_s=60, kill_wait_s=0.5, hurry=hurry)
    child.stdout.close()

    assert child.returncode == -9
    assert "killing what did not end on SIGTERM" in caplog.text
