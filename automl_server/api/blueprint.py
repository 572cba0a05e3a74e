"""The API's blueprint and route registry, apart from the package so that the
resource modules import them without importing each other through it."""
from __future__ import annotations

from flask import Blueprint

from automl_server.api.openapi import ApiRegistry

API_PREFIX = "/api/v1"
api_blueprint = Blueprint("api", __name__, url_prefix=API_PREFIX)
registry = ApiRegistry(API_PREFIX)
