"""Entry point for `celery -A automl_server.worker worker` (what `automl worker` runs)."""
from __future__ import annotations

from automl_server.celery_app import make_celery
from automl_server.settings import get_settings

celery_app = make_celery(get_settings())
