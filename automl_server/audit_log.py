"""The audit log: who used which token for what, and every change to the device farm.

Recorded (table ``audit_events``, read with ``GET /api/v1/audit`` or
``automl audit-log``, admin only):

- ``token-use``: every /api/v1 request that presented an API token (header or
  the web login's session), with the token's name and prefix, method, path,
  status and client address, refused ones included (401 unknown or revoked
  token, 403 missing scope, 429 throttled). Requests without a token (local
  mode, health, the spec and docs) and the web pages and static files are not
  recorded.
- ``device``: registration (``register`` of a new device, ``claim`` of one
  registered before agent tokens, ``re-register`` by its agent),
  ``register-refused`` (another agent's registration, 409),
  ``heartbeat-refused`` (403) and ``retire``, in every auth mode.

A failure to write the log (database down) is logged and does not fail the
request it describes. Rows are kept until deleted by hand (no retention yet).
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from automl_server.db.engine import Database
from automl_server.db.models import AuditEvent

log = logging.getLogger("automl.audit")

TOKEN_USE = "token-use"
DEVICE = "device"


def record(session: Session, kind: str, action: str, **fields: Any) -> None:
    """Add one audit row in ``session`` (committed with the change it describes)."""
    session.add(AuditEvent(kind=kind, action=action, **fields))


def record_apart(db: Database, kind: str, action: str, **fields: Any) -> None:
    """Write one audit row in its own transaction (for requests that were refused,
    whose own transaction rolls back); never raises."""
    try:
        with db.session() as session:
            record(session, kind, action, **fields)
    except Exception:  # noqa: BLE001 - the log must not turn an answer into a 500
        log.warning("audit row not written: %s %s %s", kind, action, fields, exc_info=True)
