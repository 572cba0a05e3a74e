"""Settings: embedded defaults, AUTOML_* overrides, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from automl_server.settings import PROJECT_ROOT, SettingsError, settings_from_env


def test_defaults_need_no_server():
    settings = settings_from_env({})

    assert settings.data_dir == PROJECT_ROOT / "data"
    assert settings.resolved_database_url == f"sqlite:///{PROJECT_ROOT / 'data' / 'automl.sqlite'}"
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    assert settings.resolved_result_backend.startswith("db+sqlite:///")
    assert settings.host == "127.0.0.1" and not settings.auth_required


def test_environment_overrides_defaults(tmp_path):
    settings = settings_from_env({
        "AUTOML_DATA_DIR": str(tmp_path),
        "AUTOML_DATABASE_URL": "postgresql+psycopg://u@db/automl",
        "AUTOML_BROKER_URL": "redis://r:6379/0",
        "AUTOML_MAX_UPLOAD_BYTES": "1024",
        "AUTOML_HEARTBEAT_TIMEOUT_S": "2.5",
        "AUTOML_PORT": "9000",
    })

    assert settings.data_dir == tmp_path
    assert settings.resolved_database_url == "postgresql+psycopg://u@db/automl"
    assert settings.resolved_broker_url == "redis://r:6379/0"
    assert settings.max_upload_bytes == 1024 and settings.heartbeat_timeout_s == 2.5
    assert settings.resolved_server_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("AUTOML_PORT", "eighty", "AUTOML_PORT='eighty' is not an integer"),
    ("AUTOML_MAX_UPLOAD_BYTES", "-5", "must be >= 0"),
    ("AUTOML_HEARTBEAT_TIMEOUT_S", "0", "must be > 0"),
    ("AUTOML_AUTH_MODE", "sometimes", "accepted: auto, always, never"),
    ("AUTOML_NETWORK_MEASURE_S", "0", "must be > 0"),
    ("AUTOML_NETWORK_MEASURE_S", "7200", "must be at most 3600 seconds"),
    ("AUTOML_STAGE_LEASE_S", "2", "AUTOML_STAGE_LEASE_S=2.0 must be at least 5 seconds"),
])
def test_bad_values_are_named(variable, value, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        settings_from_env({variable: value})


def test_secret_key_is_generated_once_and_kept(tmp_path: Path):
    settings = settings_from_env({"AUTOML_DATA_DIR": str(tmp_path)})

    first, second = settings.resolved_secret_key(), settings.resolved_secret_key()

    assert first == second and len(first) == 64
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
