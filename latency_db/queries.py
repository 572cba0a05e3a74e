"""The statements the repository composes inside its transactions: a target
that must exist, a target's pace (set once, first writer wins), op ids
(inserted when new). Each takes the open session; none commits."""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from latency_db.errors import LatencyStoreError
from latency_db.models import LatencyOp, LatencyTarget
from latency_db.pace import at_pace, yardstick_ms
from latency_db.records import MeasurementStats, TargetRecord

# Keys per IN (...) query: far below SQLite's bound-parameter limit.
_IN_CHUNK = 500


def _require_target(session: Session, target: TargetRecord) -> None:
    if not isinstance(target, TargetRecord):
        raise TypeError(f"expected a TargetRecord from LatencyRepository.target(), got {type(target).__name__}")
    if session.get(LatencyTarget, target.id) is None:
        raise LatencyStoreError(f"latency database: target {target.id} ({target.describe()}) does not exist")


def _stored_pace(session: Session, target_id: int) -> float | None:
    # A column query reads the database, not a row object the session may hold from before.
    return session.scalar(select(LatencyTarget.pace_ms).where(LatencyTarget.id == target_id))


def _set_pace(session: Session, target_id: int, offered_ms: float) -> float:
    """The target's pace, set to offered_ms if it has none. The conditional
    UPDATE makes the first writer win when two agents race: on PostgreSQL the
    second waits for the first's row lock, then finds pace_ms no longer NULL."""
    session.execute(
        update(LatencyTarget)
        .where(LatencyTarget.id == target_id, LatencyTarget.pace_ms.is_(None))
        .values(pace_ms=offered_ms)
        .execution_options(synchronize_session=False)
    )
    pace = _stored_pace(session, target_id)
    assert pace is not None  # set just now, or before
    return pace


def _paced(session: Session, target_id: int, stats: MeasurementStats) -> MeasurementStats:
    offered = yardstick_ms(stats)
    return stats if offered is None else at_pace(stats, _set_pace(session, target_id, offered))


def _op_id(session: Session, key: str, kind: str) -> int:
    return _op_ids(session, {key: kind})[key]


def _op_ids(session: Session, kinds_by_key: dict[str, str]) -> dict[str, int]:
    """The ids of the ops with these keys, inserting the ones not stored yet."""
    keys = list(kinds_by_key)
    ids: dict[str, int] = {}
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        rows = session.execute(select(LatencyOp.key, LatencyOp.id).where(LatencyOp.key.in_(chunk)))
        ids.update((key, op_id) for key, op_id in rows)
    new_ops = [LatencyOp(key=key, kind=kinds_by_key[key]) for key in keys if key not in ids]
    if new_ops:
        session.add_all(new_ops)
        session.flush()
        ids.update((op.key, op.id) for op in new_ops)
    return ids
