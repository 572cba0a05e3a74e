"""Opaque page tokens for keyset pagination (stable under concurrent inserts)."""
from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from automl_server.api.problems import ProblemError


def encode_token(position: list[Any]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def bad_token(token: str) -> ProblemError:
    return ProblemError(
        400, "Bad page token",
        f"page_token {token!r} was not issued by this API; pass next_page_token from the previous page, "
        "or omit it for the first page",
        field="page_token", slug="bad-page-token",
    )


def decode_token(token: str, length: int) -> list[Any]:
    """The position a token stands for; a problem if it is not one we issued."""
    try:
        padded = token + "=" * (-len(token) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(position, list) or len(position) != length:
            raise ValueError("wrong shape")
        return position
    except (ValueError, UnicodeDecodeError):
        raise bad_token(token) from None


def encode_time_position(created_at: datetime, row_id: str) -> str:
    return encode_token([created_at.isoformat(), row_id])


def decode_time_position(token: str) -> tuple[datetime, str]:
    """(created_at, id) of the last row of the previous page, newest-first order."""
    created, row_id = decode_token(token, 2)
    try:
        return datetime.fromisoformat(created), str(row_id)
    except (TypeError, ValueError):
        raise bad_token(token) from None


class _TimeOrdered(Protocol):
    """An ORM row that pages by (created_at, id)."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> str: ...


Row = TypeVar("Row", bound=_TimeOrdered)


def _newest_first(stmt: Select[Any], model: Any, page_size: int, page_token: str | None) -> Select[Any]:
    stmt = stmt.order_by(model.created_at.desc(), model.id.desc())
    if page_token:
        created_at, last_id = decode_time_position(page_token)
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(created_at, last_id))
    return stmt.limit(page_size + 1)


def _cut(rows: list[Any], page_size: int) -> tuple[list[Any], str | None]:
    if len(rows) <= page_size:
        return rows, None
    rows = rows[:page_size]
    return rows, encode_time_position(rows[-1].created_at, rows[-1].id)


def newest_first_page(
    session: Session, stmt: Select[Row], model: Any, page_size: int, page_token: str | None
) -> tuple[list[Row], str | None]:
    """One page of ``stmt`` ordered newest first by (created_at, id), and the
    token of the next page (None on the last one)."""
    return _cut(list(session.scalars(_newest_first(stmt, model, page_size, page_token))), page_size)


def newest_first_rows(
    session: Session, stmt: Select[Any], model: Any, page_size: int, page_token: str | None
) -> tuple[list[Any], str | None]:
    """``newest_first_page`` for a select of columns: plain rows (attribute access
    by column name), without the ORM's identity map and change tracking, which
    cost more than the query itself on a page of 50 jobs."""
    # Core execution (the connection, not the ORM session): no ORM compile and row processing.
    return _cut(list(session.connection().execute(_newest_first(stmt, model, page_size, page_token)).all()), page_size)
