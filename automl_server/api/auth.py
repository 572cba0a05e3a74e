"""Bearer-token authentication for /api/v1.

Tokens are required unless the server runs in its default local mode, bound
to a loopback address (see Settings.auth_required). The spec, the docs page
and the health check stay open so that a client can discover how to log in.
"""
from __future__ import annotations

from flask import Blueprint, g, request

from automl_server.api.problems import ProblemError
from automl_server.auth import verify_token
from automl_server.login_throttle import failed_logins
from automl_server.service_state import state

PUBLIC_ENDPOINTS = {"api.openapi_json", "api.docs", "api.docs_asset", "api.health"}


def _require_token() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS or not state().settings.auth_required:
        g.token_name = None
        return
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ProblemError(
            401, "Unauthorized",
            "this server requires an API token: send 'Authorization: Bearer <token>'; "
            "create one with `automl tokens create NAME`",
            field="Authorization", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"},
        )
    throttle = failed_logins()
    client = request.remote_addr or "unknown"
    wait_s = throttle.wait_s(client)
    if wait_s:
        raise ProblemError(
            429, "Too many requests",
            f"too many requests with an unknown or revoked API token from this address; try again in {wait_s} s",
            field="Authorization", slug="too-many-failed-logins", headers={"Retry-After": str(wait_s)},
        )
    with state().db.session() as session:
        token = verify_token(session, secret.strip())
        if token is None:
            throttle.failed(client)
            raise ProblemError(
                401, "Unauthorized", "the API token is unknown or revoked; create a new one with `automl tokens create NAME`",
                field="Authorization", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"},
            )
        g.token_name = token.name


def init_app(blueprint: Blueprint) -> None:
    if _require_token not in blueprint.before_request_funcs.get(None, []):
        blueprint.before_request(_require_token)
