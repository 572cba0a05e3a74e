"""The OpenAPI document is valid, complete, and the docs page works offline."""
from __future__ import annotations

import pytest
from openapi_spec_validator import validate


@pytest.fixture
def spec(client):  # type: ignore[no-untyped-def]
    return client.get("/api/v1/openapi.json").json


def test_spec_is_valid_openapi_3(spec):
    validate(spec)

    assert spec["openapi"].startswith("3.")


def test_every_api_route_is_documented(app, spec):
    undocumented_by_design = {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/{filename}"}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = rule.rule.replace("<", "{").replace(">", "}").replace("{path:", "{")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))

    documented = {(path, method) for path, item in spec["paths"].items() for method in item}

    assert documented == {r for r in routes if r[0] not in undocumented_by_design}


def test_job_creation_documents_body_idempotency_and_problems(spec):
    create = spec["paths"]["/api/v1/jobs"]["post"]

    assert "Idempotency-Key" in [p["name"] for p in create["parameters"]]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobCreate")
    assert "202" in create["responses"]
    assert "application/problem+json" in create["responses"]["422"]["content"]


def test_docs_page_serves_its_assets_locally(client):
    page = client.get("/api/v1/docs")
    script = client.get("/api/v1/docs/swagger-ui-bundle.js")

    assert page.status_code == 200 and 'src="docs/swagger-ui-bundle.js"' in page.get_data(as_text=True)
    assert script.status_code == 200 and len(script.data) > 100_000
    script.close()


def test_unknown_route_and_wrong_method_are_problem_documents(client):
    missing = client.get("/api/v1/nothing-here")
    wrong_method = client.put("/api/v1/jobs")

    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert wrong_method.status_code == 405 and "GET" in wrong_method.json["detail"]


def test_home_page_lists_what_the_service_holds(client, tmp_path):
    client.post("/api/v1/devices", json={"name": "local-cpu", "kind": "cpu", "runtimes": [{"name": "pytorch"}]})

    page = client.get("/").get_data(as_text=True)

    assert "local-cpu" in page and "online" in page and "/api/v1/docs" in page


def test_wrong_method_names_the_allowed_ones_in_the_allow_header(client):
    response = client.delete("/api/v1/jobs")

    assert response.status_code == 405 and response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize(("kwargs", "status"), [
    ({}, 415),                                                       # no body at all
    ({"data": "\x00", "content_type": "application/json"}, 400),     # not JSON
    ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415),
])
def test_a_body_that_is_not_json_is_a_documented_problem(client, spec, kwargs, status):
    response = client.post("/api/v1/devices", **kwargs)

    assert response.status_code == status and response.mimetype == "application/problem+json"
    assert response.json["field"] == "body"
    assert str(status) in spec["paths"]["/api/v1/devices"]["post"]["responses"]


def test_a_page_token_we_did_not_issue_is_a_documented_400(client, spec):
    response = client.get("/api/v1/jobs", query_string={"page_token": "not-ours"})

    assert response.status_code == 400 and response.json["field"] == "page_token"
    assert "400" in spec["paths"]["/api/v1/jobs"]["get"]["responses"]


def test_the_event_stream_documents_its_events(spec):
    stream = spec["paths"]["/api/v1/jobs/{job_id}/events/stream"]["get"]
    event = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]

    assert event["required"] == ["event", "data"]
    assert event["properties"]["data"]["contentMediaType"] == "application/json"
    assert "Last-Event-ID" in [p["name"] for p in stream["parameters"]]


def test_spec_asks_for_a_token_only_where_the_server_does(client, spec):
    assert spec["security"] == []  # the test app runs in local mode (loopback)
    assert spec["paths"]["/api/v1/health"]["get"]["security"] == []


def test_every_operation_says_the_scope_it_needs_and_documents_403(tmp_path, database_url):
    from automl_server.app import create_app
    from automl_server.celery_app import make_celery
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, database_url, auth_mode="always")
    spec = create_app(settings, celery=make_celery(settings, eager=True)).test_client().get("/api/v1/openapi.json").json
    operations = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}

    scopes = {key: op.get("x-required-scope") for key, op in operations.items()}
    assert scopes.pop(("/api/v1/health", "get")) is None
    assert set(scopes.values()) == {"read", "submit", "admin", "agent:DEVICE"}
    assert scopes[("/api/v1/audit", "get")] == scopes[("/api/v1/devices/{name}", "delete")] == "admin"
    assert scopes[("/api/v1/devices/{name}/heartbeat", "post")] == "agent:DEVICE"
    assert all("403" in operations[key]["responses"] for key in scopes)
    assert "Token needs the admin scope." in operations[("/api/v1/audit", "get")]["description"]
