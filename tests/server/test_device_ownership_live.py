"""Devices owned by their agents, over real HTTP: the agent keeps its device's
token across restarts, an agent without it is refused, and `automl devices
delete` retires a device. The app is served by werkzeug in a thread (cheap);
the whole `automl serve` with its agent is covered by test_processes.py."""
from __future__ import annotations

import stat
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from automl_server.cli import main
from device_agents.agent import Agent, AgentError
from tests.datasets import archives
from tests.server.processes import wait_for
from tests.server.test_api_datasets import upload

RUNTIMES = [{"name": "onnxruntime", "version": "1.31"}]


@pytest.fixture
def live_url(queued_app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, queued_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_a_restarted_agent_re_registers_with_the_token_it_kept(live_url, tmp_path):
    first_run = Agent(server_url=live_url, name="pi-4", kind="raspberry-pi", runtimes=RUNTIMES,
                      state_dir=tmp_path / "state")
    first_run.register()
    token_file = tmp_path / "state" / "pi-4.token"

    restarted = Agent(server_url=live_url, name="pi-4", kind="raspberry-pi",
                      runtimes=[*RUNTIMES, {"name": "litert", "version": "2.3"}], state_dir=tmp_path / "state")
    again = restarted.register()
    beat = restarted.heartbeat()

    assert token_file.read_text().startswith("agt_") and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert again["agent_token"] is None and [r["name"] for r in again["runtimes"]] == ["onnxruntime", "litert"]
    assert beat["status"] == "online"


def test_an_agent_without_the_token_cannot_take_over_a_live_device(live_url, tmp_path):
    Agent(server_url=live_url, name="pi-4", kind="raspberry-pi", runtimes=RUNTIMES,
          state_dir=tmp_path / "owner").register()
    stranger = Agent(server_url=live_url, name="pi-4", kind="cpu", runtimes=RUNTIMES, state_dir=tmp_path / "other")

    with pytest.raises(AgentError) as refused:
        stranger.register()

    assert refused.value.status == 409
    assert "automl devices delete pi-4" in str(refused.value)
    assert not (tmp_path / "other" / "pi-4.token").exists()


def test_cli_retires_a_device_only_with_force_while_it_has_jobs(live_url, queued_app, tmp_path):
    client = queued_app.test_client()
    upload(client, archives.good_zip(tmp_path, classes=("cat", "dog"), per_class=4, size=(8, 8)), name="pets")
    client.post("/api/v1/devices", json={"name": "pi-4", "kind": "raspberry-pi", "runtimes": RUNTIMES})
    job_id = client.post("/api/v1/jobs", json={"dataset": "pets", "device": "pi-4", "latency_target_ms": 5,
                                               "stop_after": "validate"}).json["id"]
    runner = CliRunner()

    refused = runner.invoke(main, ["devices", "delete", "pi-4", "--server", live_url])
    forced = runner.invoke(main, ["devices", "delete", "pi-4", "--force", "--server", live_url])

    assert refused.exit_code == 1 and job_id in refused.output and "--force" in refused.output
    assert forced.exit_code == 0, forced.output
    assert "device pi-4 retired" in forced.output and f"cancelled jobs: {job_id}" in forced.output
    assert client.get("/api/v1/devices/pi-4").status_code == 404


def test_a_running_agent_whose_device_was_retired_registers_it_again(live_url, queued_app, tmp_path):
    agent = Agent(server_url=live_url, name="pi-4", kind="raspberry-pi", runtimes=RUNTIMES, interval_s=0.05,
                  state_dir=tmp_path / "state")
    client = queued_app.test_client()
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    try:
        first = wait_for(agent.token_file.read, 20, "the agent to register", interval_s=0.05)
        retired = client.delete("/api/v1/devices/pi-4")
        second = wait_for(lambda: (token := agent.token_file.read()) != first and token, 20,
                          "the agent to register its retired device again", interval_s=0.05)
        back = client.get("/api/v1/devices/pi-4")
    finally:
        agent.stop_event.set()
        loop.join(timeout=10)

    assert retired.status_code == 200
    assert back.status_code == 200 and back.json["status"] == "online"  # a new device, with a new token
    assert second.startswith("agt_")

