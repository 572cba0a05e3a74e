"""What every request needs (settings, the database, the Celery app), kept on
the Flask app by ``app.create_app`` and found by views through ``state()``.

A module of its own so that views import it at the top, and the app factory
(which imports the views to register them) is never imported by a view.
"""
from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from automl_server.db.engine import Database
from automl_server.settings import Settings


@dataclass
class ServiceState:
    """What every request needs: settings, the database and the Celery app."""

    settings: Settings
    db: Database
    celery: Celery


def state() -> ServiceState:
    found: ServiceState = current_app.extensions["automl"]
    return found
