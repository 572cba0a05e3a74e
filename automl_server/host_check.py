"""Requests must name this server in their Host header (no DNS rebinding).

Without tokens (local mode: bound to loopback, or ``AUTOML_AUTH_MODE=never``)
anyone who can reach the port may use the API. A web page on evil.example
that rebinds its name to 127.0.0.1 (DNS answer with TTL 0) makes the user's
own browser such a client: same-origin rules let that page read the answers,
since to the browser they come from evil.example. What gives it away is the
Host header, which still says evil.example; so requests whose Host is not a
name of this server are refused with 421 (a problem document naming the
host and the setting).

Allowed by default: localhost, 127.0.0.1, [::1], the bind address
(``AUTOML_HOST``), the host of ``AUTOML_SERVER_URL`` and this machine's
hostname; ``AUTOML_ALLOWED_HOSTS`` (comma-separated) adds names, and ``*``
turns the check off.

Stated choice: the check applies only when the server requires no token.
With tokens required, a rebinding page holds no token, and the browser
keeps the session cookie of the real origin to itself (cookies go by host
name), so it gets no more than any client on the network; checking there too
would refuse agents and users that reach a server bound to 0.0.0.0 by an
address or name it cannot know (docker compose's ``web``).
"""
from __future__ import annotations

import socket
from urllib.parse import urlsplit

from flask import Flask, Response, request

from automl_server.api.problems import ProblemError, problem_response
from automl_server.settings import Settings

SETTING = "AUTOML_ALLOWED_HOSTS"


def _bare(host: str) -> str:
    """``host`` without brackets, trailing dot or case: how names are compared."""
    return host.strip().strip("[]").rstrip(".").lower()


def host_of(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``)."""
    header = header.strip()
    if header.startswith("["):
        return _bare(header[1:].split("]", 1)[0])
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return _bare(header)


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The names a request's Host may carry; None when any is allowed (``*``)."""
    extra = [name for name in (part.strip() for part in settings.allowed_hosts.split(",")) if name]
    if "*" in extra:
        return None
    names = ["localhost", "127.0.0.1", "::1", settings.host, socket.gethostname(), *extra]
    if settings.server_url:
        names.append(urlsplit(settings.server_url).hostname or "")
    return frozenset(_bare(name) for name in names if _bare(name))


def init_app(app: Flask, settings: Settings) -> None:
    if settings.auth_required:
        return
    allowed = allowed_hosts(settings)
    if allowed is None:
        return
    listed = ", ".join(sorted(allowed))

    @app.before_request
    def _refuse_foreign_hosts() -> Response | None:
        header = request.headers.get("Host", "")
        if host_of(header) in allowed:
            return None
        return problem_response(ProblemError(
            421, "Host not allowed",
            f"Host header {header!r} is not a name of this server; allowed: {listed}. This server requires "
            f"no token, so it answers only requests addressed to it by name (a page that rebinds its own name "
            f"to this address, DNS rebinding, must not use it). Add names with {SETTING} (comma-separated; "
            f"'*' allows any host)", slug="host-not-allowed", field="Host"))
