"""REST API under /api/v1 for MLOps pipelines and the web UI."""
from __future__ import annotations

from flask import Flask

from automl_server.api.blueprint import API_PREFIX, api_blueprint, registry

# Importing the resource modules declares their routes on the blueprint.
from automl_server.api import comparisons, datasets, devices, jobs, meta, pipelines, ui  # noqa: E402,F401
from automl_server.api import audit, schedules  # noqa: E402,F401
from automl_server.api import auth as _auth  # noqa: E402
from automl_server.api import problems  # noqa: E402


def init_app(app: Flask) -> None:
    problems.init_app(app)
    _auth.init_app(api_blueprint)
    app.register_blueprint(api_blueprint)
