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

Stated choice, for load (a row in its own transaction per request doubled the
database work of every request): successful reads (GET or HEAD answered
below 400) are coalesced. The first of its kind (same token, method, path,
status and address) in a window of COALESCE_WINDOW_S seconds gets its own
row at once; the identical ones after it in that window are counted in this
process and written as one row (action ``requests``, detail ``N more
identical requests from T0 to T1``, created at T1) when the window is over and
the next token request comes, when the audit log is read (`flush_coalesced`)
and when the process exits. Every write (POST, PUT, PATCH, DELETE) and every
refusal still gets its own row. A process killed without its exit handlers
loses the counts of its open windows (at most a minute of repeated reads).

A failure to write the log (database down) is logged and does not fail the
request it describes. Rows are kept until deleted by hand (no retention yet).
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from automl_server.db.engine import Database
from automl_server.db.models import AuditEvent, utcnow

log = logging.getLogger("automl.audit")

TOKEN_USE = "token-use"
DEVICE = "device"
COALESCED = "requests"
COALESCE_WINDOW_S = 60.0
_READS = ("GET", "HEAD")


def record(session: Session, kind: str, action: str, **fields: Any) -> None:
    """Add one audit row in ``session`` (committed with the change it describes)."""
    session.add(AuditEvent(kind=kind, action=action, **fields))


def record_apart(db: Database, kind: str, action: str, **fields: Any) -> None:
    """Write one audit row in its own transaction (for requests that were refused,
    whose own transaction rolls back); never raises."""
    record_rows(db, [(kind, action, fields)])


def record_rows(db: Database, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Write audit rows in one transaction of their own; never raises."""
    if not rows:
        return
    try:
        with db.session() as session:
            for kind, action, fields in rows:
                record(session, kind, action, **fields)
    except Exception:  # noqa: BLE001 - the log must not turn an answer into a 500
        log.warning("audit rows not written: %s", rows, exc_info=True)


@dataclass
class _Window:
    db: Database
    opened: float  # monotonic
    count: int = 0  # identical requests after the first, not yet written
    first_at: datetime | None = None
    last_at: datetime | None = None


_Key = tuple[Any, ...]
_windows: dict[_Key, _Window] = {}
_lock = threading.Lock()


def _coalesced_row(key: _Key, window: _Window) -> tuple[Database, tuple[str, str, dict[str, Any]]]:
    token_name, token_prefix, method, path, status, address = key[1:]
    assert window.first_at is not None and window.last_at is not None
    detail = (f"{window.count} more identical requests from {window.first_at.isoformat()} "
              f"to {window.last_at.isoformat()} (successful reads are coalesced per minute)")
    return window.db, (TOKEN_USE, COALESCED, dict(
        token_name=token_name, token_prefix=token_prefix, method=method, path=path, status=status,
        address=address, detail=detail, created_at=window.last_at))


def _take(db: Database | None, *, everything: bool) -> list[tuple[Database, tuple[str, str, dict[str, Any]]]]:
    """Rows for the counts to write now (windows over, or all of ``db``'s); the caller holds _lock."""
    now, due = time.monotonic(), []
    for key, window in list(_windows.items()):
        over = now - window.opened >= COALESCE_WINDOW_S
        if (everything and (db is None or window.db is db)) or over:
            if window.count:
                due.append(_coalesced_row(key, window))
                window.count, window.first_at = 0, None
            if over:
                del _windows[key]
    return due


def _write(due: list[tuple[Database, tuple[str, str, dict[str, Any]]]]) -> None:
    for db in {id(d): d for d, _ in due}.values():
        record_rows(db, [row for d, row in due if d is db])


def record_token_use(db: Database, *, token_name: str | None, token_prefix: str, method: str, path: str,
                     status: int, address: str | None) -> None:
    """The ``token-use`` row of one request, or its count (see the module's docstring); never raises."""
    fields = dict(token_name=token_name, token_prefix=token_prefix, method=method, path=path, status=status,
                  address=address)
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with _lock:
        due = _take(None, everything=False)
        key = (id(db), token_name, token_prefix, method, path, status, address)
        window = _windows.get(key) if method in _READS and status < 400 else None
        if window is not None:
            now = utcnow()
            window.count += 1
            window.first_at = window.first_at or now
            window.last_at = now
        else:
            rows.append((TOKEN_USE, "request", fields))
            if method in _READS and status < 400:
                _windows[key] = _Window(db=db, opened=time.monotonic())
    _write(due)
    record_rows(db, rows)


def flush_coalesced(db: Database | None = None) -> None:
    """Write every count not yet written (of ``db``, or of all databases); never raises."""
    with _lock:
        due = _take(db, everything=True)
    _write(due)


atexit.register(flush_coalesced)


def forget_windows() -> None:
    """Drop the open windows and their counts unwritten (tests: between two tests' databases)."""
    with _lock:
        _windows.clear()
