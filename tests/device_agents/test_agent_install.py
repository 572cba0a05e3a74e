"""`pip install .[agent]` in a fresh virtual environment gives a device agent
(no Flask, no database-server drivers, no browser tests) that registers with a
running service and profiles operators for it.

Building that environment takes minutes (torch alone is about 1 GB unpacked),
so it is built once per dependency set and kept: the folder is named by the
hash of pyproject.toml and constraints.txt, under ~/.cache/automl-server/
(or AUTOML_TEST_AGENT_VENV_CACHE). Each run then only reinstalls this tree's
code into it, without dependencies (seconds). The first build downloads from
the package index what pip's cache does not hold; torch comes from the
machine's local wheel (pip's find-links). Not a venv with
--system-site-packages: nothing of the test's own environment is visible to it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.processes import Process, cli_json, serving, wait_for

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("automl_server", "device_agents", "latency_db", "search_spaces")
# What the service needs and an agent host must not get.
SERVICE_ONLY = ("flask", "werkzeug", "waitress", "alembic", "psycopg", "optuna", "swagger_ui", "playwright",
                "pytest", "sklearn", "flwr")
BUILD_TIMEOUT_S = 1800


def _run(args: list[str], *, timeout_s: float = BUILD_TIMEOUT_S, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=env)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result.stdout


def _source_copy(dest: Path) -> Path:
    """This tree's installable part, copied so that building it leaves nothing in the checkout."""
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _agent_venv(source: Path) -> Path:
    """The cached environment for this dependency set, built by `pip install .[agent]` if missing."""
    deps_hash = hashlib.sha1((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
    cache = Path(os.environ.get("AUTOML_TEST_AGENT_VENV_CACHE", Path.home() / ".cache" / "automl-server"))
    venv = cache / f"agent-venv-{deps_hash.hexdigest()[:12]}"
    if (venv / ".complete").exists():
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob("agent-venv-*"):  # about 1.2 GB each: keep only the current dependency set's
        shutil.rmtree(stale, ignore_errors=True)
    # The venv is built at its final path (its scripts name their interpreter by absolute path);
    # a half-built one is never marked complete and is rebuilt next time.
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run([*pip, "pip==26.3", "setuptools==84.2.1", "wheel"])
    # As the Makefile does: torch==2.13.0 first, from the machine's local CPU wheel.
    _run([*pip, "-c", str(source / "constraints.txt"), "torch==2.13.0"])
    _run([*pip, "-c", str(source / "constraints.txt"), "--no-build-isolation", f"{source}[agent]"], cwd=source)
    (venv / ".complete").write_text(deps_hash.hexdigest())
    return venv


@pytest.fixture
def agent_venv(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    source = _source_copy(tmp_path / "src")
    venv = _agent_venv(source)
    # This tree's code, not the code the environment was first built with; dependencies unchanged.
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
          "--no-build-isolation", "--force-reinstall", str(source)], timeout_s=300, cwd=source)
    return venv


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_an_agent_installed_alone_registers_and_profiles(agent_venv: Path, tmp_path: Path) -> None:
    python = str(agent_venv / "bin" / "python")
    # Run away from the checkout: `python -c` puts the working directory first on sys.path.
    present = _run([python, "-c", "import importlib.util as u; "
                    f"print(','.join(m for m in {SERVICE_ONLY!r} if u.find_spec(m)))"], timeout_s=60, cwd=tmp_path).strip()
    where = _run([python, "-c", "import device_agents; print(device_agents.__file__)"], timeout_s=60, cwd=tmp_path)
    _run([python, "-m", "pip", "check"], timeout_s=120)

    with serving(tmp_path, "--no-agent") as (settings, env):
        agent_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOML_") and k != "PYTHONPATH"}
        agent = Process([str(agent_venv / "bin" / "automl-agent"), "--device", "venv-pi", "--kind", "raspberry-pi",
                         "--backend", "onnxruntime", "--server", settings.resolved_server_url,
                         "--broker", settings.resolved_broker_url,
                         "--result-backend", settings.resolved_result_backend, "--heartbeat-interval", "0.5"],
                        agent_env, tmp_path / "agent.log")
        try:
            online = wait_for(lambda: [d for d in cli_json(env, "devices", "list")
                                       if d["name"] == "venv-pi" and d["status"] == "online"], 90,
                              "the installed agent to come online")
            profiled = cli_json(env, "profile", "--device", "venv-pi", "--space", "tiny", "--resolution", "8",
                                "--in-channels", "1", "--timeout", "180")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent\n{agent.log()}") from None
        finally:
            agent.stop()
            agent.kill_group()

    assert present == ""
    assert where.startswith(str(agent_venv))
    assert [r["name"] for r in online[0]["runtimes"]] == ["onnxruntime"] and online[0]["kind"] == "raspberry-pi"
    assert profiled["measured"] == 20 and profiled["failed"] == {}
