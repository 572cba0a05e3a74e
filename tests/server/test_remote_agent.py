"""A device agent on another host: its own network namespace, reaching the API
and the broker over a veth pair, the way a Raspberry Pi on the lab network
would. The agent has no database; measurements come back through the broker."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
import requests

from automl_server.settings import settings_from_env
from tests.conftest import _forget_database
from tests.server.processes import CLI, Process, child_env, cli, cli_json, free_port, wait_for

REQUIRE_NETNS = os.environ.get("AUTOML_TEST_REQUIRE_SERVICES") == "1"


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (the test runs its own broker on the veth address)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def remote_host():  # type: ignore[no-untyped-def]
    """A namespace with one veth to the host: (namespace, host address, remote address)."""
    reason = _netns_unavailable()
    if reason:
        if REQUIRE_NETNS:
            pytest.fail(f"{reason}, and AUTOML_TEST_REQUIRE_SERVICES=1 forbids skipping this test")
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    namespace, host_if, remote_if = f"automl-{tag}", f"am{tag}h", f"am{tag}r"
    subnet = 200 + int(tag[:2], 16) % 50  # our own namespace's link, never a real network
    host_ip, remote_ip = f"10.{subnet}.{int(tag[2:4], 16)}.1", f"10.{subnet}.{int(tag[2:4], 16)}.2"
    try:
        _ip("netns", "add", namespace)
    except subprocess.CalledProcessError as exc:
        if REQUIRE_NETNS:
            raise
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", remote_if)
        _ip("link", "set", remote_if, "netns", namespace)
        _ip("addr", "add", f"{host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{remote_ip}/24", "dev", remote_if)
        _ip("netns", "exec", namespace, "ip", "link", "set", remote_if, "up")
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield namespace, host_ip, remote_ip
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@pytest.mark.slow
def test_agent_in_its_own_namespace_profiles_over_the_network(remote_host, tmp_path):
    namespace, host_ip, _ = remote_host
    redis_port, api_port = free_port(), free_port()
    password = uuid.uuid4().hex  # a broker reachable off loopback gets a password, as in a real lab
    broker = f"redis://:{password}@{host_ip}:{redis_port}/0"
    redis_server = Process(["redis-server", "--bind", host_ip, "--port", str(redis_port), "--save", "",
                            "--appendonly", "no", "--requirepass", password], dict(os.environ), tmp_path / "redis.log")
    settings = settings_from_env({}, data_dir=tmp_path / "server", host="0.0.0.0", port=api_port,
                                 broker_url=broker, result_backend=broker, heartbeat_interval_s=0.5,
                                 heartbeat_timeout_s=3.0, worker_concurrency=1)
    server_env = child_env(settings)
    cli(server_env, "db", "upgrade")
    token = cli_json(server_env, "tokens", "create", "remote-pi", "--scope", "read,agent:remote-pi")["token"]
    server = Process([*CLI, "serve", "--no-agent"], server_env, tmp_path / "serve.log")
    # The remote host shares no files with the server: its own data directory, no database at all.
    agent_env = {k: v for k, v in server_env.items() if k != "AUTOML_DATABASE_URL"}
    agent_env.update(AUTOML_DATA_DIR=str(tmp_path / "remote"), AUTOML_SERVER_URL=f"http://{host_ip}:{api_port}",
                     AUTOML_BROKER_URL=broker, AUTOML_RESULT_BACKEND=broker, AUTOML_TOKEN=token,
                     AUTOML_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    agent = Process(["ip", "netns", "exec", namespace, *CLI, "agent", "--device", "remote-pi", "--kind",
                     "raspberry-pi", "--backend", "onnxruntime"], agent_env, tmp_path / "agent.log")
    devices = ("devices", "list", "--token", token)
    try:
        wait_for(lambda: requests.get(f"{settings.resolved_server_url}/api/v1/health", timeout=2).ok, 90, "server")
        online = wait_for(lambda: [d for d in cli_json(server_env, *devices) if d["status"] == "online"], 60,
                          "the remote agent to come online")
        profiled = cli_json(server_env, "profile", "--device", "remote-pi", "--space", "tiny", "--resolution", "8",
                            "--in-channels", "1", "--timeout", "120")
        agent.stop()
        offline = wait_for(lambda: [d for d in cli_json(server_env, *devices) if d["status"] == "offline"], 30,
                           "the remote agent to go offline")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- server\n{server.log()}\n--- agent\n{agent.log()}") from None
    finally:
        for process in (agent, server, redis_server):
            process.stop()
            process.kill_group()
        _forget_database(settings.resolved_database_url)

    assert online[0]["name"] == "remote-pi" and [r["name"] for r in online[0]["runtimes"]] == ["onnxruntime"]
    assert profiled["measured"] == 20 and profiled["failed"] == {}
    assert offline[0]["name"] == "remote-pi"
