"""Database access: engine and sessions, typed models, migrations."""
from __future__ import annotations

from automl_server.db.engine import Database, StorageError, get_database
from automl_server.db.models import (
    ApiToken,
    Artifact,
    Base,
    Dataset,
    Device,
    DeviceRuntime,
    Job,
    JobEvent,
    JobState,
)

__all__ = [
    "ApiToken", "Artifact", "Base", "Database", "Dataset", "Device", "DeviceRuntime",
    "Job", "JobEvent", "JobState", "StorageError", "get_database",
]
