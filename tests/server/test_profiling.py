"""Profiling on the farm, end to end: the service sends missing ops to the
device's agent over the broker, the agent measures them with a real runtime,
and the service records them; then predict, measure, export and import."""
from __future__ import annotations

import json
import subprocess
import threading

import pytest
import requests

from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from automl_server.profiling import RECORD_MEASUREMENTS, Target, repository
from automl_server.settings import settings_from_env
from latency_db import TargetSpec
from tests.conftest import _forget_database, make_settings
from tests.server.processes import CLI, child_env, cli, cli_json, serving, wait_for

KEY = "expanded_conv-input:4x4x16-output:4x4x16-expand:3-kernel:3-stride:1-idskip:1"


def test_recording_keeps_good_ops_when_one_failed(tmp_path):
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'automl.sqlite'}")
    db = get_database(settings.resolved_database_url)
    upgrade(db)
    celery = make_celery(settings, eager=True)
    target = Target("pi-4", "onnxruntime", "1.31.1").to_dict()
    stats = {"samples": 50, "warmup": 10, "median_ms": 0.5, "mean_ms": 0.52, "std_ms": 0.01, "p90_ms": 0.55,
             "min_ms": 0.49, "cv": 0.02, "method": {"threads": 1}, "temperature_c": None}
    bad_key = KEY.replace("kernel:3", "kernel:5")

    celery.tasks[RECORD_MEASUREMENTS].apply(args=[{
        "target": target, "agent_version": "0.1.0",
        "results": [{"key": KEY, "stats": stats}, {"key": bad_key, "error": "RuntimeError: backend crashed"}]}])

    repo = repository(db)
    record = repo.target(TargetSpec(**target))
    assert repo.lut_ms(record) == {KEY: 0.5}
    assert repo.history(record, bad_key)[-1].error == "RuntimeError: backend crashed"
    assert repo.missing(record, [KEY, bad_key]) == [bad_key]
    _forget_database(settings.resolved_database_url)


@pytest.fixture
def farm(tmp_path):  # type: ignore[no-untyped-def]
    """`automl serve` with its embedded worker and local agent, the agent online."""
    with serving(tmp_path) as (settings, env):
        wait_for(lambda: [d for d in cli_json(env, "devices", "list") if d["status"] == "online"], 60, "local agent")
        yield settings, env
        _forget_database(settings.resolved_database_url)


@pytest.mark.slow
def test_profile_predict_measure_export_import(farm, tmp_path):
    settings, env = farm
    space = ("--space", "tiny", "--resolution", "8", "--num-classes", "10", "--in-channels", "1")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"space": "tiny", "resolution": 8, "num_classes": 10, "in_channels": 1,
                                "blocks": ["mb3_k5", "zero", "mb3_k3", "mb6_k3", "mb3_k3", "mb6_k5", "mb6_k5",
                                           "mb6_k5"]}))
    lut = tmp_path / "lut.yaml"

    profiled = cli_json(env, "profile", "--device", "local-cpu", "--runtime", "onnxruntime", *space)
    again = cli_json(env, "profile", "--device", "local-cpu", "--runtime", "onnxruntime", *space)
    predicted = cli_json(env, "latency", "predict", "--device", "local-cpu", "--runtime", "onnxruntime",
                         "--arch", str(arch))
    measured = cli_json(env, "latency", "measure", "--device", "local-cpu", "--runtime", "onnxruntime",
                        "--arch", str(arch))
    cli(env, "latency", "export", "--device", "local-cpu", "--runtime", "onnxruntime", "--out", str(lut))
    requests.post(f"{settings.resolved_server_url}/api/v1/devices", timeout=10, json={
        "name": "pi-5", "kind": "raspberry-pi", "runtimes": [{"name": "onnxruntime", "version": "1.31.1"}]})
    cli(env, "latency", "import", "--device", "pi-5", str(lut))
    imported = cli_json(env, "latency", "predict", "--device", "pi-5", "--arch", str(arch))

    assert profiled["measured"] == 20 and profiled["failed"] == {}
    assert again["already_present"] is True
    assert predicted["latency_ms"] > 0 and predicted["calibrated"] is False
    assert measured["latency_ms"] > 0 and measured["stats"]["samples"] > 0
    # Ops and the network were timed beside the yardstick and are given at the target's one pace.
    assert measured["raw_latency_ms"] > 0 and measured["stats"]["method"]["yardstick"] is True
    assert measured["stats"]["method"]["pace_ms"] == pytest.approx(
        measured["stats"]["method"]["yardstick_ms"] * measured["stats"]["method"]["pace_factor"])
    assert imported["latency_ms"] == pytest.approx(predicted["latency_ms"], rel=1e-6)


@pytest.mark.slow
def test_profiling_an_offline_device_fails_fast_with_the_fix(farm):
    settings, env = farm
    requests.post(f"{settings.resolved_server_url}/api/v1/devices", timeout=10, json={
        "name": "phone-1", "kind": "android", "runtimes": [{"name": "litert", "version": "2.3.0"}]})
    db = get_database(settings.resolved_database_url)
    from datetime import timedelta

    from sqlalchemy import update

    from automl_server.db.models import Device, utcnow

    with db.session() as session:
        session.execute(update(Device).where(Device.name == "phone-1")
                        .values(last_heartbeat_at=utcnow() - timedelta(minutes=5)))

    result = cli(env, "profile", "--device", "phone-1", "--space", "tiny", "--resolution", "8", check=False,
                 timeout_s=60)

    assert result.returncode != 0
    assert "offline" in result.stderr and "automl agent --device phone-1" in result.stderr


def test_profiling_unknown_device_lists_the_known_ones(tmp_path):
    settings = settings_from_env({}, data_dir=tmp_path / "data")
    env = child_env(settings)
    cli(env, "db", "upgrade")

    result = cli(env, "profile", "--device", "ghost", "--space", "tiny", "--resolution", "8", check=False)

    assert result.returncode == 2 and "no device 'ghost'" in result.stderr


@pytest.mark.slow
def test_profiling_stops_with_the_reason_when_the_device_goes_offline(tmp_path):
    with serving(tmp_path, "--no-agent") as (settings, env):
        env["AUTOML_HEARTBEAT_TIMEOUT_S"] = "3.0"
        url = f"{settings.resolved_server_url}/api/v1/devices"
        agent_token = requests.post(url, timeout=10, json={
            "name": "flaky-phone", "kind": "android", "runtimes": [{"name": "litert", "version": "2.3.0"}]}
        ).json()["agent_token"]
        dispatched = threading.Event()

        def heartbeats() -> None:  # the phone's agent, until the work has been sent to it
            while not dispatched.wait(0.5):
                requests.post(f"{url}/flaky-phone/heartbeat", json={}, timeout=10,
                              headers={"Automl-Agent-Token": agent_token})

        beating = threading.Thread(target=heartbeats, daemon=True)
        beating.start()
        profile = subprocess.Popen([*CLI, "profile", "--device", "flaky-phone", "--space", "tiny", "--resolution",
                                    "8"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        seen = ""
        while profile.poll() is None and "profile flaky-phone" not in seen:
            seen += profile.stderr.read(1)  # the progress bar appears once the ops were dispatched
        dispatched.set()
        stderr = seen + profile.communicate(timeout=60)[1]
        _forget_database(settings.resolved_database_url)

    assert profile.returncode != 0
    assert "went offline" in stderr and "stay queued" in stderr
