"""The Flask application factory: REST API under /api/v1 and the web pages."""
from __future__ import annotations

from celery import Celery
from flask import Flask

from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.migrate import require_current_schema
from automl_server.api import init_app as init_api
from automl_server.host_check import init_app as init_host_check
from automl_server.security_headers import init_app as init_security_headers
from automl_server.service_state import ServiceState, state  # noqa: F401  (state: re-exported)
from automl_server.settings import PROJECT_ROOT, Settings, get_settings
from automl_server.web_pages import init_app as init_pages


def create_app(settings: Settings | None = None, *, celery: Celery | None = None) -> Flask:
    settings = settings or get_settings()
    settings.ensure_dirs()
    db = get_database(settings.resolved_database_url)
    require_current_schema(db)
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "web" / "templates"),
        static_folder=str(PROJECT_ROOT / "web" / "static"),
    )
    app.config.update(
        SECRET_KEY=settings.resolved_secret_key(),
        # Multipart overhead on top of the file itself; the exact limit on the
        # file is checked again after it is received.
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.extensions["automl"] = ServiceState(settings, db, celery or make_celery(settings))

    init_host_check(app, settings)  # first: a foreign Host gets nothing else
    init_api(app)
    init_pages(app)
    init_security_headers(app)
    return app

