"""A new training pipeline registered in one place (this file) appears
everywhere: the API accepts it and validates its settings, GET /pipelines and
the OpenAPI spec list it, the CLI lists it, the web form offers it with a
control per setting, and a job runs it through the generic train stage."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pydantic import Field
from werkzeug.serving import make_server

from automl_server.cli import main
from automl_server.engine.train.registry import (
    DataFacts,
    InvalidPipelineSettings,
    PipelineConfig,
    PipelineInputs,
    TrainCallbacks,
    TrainOutcome,
    register_pipeline,
    unregister_pipeline,
)
from automl_server.jobs import stages
from tests.server.test_job_pipeline import SMALL_BUDGET, events, job_request, make_farm


# -- the toy pipeline: everything a new pipeline writes ---------------------------------
class ToySettings(PipelineConfig):
    steps: int = Field(3, ge=1, le=50, description="SGD steps on the first batch.")
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    mode: Literal["plain", "shuffled"] = Field("plain", description="Which batches.")
    echo: str | None = Field(None, max_length=20, description="Copied to the report.")


def run_toy(inputs: PipelineInputs, settings: ToySettings, callbacks: TrainCallbacks) -> TrainOutcome:
    """A few SGD steps, to show the contract."""
    optimizer = torch.optim.SGD(inputs.model.parameters(), lr=settings.lr)
    x, y = inputs.data.x_train[:32], inputs.data.y_train[:32]
    losses = []
    for step in range(settings.steps):
        callbacks.check_cancelled()
        loss = F.cross_entropy(inputs.model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        callbacks.metric(f"toy step {step + 1}", phase="train", step=step + 1, loss=losses[-1])
        callbacks.progress((step + 1) / settings.steps, f"step {step + 1}/{settings.steps}")
    return TrainOutcome(model=inputs.model, epochs=1, history=[{"loss": v} for v in losses],
                        report={"losses": losses, "echo": settings.echo})


def check_toy(settings: ToySettings, facts: DataFacts) -> None:
    # 40 samples a step: the check sees the job's data (digits: ~1,400 training samples).
    if settings.steps * 40 > facts.train_samples:
        raise InvalidPipelineSettings("steps", f"at most {facts.train_samples // 40} for "
                                      f"{facts.train_samples} training samples")


@pytest.fixture
def toy_pipeline() -> Iterator[None]:
    register_pipeline("toy-copy", ToySettings, run_toy, title="Toy", description="A test pipeline.",
                      check=check_toy)
    yield
    unregister_pipeline("toy-copy")


@pytest.fixture
def farm(tmp_path, database_url, toy_pipeline):  # type: ignore[no-untyped-def]
    return make_farm(tmp_path, database_url)


# -- it appears everywhere -------------------------------------------------------------
def test_the_pipelines_listing_shows_a_registered_pipeline_with_its_settings(farm):
    client = farm[0].test_client()
    listing = {p["name"]: p for p in client.get("/api/v1/pipelines").json["pipelines"]}

    assert {"standard", "toy-copy"} <= set(listing)
    toy = listing["toy-copy"]
    assert toy["params_key"] == "toy_copy"
    assert toy["defaults"] == {"steps": 3, "lr": 0.1, "mode": "plain", "echo": None}
    assert toy["settings_schema"]["properties"]["steps"]["maximum"] == 50
    assert client.get("/api/v1/pipelines/toy-copy").json["title"] == "Toy"
    assert client.get("/api/v1/pipelines/nope").status_code == 404


def test_the_openapi_spec_names_the_pipeline_and_documents_its_settings(farm):
    spec = farm[0].test_client().get("/api/v1/openapi.json").json
    job_create = spec["components"]["schemas"]["JobCreate"]
    options = spec["components"]["schemas"]["JobOptions"]

    assert "toy-copy" in job_create["properties"]["pipeline"]["enum"]
    assert options["properties"]["toy_copy"]["properties"]["mode"]["enum"] == ["plain", "shuffled"]
    assert "report" in str(job_create["properties"]["stop_after"])


@pytest.mark.parametrize(("params", "field", "named"), [
    ({"toy_copy": {"steps": 0}}, "params.toy_copy.steps", "greater than or equal to 1"),
    ({"toy_copy": {"stepz": 2}}, "params.toy_copy.stepz", "steps"),
    ({"toy_copy": {"mode": "loud"}}, "params.toy_copy.mode", "'plain'"),
    ({"toy_copy": {"steps": 50}}, "params.toy_copy.steps", "training samples"),  # check() on the job's data
    ({"standard": {"lr": 0.1}}, "params.standard", "params.toy_copy"),
    ({"toy_copy": 3}, "params", "must be an object"),
    ({"colour": {}}, "params", "toy_copy"),
])
def test_bad_pipeline_settings_are_refused_naming_the_field(farm, params, field, named):
    client = farm[0].test_client()
    response = client.post("/api/v1/jobs", json=job_request(pipeline="toy-copy", params=params))

    assert response.status_code == 422, response.json
    assert response.json["field"] == field
    assert named in response.json["detail"]


def test_the_web_form_offers_the_pipeline_with_a_control_per_setting(farm):
    client = farm[0].test_client()
    page = client.get("/new").get_data(as_text=True)

    assert 'name="pipeline" value="toy-copy"' in page
    assert 'name="params.toy_copy.steps"' in page and 'max="50"' in page
    assert '<option value="shuffled"' in page
    assert 'data-error-for="params.toy_copy.echo"' in page


def test_the_cli_lists_the_pipeline_from_the_server(farm):
    app = farm[0]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(main, ["pipelines", "--server", f"http://127.0.0.1:{server.port}"])
    finally:
        server.shutdown()

    assert result.exit_code == 0, result.output
    assert "toy-copy: Toy - A test pipeline." in result.output
    assert "--param toy_copy.steps=3" in result.output


# -- and a job runs it --------------------------------------------------------------
def test_a_job_runs_the_registered_pipeline_and_exports_what_it_returns(farm):
    app, settings, db = farm
    client = app.test_client()
    response = client.post("/api/v1/jobs", json=job_request(
        pipeline="toy-copy", tune=False, stop_after="export", budget=SMALL_BUDGET,
        params={"calibration_networks": 5, "toy_copy": {"steps": 4, "echo": "hello"}}))
    assert response.status_code == 202, response.json
    job = client.get(response.headers["Location"]).json

    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["plan"] == ["validate", "profile", "search", "tune", "fit", "train", "export"]
    train = job["result"]["train"]
    assert train["pipeline"] == "toy-copy"
    assert train["settings"] == {"steps": 4, "lr": 0.1, "mode": "plain", "echo": "hello"}
    assert len(train["toy-copy"]["losses"]) == 4 and train["toy-copy"]["echo"] == "hello"
    assert 0.0 <= train["test_accuracy"] <= 1.0
    assert job["params"]["toy_copy"]["steps"] == 4  # stored with its defaults filled in
    metrics = [e for e in events(db, job["id"], "metric") if e.stage == "train"]
    assert [e.data["step"] for e in metrics] == [1, 2, 3, 4]
    assert job["result"]["export"]["onnx"]  # the pipeline's model went on to the export stage


def test_a_registered_stage_joins_the_plan_of_the_jobs_it_applies_to(farm):
    app, settings, db = farm
    client = app.test_client()

    def audit(ctx: Any) -> dict[str, Any]:
        return {"audited": ctx.results["validate"]["num_classes"]}

    stages.register_stage(stages.Stage("toy-audit", "default", audit, "Audit (toy)"), after="validate",
                          applies=lambda params: params.get("pipeline") == "toy-copy")
    try:
        toy = client.post("/api/v1/jobs", json=job_request(pipeline="toy-copy", stop_after="toy-audit")).json
        plain = client.post("/api/v1/jobs", json=job_request(stop_after="validate")).json
        refused = client.post("/api/v1/jobs", json=job_request(stop_after="toy-audit"))
    finally:
        stages.unregister_stage("toy-audit")

    toy = client.get(f"/api/v1/jobs/{toy['id']}").json
    assert toy["state"] == "succeeded", toy["error"]
    assert toy["result"]["plan"] == ["validate", "toy-audit"]
    assert toy["result"]["toy-audit"] == {"audited": 10}
    assert client.get(f"/api/v1/jobs/{plain['id']}").json["result"]["plan"] == ["validate"]
    assert refused.status_code == 422 and refused.json["field"] == "stop_after"


def test_an_unknown_search_strategy_is_refused_listing_the_registered_ones(farm):
    response = farm[0].test_client().post("/api/v1/jobs", json=job_request(strategy="annealing"))

    assert response.status_code == 422
    assert response.json["field"] == "strategy" and "'gradient', 'rl'" in response.json["detail"]
