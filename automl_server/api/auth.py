"""Bearer-token authentication and scopes for /api/v1, and the token-use audit.

Tokens are required unless the server runs in its default local mode, bound
to a loopback address (see Settings.auth_required). The spec, the docs page
and the health check stay open so that a client can discover how to log in.
Each operation declares the scope it needs (``registry.operation(scope=...)``,
automl_server.auth); a token without it is answered 403 naming the scope
needed and the token's scopes. Every request that presented a token is
written to the audit log (automl_server.audit_log; repeated successful reads as
a count per minute).
"""
from __future__ import annotations

from flask import Blueprint, Response, g, request

from automl_server import audit_log
from automl_server.api.blueprint import registry
from automl_server.api.openapi import Operation
from automl_server.api.problems import ProblemError
from automl_server.auth import AGENT, allows, check_token, token_scopes
from automl_server.login_throttle import failed_logins
from automl_server.service_state import state

PUBLIC_ENDPOINTS = {"api.openapi_json", "api.docs", "api.docs_asset", "api.health"}


def _require_token() -> None:
    g.token_name = None
    g.token_scopes = None  # None: no token asked (local mode, public endpoint); every scope allowed
    g.audit_token_prefix = None
    if request.endpoint in PUBLIC_ENDPOINTS or not state().settings.auth_required:
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
    secret = secret.strip()
    # Only the first characters, as `automl tokens list` shows them: enough to tell tokens apart.
    g.audit_token_prefix = secret[:10]
    throttle = failed_logins()
    client = request.remote_addr or "unknown"
    wait_s = throttle.wait_s(client)
    if wait_s:
        raise ProblemError(
            429, "Too many requests",
            f"too many requests with an unknown or revoked API token from this address; try again in {wait_s} s",
            field="Authorization", slug="too-many-failed-logins", headers={"Retry-After": str(wait_s)},
        )
    token = check_token(state().db, secret)
    if token is None:
        throttle.failed(client)
        raise ProblemError(
            401, "Unauthorized", "the API token is unknown or revoked; create a new one with `automl tokens create NAME`",
            field="Authorization", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"},
        )
    g.token_name = token.name
    g.token_scopes = token_scopes(token)


def authorize(op: Operation, device: str | None) -> None:
    """403 unless the request's token holds the scope ``op`` needs."""
    scopes = g.get("token_scopes")
    if scopes is None or op.scope is None or allows(scopes, op.scope, device):
        return
    needed = f"agent:{device}" if op.scope == AGENT else op.scope
    alternatives = "admin" if op.scope == "admin" else f"{needed} or admin"
    held = ", ".join(scopes) or "none"
    raise ProblemError(
        403, "Forbidden",
        f"{op.method.upper()} {request.path} needs the scope {alternatives}; the API token "
        f"{g.get('token_name')!r} has {held}. Create a token with that scope: "
        f"`automl tokens create NAME --scope {needed}`",
        field="Authorization", slug="insufficient-scope", scope_needed=needed, token_scopes=list(scopes),
    )


def _audit_token_use(response: Response) -> Response:
    """The audit of each request that presented a token (refused ones too): a row of
    its own, or for a repeated successful read a count (audit_log.record_token_use)."""
    prefix = g.get("audit_token_prefix")
    if prefix is not None:
        audit_log.record_token_use(
            state().db, token_name=g.get("token_name"), token_prefix=prefix, method=request.method,
            path=request.path[:500], status=response.status_code, address=(request.remote_addr or "")[:100] or None,
        )
    return response


def init_app(blueprint: Blueprint) -> None:
    if _require_token not in blueprint.before_request_funcs.get(None, []):
        blueprint.before_request(_require_token)
    if _audit_token_use not in blueprint.after_request_funcs.get(None, []):
        blueprint.after_request(_audit_token_use)
    registry.authorize = authorize
