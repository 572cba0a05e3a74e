"""The device agent: registers its device with the service and keeps it online
with heartbeats. Operator profiling arrives with the latency-database issue;
this process is where it will run.

Standard library only (urllib), so it installs on a Raspberry Pi as it is.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import signal
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agents.protocol import AGENT_TOKEN_HEADER, DEVICES_PATH, Registration, Runtime, heartbeat_path

AGENT_VERSION = "0.1.0"
log = logging.getLogger("automl.agent")

# Runtime name -> the distribution that provides it.
_RUNTIME_DISTRIBUTIONS = {"pytorch": "torch", "onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}


def detect_runtimes() -> list[dict[str, str]]:
    """The inference runtimes installed next to this agent, with versions."""
    found = []
    for name, dist in _RUNTIME_DISTRIBUTIONS.items():
        try:
            found.append({"name": name, "version": importlib.metadata.version(dist)})
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/meminfo") as meminfo:
            total_kb = int(meminfo.readline().split()[1])
        info["memory_gb"] = round(total_kb / 1024**2, 2)
    except (OSError, ValueError, IndexError):
        pass
    return info


class AgentError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status the service answered, if it answered


DEFAULT_STATE_DIR = Path("~/.automl-agent")


class TokenFile:
    """Where an agent keeps its device's agent token between runs, so that a
    restarted agent re-registers the device it owns (``<state_dir>/<device>.token``, mode 600)."""

    def __init__(self, state_dir: Path, device_name: str) -> None:
        self.path = state_dir.expanduser() / f"{device_name}.token"

    def read(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def write(self, agent_token: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.path.with_suffix(".tmp")
        partial.touch(mode=0o600)
        partial.write_text(agent_token)
        partial.replace(self.path)  # a crash mid-write never leaves half a token


@dataclass
class Agent:
    server_url: str
    name: str
    kind: str = "cpu"
    token: str | None = None
    interval_s: float = 5.0
    description: str = ""
    runtimes: list[dict[str, str]] = field(default_factory=detect_runtimes)
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Where the device's agent token is kept between runs.
    state_dir: Path = DEFAULT_STATE_DIR
    # Ask the service to take back a retired device's latency tables when this agent re-creates it.
    reuse_latency: bool = False

    @property
    def token_file(self) -> TokenFile:
        return TokenFile(self.state_dir, self.name)

    def _call(self, method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode()
        req = urllib.request.Request(self.server_url.rstrip("/") + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        agent_token = self.token_file.read()
        if agent_token:
            req.add_header(AGENT_TOKEN_HEADER, agent_token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                body = json.loads(body).get("detail", body)
            except ValueError:
                pass
            raise AgentError(f"{method} {path} answered {exc.code}: {body}", exc.code) from None

    def register(self) -> dict[str, Any]:
        if not self.runtimes:
            raise AgentError("no inference runtime found; install torch, onnxruntime or ai-edge-litert")
        answer = self._call("POST", DEVICES_PATH, self.registration().to_dict())
        if answer.get("agent_token"):  # issued on the device's first registration: keep it for the next runs
            self.token_file.write(answer["agent_token"])
        return answer

    def registration(self) -> Registration:
        """What this agent announces about its device (``protocol.Registration``)."""
        return Registration(name=self.name, kind=self.kind, description=self.description,
                            runtimes=tuple(Runtime(r["name"], r.get("version", "")) for r in self.runtimes),
                            info=host_info(), agent_version=AGENT_VERSION, reuse_latency=self.reuse_latency)

    def heartbeat(self) -> dict[str, Any]:
        return self._call("POST", heartbeat_path(self.name), {})

    def run(self) -> None:
        """Register, then heartbeat until stopped; a server that is briefly
        unreachable (restart, network blip) is retried, not fatal."""
        registered = False
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                if not registered:
                    self.register()
                    registered = True
                    log.info("device %s registered at %s", self.name, self.server_url)
                else:
                    self.heartbeat()
                backoff = 1.0
                self.stop_event.wait(self.interval_s)
            except (urllib.error.URLError, OSError, AgentError) as exc:
                if isinstance(exc, AgentError) and exc.status in (403, 404):
                    # The server forgot the device (new database, retired) or does not know our token
                    # (registered before tokens existed): register again.
                    registered = False
                log.warning("agent %s: %s; retrying in %.0f s", self.name, exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
