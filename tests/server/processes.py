"""Helpers to run the service's real processes (server, worker, agent, CLI) in tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from automl_server.settings import settings_from_env

from automl_server.serve import settings_env
from automl_server.settings import Settings

CLI = [sys.executable, "-m", "automl_server.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (requests.RequestException, OSError) as exc:
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last error: {last_error})")


class Process:
    """A child process whose output goes to a log file shown when a test fails."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def kill_group(self) -> None:
        """Make sure nothing this process started outlives the test."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def is_running(pid: int) -> bool:
    """The process runs (a zombie waiting for its parent's wait counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every running process whose command line or environment
    mentions ``text`` (a test's tmp dir: every process `automl serve` starts, and what
    they start, inherits AUTOML_DATA_DIR)."""
    found = {}
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if needle in cmdline or needle in (entry / "environ").read_bytes():
                if is_running(int(entry.name)):
                    found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or another user's
            continue
    return found


def kill_leftovers(data_dir: Path) -> None:
    """SIGKILL every process that `automl serve` on ``data_dir`` started (they inherit
    AUTOML_DATA_DIR): the safety net of a test whose server failed to stop them."""
    entry = f"AUTOML_DATA_DIR={data_dir}".encode()
    for pid in processes_mentioning(str(data_dir)):
        try:
            if entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = settings_env(settings)
    env.pop("AUTOML_TOKEN", None)
    # Agents the tests start keep their device tokens in the test's data dir, not the user's home.
    env["AUTOML_AGENT_STATE_DIR"] = str(settings.data_dir / "agent")
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"automl {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


@contextmanager
def serving(tmp_path: Path, *serve_args: str, log_name: str = "serve.log",
            **overrides: Any) -> Iterator[tuple[Settings, dict[str, str]]]:
    """`automl serve` on embedded defaults (or ``overrides``) in a fresh data
    directory, answering on a free port, its output in ``tmp_path / log_name``;
    stopped (and its exit checked) afterwards."""
    values = {"data_dir": tmp_path / "data", "port": free_port(), "heartbeat_interval_s": 0.5,
              "worker_concurrency": 1, **overrides}
    settings = settings_from_env({}, **values)
    env = child_env(settings)
    server = Process([*CLI, "serve", *serve_args], env, tmp_path / log_name)
    try:
        wait_for(lambda: requests.get(f"{settings.resolved_server_url}/api/v1/health", timeout=2).ok, 120,
                 "the server to answer")
        yield settings, env
    except AssertionError as exc:
        # What failed first, then the server's log (the log alone hid which check failed).
        raise AssertionError(f"{exc}\n--- automl serve log ---\n{server.log()}") from None
    finally:
        code = server.stop()
        server.kill_group()
        # The worker and the agent run in process groups of their own: killed by their data dir.
        kill_leftovers(settings.data_dir)
        assert code == 0, server.log()
