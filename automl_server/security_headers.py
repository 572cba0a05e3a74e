"""Security headers on every response.

Pages load scripts and styles from this server only (no inline script: data
for scripts rides in ``<script type="application/json">`` blocks, which a
Content-Security-Policy does not execute), may not be framed by other sites
(clickjacking), and no response is content-sniffed into another type.

Deviation, stated: the API docs page (Swagger UI 5 from the swagger-ui-py
package) also gets ``style-src 'unsafe-inline'``, because Swagger UI's
bundle sets inline styles it does not let us move; its scripts are still
'self' only.
"""
from __future__ import annotations

from flask import Flask, Response, request

_PAGE_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",  # the empty favicon and the charts' data URIs
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
_DOCS_POLICY = {**_PAGE_POLICY, "style-src": "'self' 'unsafe-inline'"}
DOCS_PATH = "/api/v1/docs"


def policy_text(policy: dict[str, str]) -> str:
    return "; ".join(f"{name} {value}" for name, value in policy.items())


PAGE_CSP, DOCS_CSP = policy_text(_PAGE_POLICY), policy_text(_DOCS_POLICY)


def _add_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        docs = request.path == DOCS_PATH
        response.headers.setdefault("Content-Security-Policy", DOCS_CSP if docs else PAGE_CSP)
        # For browsers that predate frame-ancestors.
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def init_app(app: Flask) -> None:
    app.after_request(_add_headers)
