"""API tokens: created by `automl tokens create`, stored only as SHA-256 hashes.

Each token carries scopes, set when it is created:

- ``read``: every GET of the API (lists, details, events, artifacts, reports);
- ``submit``: upload datasets, submit, cancel and re-run jobs, comparisons and schedules;
- ``admin``: everything, including deleting datasets, retiring devices,
  registering any device and reading the audit log;
- ``agent:NAME``: register device NAME and send its heartbeats (what an agent
  does), nothing else.

A new token gets ``read submit`` unless told otherwise; tokens made before
scopes existed (database revision 0005) keep everything they could do:
``read submit admin``.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from automl_server.db.engine import Database
from automl_server.db.models import ApiToken, utcnow

TOKEN_PREFIX = "aml_"
READ, SUBMIT, ADMIN, AGENT = "read", "submit", "admin", "agent"
SCOPES = (READ, SUBMIT, ADMIN)
DEFAULT_SCOPES = (READ, SUBMIT)
AGENT_SCOPE_PREFIX = "agent:"
# A device name as the API accepts it (jobs/requests.py NAME_PATTERN), after "agent:".
_AGENT_SCOPE = re.compile(r"^agent:[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SCOPES_ACCEPTED = "read, submit, admin or agent:DEVICE"
# A token's last_used_at is written at most this often: a write per request would double
# the database work of every request (bench/bench_api_load.py). `automl tokens list`
# shows when a token was last used to within a minute.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class BadScope(ValueError):
    pass


@dataclass(frozen=True)
class CreatedToken:
    id: str
    name: str
    secret: str  # shown once; only its hash is stored
    scopes: tuple[str, ...]


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def agent_scope(device: str) -> str:
    return AGENT_SCOPE_PREFIX + device


def normalise_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, checked and de-duplicated in a stable order; BadScope names the one refused."""
    found: list[str] = []
    for scope in scopes:
        for part in scope.replace(",", " ").split():
            if part not in SCOPES and not _AGENT_SCOPE.match(part):
                raise BadScope(f"unknown scope {part!r}; accepted: {SCOPES_ACCEPTED}")
            if part not in found:
                found.append(part)
    if not found:
        raise BadScope(f"a token needs at least one scope: {SCOPES_ACCEPTED}")
    return tuple(sorted(found, key=lambda s: (SCOPES.index(s) if s in SCOPES else len(SCOPES), s)))


def token_scopes(token: ApiToken | CheckedToken) -> tuple[str, ...]:
    return tuple(token.scopes.split())


def allows(scopes: Iterable[str], needed: str, device: str | None = None) -> bool:
    """Whether a token with ``scopes`` may do what needs ``needed`` ("agent": the agent of ``device``).
    ``admin`` may do everything; the other scopes are not nested (``submit`` does not imply ``read``)."""
    held = set(scopes)
    if ADMIN in held:
        return True
    if needed == AGENT:
        return device is not None and agent_scope(device) in held
    return needed in held


def create_token(session: Session, name: str, scopes: Iterable[str] = DEFAULT_SCOPES) -> CreatedToken:
    chosen = normalise_scopes(scopes)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(secret), prefix=secret[:10], scopes=" ".join(chosen))
    session.add(row)
    session.flush()
    return CreatedToken(id=row.id, name=name, secret=secret, scopes=chosen)


def verify_token(session: Session, secret: str) -> ApiToken | None:
    """The live token row for ``secret`` (and marks it used, to within
    LAST_USED_RESOLUTION), or None. Read from the database on every request (no
    cache): a token revoked by any process is refused from its next request on."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        row.last_used_at = now
    return row


@dataclass(frozen=True)
class CheckedToken:
    """What a request needs of its token (check_token)."""
    id: str
    name: str
    scopes: str


_CHECK_COLUMNS = select(ApiToken.id, ApiToken.name, ApiToken.scopes, ApiToken.revoked_at, ApiToken.last_used_at)


def check_token(db: Database, secret: str) -> CheckedToken | None:
    """`verify_token` for a request: the lookup in a read-only transaction (no lock on
    SQLite; its columns, not an ORM object), and last_used_at, when it is due, in a
    short write of its own. No cache: a token revoked by any process is refused from
    its next request on."""
    with db.read_session() as session:
        row = session.connection().execute(
            _CHECK_COLUMNS.where(ApiToken.token_hash == hash_token(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        with db.session() as session:
            session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return CheckedToken(id=row.id, name=row.name, scopes=row.scopes)
