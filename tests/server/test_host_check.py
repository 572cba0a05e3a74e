"""DNS rebinding against a server that requires no token: requests whose Host
header is not a name of this server are refused (automl_server/host_check.py)."""
from __future__ import annotations

import socket
import threading

import pytest
import requests

from automl_server.app import create_app
from automl_server.celery_app import make_celery
from automl_server.settings import settings_from_env
from tests.conftest import make_settings


def client_for(tmp_path, database_url, **overrides):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url, **overrides)
    return create_app(settings, celery=make_celery(settings, eager=True)).test_client()


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/jobs", "/api/v1/openapi.json"])
def test_a_foreign_host_is_refused_in_local_mode_naming_the_host_and_the_setting(tmp_path, database_url, path):
    client = client_for(tmp_path, database_url)

    response = client.get(path, headers={"Host": "evil.example:8000"})

    assert response.status_code == 421
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem["type"] == "urn:automl:problem:host-not-allowed" and problem["field"] == "Host"
    assert "Host header 'evil.example:8000' is not a name of this server" in problem["detail"]
    listed = problem["detail"].split("allowed: ", 1)[1].split(". ", 1)[0].split(", ")
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()} == set(listed)
    assert "AUTOML_ALLOWED_HOSTS" in problem["detail"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LocalHost.:80",
                                  socket.gethostname(), "automl.lan:8000", "agents.example"])
def test_names_of_this_server_and_the_configured_ones_are_served(tmp_path, database_url, host):
    client = client_for(tmp_path, database_url, allowed_hosts="automl.lan, ",
                        server_url="https://agents.example/automl")

    assert client.get("/api/v1/jobs", headers={"Host": host}).status_code == 200


def test_the_bind_address_is_allowed_and_a_star_allows_any_host(tmp_path, database_url):
    bound = client_for(tmp_path, database_url, host="192.168.1.20", auth_mode="never")
    assert bound.get("/api/v1/jobs", headers={"Host": "192.168.1.20:8000"}).status_code == 200
    assert bound.get("/api/v1/jobs", headers={"Host": "192.168.1.21:8000"}).status_code == 421

    anything = client_for(tmp_path, database_url, allowed_hosts="*")
    assert anything.get("/api/v1/jobs", headers={"Host": "evil.example"}).status_code == 200


def test_with_tokens_required_the_host_is_not_checked(tmp_path, database_url):
    # A rebinding page holds no token: it gets the 401 any client gets, not the API.
    client = client_for(tmp_path, database_url, host="0.0.0.0")

    response = client.get("/api/v1/jobs", headers={"Host": "evil.example:8000"})

    assert response.status_code == 401


def test_allowed_hosts_is_read_from_the_environment():
    assert settings_from_env({"AUTOML_ALLOWED_HOSTS": "a.lan,b.lan"}).allowed_hosts == "a.lan,b.lan"


def test_a_rebound_name_is_refused_over_a_real_socket(tmp_path, database_url):
    # What the browser sends once evil.example resolves to 127.0.0.1: the connection is to
    # loopback, the Host header still says evil.example.
    from werkzeug.serving import make_server

    settings = make_settings(tmp_path, database_url)
    server = make_server("127.0.0.1", 0, create_app(settings, celery=make_celery(settings)), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/v1/jobs"
        rebound = requests.get(url, headers={"Host": f"evil.example:{server.server_port}"}, timeout=10)
        direct = requests.get(url, timeout=10)
    finally:
        server.shutdown()
        thread.join(10)

    assert rebound.status_code == 421 and "evil.example" in rebound.json()["detail"]
    assert direct.status_code == 200
