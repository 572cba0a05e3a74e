"""API tokens: created by `automl tokens create`, stored only as SHA-256 hashes."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from automl_server.db.models import ApiToken, utcnow

TOKEN_PREFIX = "aml_"


@dataclass(frozen=True)
class CreatedToken:
    id: str
    name: str
    secret: str  # shown once; only its hash is stored


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, name: str) -> CreatedToken:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(secret), prefix=secret[:10])
    session.add(row)
    session.flush()
    return CreatedToken(id=row.id, name=name, secret=secret)


def verify_token(session: Session, secret: str) -> ApiToken | None:
    """The live token row for ``secret`` (and marks it used), or None."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = utcnow()
    return row
