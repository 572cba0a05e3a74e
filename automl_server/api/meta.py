"""The API describing itself: health, the OpenAPI document and its docs page."""
from __future__ import annotations

from pathlib import Path

from flask import Response, json, send_from_directory
import swagger_ui

from automl_server import __version__
from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.schemas import Health
from automl_server.service_state import state

# Served from the swagger-ui-py package (Swagger UI 5): no CDN, works offline.
# Swagger UI 4 (swagger-ui-bundle's) cannot render OpenAPI 3.1, which our spec is.
_SWAGGER_DIR = Path(swagger_ui.__file__).parent / "static"

_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AutoML API docs</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/automl-init.js"></script></body></html>
"""
# A file, not an inline script: the page's Content-Security-Policy allows scripts from this server only.
_DOCS_INIT = 'window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'


@registry.operation(api_blueprint, "/health", "GET", scope=None, summary="Service health", tag="meta", responses={200: Health})
def health() -> Health:
    s = state()
    with s.db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    return Health(status="ok", version=__version__, database=s.db.engine.dialect.name,
                  auth_required=s.settings.auth_required)


@api_blueprint.get("/openapi.json")
def openapi_json() -> Response:
    from automl_server.api.auth import PUBLIC_ENDPOINTS

    public = frozenset(endpoint.removeprefix("api.") for endpoint in PUBLIC_ENDPOINTS)
    spec = registry.spec("Hardware-aware AutoML service", __version__,
                         auth_required=state().settings.auth_required, public=public)
    return Response(json.dumps(spec), mimetype="application/json")


@api_blueprint.get("/docs")
def docs() -> Response:
    return Response(_DOCS_PAGE, mimetype="text/html")


@api_blueprint.get("/docs/<path:filename>")
def docs_asset(filename: str) -> Response:
    if filename == "automl-init.js":
        return Response(_DOCS_INIT, mimetype="text/javascript")
    return send_from_directory(_SWAGGER_DIR, filename)
