"""Android end to end without a phone: an ADB protocol peer on 127.0.0.1 (real
RSA auth, shell and sync services) stands in for the phone, with a stand-in
benchmark_model that runs the pushed .tflite with LiteRT and prints the real
tool's output. The agent is the production one and cannot tell."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from adb_shell.auth.keygen import keygen

from automl_server.settings import settings_from_env
from tests.conftest import _forget_database
from tests.device_agents.android.adb_peer import AdbPeer
from tests.device_agents.android.fake_benchmark_model import install_benchmark_model
from tests.server.processes import CLI, Process, child_env, cli_json, free_port, wait_for

HOST_MASK = f"{1 << min(os.sched_getaffinity(0)):x}"  # this host has no big cores 4-7


@pytest.mark.slow
def test_agent_profiles_ops_on_a_phone_over_adb(tmp_path):
    key = tmp_path / "adbkey"
    keygen(str(key))
    (tmp_path / "tools").mkdir()
    binary = install_benchmark_model(tmp_path / "tools" / "benchmark_model")
    settings = settings_from_env({}, data_dir=tmp_path / "data", port=free_port(), heartbeat_interval_s=0.5)
    env = child_env(settings)
    with AdbPeer(tmp_path / "phone", trusted_keys=[Path(f"{key}.pub").read_text()]) as phone:
        server = Process([*CLI, "serve", "--no-agent"], env, tmp_path / "serve.log")
        agent = None
        try:
            # The agent starts once the server answers, as a user would start it: on the embedded
            # defaults its result backend is a SQLite file in the data directory that serve creates
            # (an agent started beside serve once failed with "unable to open database file").
            wait_for(lambda: requests.get(f"{settings.resolved_server_url}/api/v1/health", timeout=2).ok, 90,
                     "server")
            agent = Process([*CLI, "agent", "--device", "pixel-sim", "--kind", "android", "--backend", "android",
                             "--adb-host", "127.0.0.1", "--adb-port", str(phone.port), "--adb-key", str(key),
                             "--benchmark-binary", str(binary), "--adb-cpu-mask", HOST_MASK], env,
                            tmp_path / "agent.log")
            device = wait_for(lambda: [d for d in cli_json(env, "devices", "list") if d["name"] == "pixel-sim"],
                              60, "the phone's agent to register")
            profiled = cli_json(env, "profile", "--device", "pixel-sim", "--space", "tiny", "--resolution", "8",
                                "--in-channels", "1", "--timeout", "120")
        except AssertionError as exc:
            agent_log = agent.log() if agent is not None else "(not started)"
            raise AssertionError(f"{exc}\n--- server\n{server.log()}\n--- agent\n{agent_log}") from None
        finally:
            for process in (agent, server):
                if process is not None:
                    process.stop()
                    process.kill_group()
            _forget_database(settings.resolved_database_url)

    assert device[0]["kind"] == "android" and [r["name"] for r in device[0]["runtimes"]] == ["litert"]
    assert profiled["failed"] == {} and profiled["measured"] == 20
