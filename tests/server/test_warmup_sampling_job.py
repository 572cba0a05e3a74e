"""``params.warmup_sampling``: a job's search warms its supernet up as asked, and a bad value is refused."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import device_agents.tasks  # noqa: F401  (the agent's tasks run in-process, eagerly)
from tests.server.test_job_pipeline import job_request, sqlite_module_farm

BUDGET = {"warmup_epochs": 1, "search_epochs": 1, "tune_trials": 0, "tune_epochs": 1, "train_epochs": 1}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from sqlite_module_farm(tmp_path_factory, "warmup-sampling-jobs")


def test_a_job_searches_with_the_progressive_warm_up_it_asked_for(farm):
    client = farm[0].test_client()

    response = client.post("/api/v1/jobs", json=job_request(
        tune=False, budget=BUDGET, stop_after="search", params={"calibration_networks": 5,
                                                                "warmup_sampling": "progressive"}))

    job = client.get(response.headers["Location"]).json
    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["search"]["config"]["warmup_sampling"] == "progressive"


def test_a_bad_warm_up_sampling_is_refused_naming_the_field_and_the_accepted_values(farm):
    client = farm[0].test_client()

    response = client.post("/api/v1/jobs", json=job_request(params={"warmup_sampling": "sideways"}))

    assert response.status_code == 422
    assert response.json["field"] == "params.warmup_sampling"
    assert "uniform" in response.json["detail"] and "progressive" in response.json["detail"]
