"""`automl schedule --device D --model model.onnx` against a server started in
the test (eager Celery: the agent's tasks run in-process): any ONNX model is
scheduled on the device, and a second schedule reuses the measured stages."""
from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from automl_server.cli import main
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from tests.conftest import _forget_database
from tests.device_agents.ios.test_agent_tasks import inception_onnx
from tests.server.test_job_pipeline import make_farm


@pytest.fixture
def server(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'automl.sqlite'}"
    upgrade(get_database(url))
    app = make_farm(tmp_path, url)[0]
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{httpd.port}"
    httpd.shutdown()
    _forget_database(url)


def test_the_cli_schedules_an_uploaded_model_and_a_second_run_reuses_the_stage_costs(server, tmp_path):
    _app, url = server
    model = tmp_path / "inception.onnx"
    model.write_bytes(inception_onnx())
    runner = CliRunner()

    first = runner.invoke(main, ["schedule", "--device", "cpu-1", "--model", str(model), "--server", url])
    assert first.exit_code == 0, first.output
    assert "merge" in first.output or "parallel" in first.output
    assert "speed-up of IOS over sequential" in first.output and "deployed: " in first.output
    for name in ("sequential", "greedy", "ort_parallel", "ios"):
        assert name in first.output

    second = runner.invoke(main, ["schedule", "--device", "cpu-1", "--model", str(model), "--server", url, "--json"])
    assert second.exit_code == 0, second.output
    result = json.loads(second.output)["result"]
    assert result["stages_measured"] == 0 and result["stages_reused"] == result["candidate_stages"] > 0
    assert result["deployed"] in ("ios", "sequential")
    if result["latency_ms"]["ios"] >= result["latency_ms"]["sequential"]:
        assert result["deployed"] == "sequential" and "slower" in result["note"]


def test_the_api_refuses_a_file_that_is_not_onnx_and_an_unknown_device(server):
    app, _url = server
    client = app.test_client()
    import io

    bad = client.post("/api/v1/schedules", data={"device": "cpu-1", "file": (io.BytesIO(b"nope"), "m.onnx")})
    assert bad.status_code == 422 and "not a valid ONNX model" in bad.json["detail"]
    unknown = client.post("/api/v1/schedules", data={"device": "nowhere",
                                                     "file": (io.BytesIO(inception_onnx()), "m.onnx")})
    assert unknown.status_code == 422 and "nowhere" in unknown.json["detail"]
    assert client.get("/api/v1/schedules/abc123").status_code == 404
