"""One settings object, read once from ``AUTOML_*`` environment variables.

Every field has an embedded default that works on one machine with nothing
else running: a SQLite database in WAL mode, Celery on its SQLAlchemy
transport over a second SQLite file, artifacts under ``./data``. At scale the
same variables point at PostgreSQL and Redis/RabbitMQ.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "AUTOML_"


class SettingsError(ValueError):
    """An ``AUTOML_*`` variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    # Where datasets, artifacts, the SQLite files and the secret key live.
    data_dir: Path = PROJECT_ROOT / "data"
    # SQLAlchemy URL of the service database; empty means <data_dir>/automl.sqlite.
    database_url: str = ""
    # Celery broker; empty means the SQLAlchemy transport on <data_dir>/broker.sqlite.
    broker_url: str = ""
    # Celery result backend; empty means <data_dir>/celery-results.sqlite.
    result_backend: str = ""
    # Largest accepted upload, in bytes (the file itself, before unpacking).
    max_upload_bytes: int = 200 * 1024 * 1024
    # Largest sum of member sizes inside an uploaded archive (zip-bomb guard).
    max_uncompressed_bytes: int = 2 * 1024**3
    # Most members an uploaded archive may hold (zip-bomb guard).
    max_archive_entries: int = 200_000
    # Flask secret key; empty means a random key persisted in <data_dir>/secret_key.
    secret_key: str = ""
    # Address and port `automl serve` binds to.
    host: str = "127.0.0.1"
    port: int = 8000
    # "auto": tokens required unless bound to a loopback address; "always"; "never".
    auth_mode: str = "auto"
    # A device is offline once this many seconds pass without a heartbeat.
    heartbeat_timeout_s: float = 30.0
    # How often device agents send a heartbeat.
    heartbeat_interval_s: float = 5.0
    # Name of the local CPU device that `automl serve` registers and runs an agent for.
    local_device_name: str = "local-cpu"
    # Worker processes of the embedded Celery worker.
    worker_concurrency: int = 2
    # Public URL agents and CLI use to reach the server.
    server_url: str = ""
    # Attempts in total to deliver one job webhook before giving up.
    webhook_max_attempts: int = 8
    # Wait before the first webhook retry, in seconds; doubles after each failed attempt.
    webhook_backoff_s: float = 2.0
    # Threads of the WSGI server (waitress); 0 means 8 per core, at most 64. An open
    # event stream holds one thread.
    server_threads: int = 0
    # Connections the WSGI server accepts at once; more wait in the listen backlog.
    server_connection_limit: int = 200
    # More names (comma-separated) a request's Host header may carry when no token is required
    # (besides localhost, 127.0.0.1, [::1], the bind address, the server URL's host and the
    # hostname); "*" allows any (no DNS-rebinding check). See automl_server/host_check.py.
    allowed_hosts: str = ""
    # Allow webhooks to loopback, link-local and private addresses (off: no server-side request forgery).
    webhook_allow_private: bool = False
    # Seconds each whole-network measurement spans on a device (calibration, verification,
    # `automl latency measure`): its rounds average over the machine's drift (at most 3600).
    network_measure_s: float = 2.0
    # How many times a job times each network it delivers, fits or compares (verify, fit,
    # baselines; 1-9), each a measurement of its own (a new session of the runtime): the
    # job keeps the median. Two timings of one file on a shared CPU differ by up to 15%
    # (a session's memory placement, the neighbours' load), more than rounds inside one
    # timing average away (jobs/deploy.py: record_verification).
    network_timings: int = 3
    # How many times a device retakes a measurement that came out noisy (contention: the
    # yardstick moved, a high CV, its core shared) before recording it as unreliable (0-5).
    measure_retakes: int = 2
    # How often `automl serve` looks for job stages that were lost (a worker that died, a
    # Redis broker that came back empty) and sends them again, in seconds.
    recovery_sweep_s: float = 30.0
    # A running stage's process renews its lease with a heartbeat every third of this
    # (jobs/lease.py); a lease not renewed for this many seconds means
    # its worker is gone, and the recovery sweep sends the stage again (from its checkpoint).
    stage_lease_s: float = 120.0

    # -- derived values -------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'automl.sqlite'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"

    @property
    def resolved_result_backend(self) -> str:
        return self.result_backend or f"db+sqlite:///{self.data_dir / 'celery-results.sqlite'}"

    @property
    def resolved_server_url(self) -> str:
        if self.server_url:
            return self.server_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def uploads_tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def auth_required(self) -> bool:
        if self.auth_mode == "always":
            return True
        if self.auth_mode == "never":
            return False
        return not _is_loopback(self.host)

    def resolved_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        key_file = self.data_dir / "secret_key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_hex(32))
            key_file.chmod(0o600)
        return key_file.read_text().strip()

    def ensure_dirs(self) -> None:
        for directory in (self.data_dir, self.datasets_dir, self.artifacts_dir, self.uploads_tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)


_AUTH_MODES = ("auto", "always", "never")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _convert(name: str, raw: str, default: object) -> object:
    env_name = ENV_PREFIX + name.upper()
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{env_name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")
    if isinstance(default, int):
        try:
            integer = int(raw)
        except ValueError:
            raise SettingsError(f"{env_name}={raw!r} is not an integer") from None
        if integer < 0:
            raise SettingsError(f"{env_name}={raw!r} must be >= 0")
        return integer
    if isinstance(default, float):
        try:
            number = float(raw)
        except ValueError:
            raise SettingsError(f"{env_name}={raw!r} is not a number") from None
        if number <= 0:
            raise SettingsError(f"{env_name}={raw!r} must be > 0")
        return number
    if isinstance(default, Path):
        return Path(raw).expanduser().resolve()
    return raw


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from ``AUTOML_<FIELD>`` variables, then explicit overrides."""
    environ = os.environ if environ is None else environ
    # Any: each field has its own type, which _convert derived from its default.
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _convert(f.name, raw, f.default)
    values.update(overrides)
    settings = replace(Settings(), **values)
    if settings.network_measure_s > 3600:
        raise SettingsError(f"AUTOML_NETWORK_MEASURE_S={settings.network_measure_s!r} must be at most 3600 seconds")
    if settings.stage_lease_s < 5:
        raise SettingsError(f"AUTOML_STAGE_LEASE_S={settings.stage_lease_s!r} must be at least 5 seconds: a shorter "
                            "lease runs out between two renewals of a live stage")
    if not 1 <= settings.network_timings <= 9:
        raise SettingsError(f"AUTOML_NETWORK_TIMINGS={settings.network_timings!r} must be an integer from 1 to 9")
    if not 0 <= settings.measure_retakes <= 5:
        raise SettingsError(f"AUTOML_MEASURE_RETAKES={settings.measure_retakes!r} must be an integer from 0 to 5")
    if settings.auth_mode not in _AUTH_MODES:
        raise SettingsError(f"AUTOML_AUTH_MODE={settings.auth_mode!r}; accepted: {', '.join(_AUTH_MODES)}")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return settings_from_env()


def settings_of(app: Any) -> Settings:
    """The settings a Celery app was made with (``make_celery`` attaches them),
    else the process's own: how a task finds its database and data directory."""
    found = getattr(app, "automl_settings", None)
    return found if isinstance(found, Settings) else get_settings()
