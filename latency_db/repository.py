"""The latency database's repository: the only code that touches its rows.

Every public method is one short transaction: it commits on success, rolls
back on any error, and turns ``SQLAlchemyError`` into ``LatencyStoreError``.
Callers get frozen records (``records.py``), never ORM rows. Measurements are
appended, never overwritten; "the" latency of an op on a target is its latest
successful measurement, so a failed re-measurement never hides a good value.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from latency_db.errors import LatencyStoreError
from latency_db.keys import parse_key
from latency_db.lut_yaml import read_lut_yaml, write_lut_yaml
from latency_db.models import LatencyMeasurement, LatencyNetworkMeasurement, LatencyOp, LatencyTarget, utcnow
from latency_db.queries import _IN_CHUNK, _op_id, _op_ids, _paced, _require_target, _set_pace, _stored_pace
from latency_db.records import (
    MeasurementRecord,
    MeasurementStats,
    NetworkRecord,
    TargetRecord,
    TargetSpec,
    check_agent_version,
    check_float,
    check_int,
    check_json_dict,
    reliability,
)
from latency_db.rows import measurement_record, measurement_row, network_record, target_record

T = TypeVar("T")



class LatencyRepository:
    """Targets, per-op measurements and end-to-end network measurements.

    ``session_factory`` is a SQLAlchemy ``sessionmaker`` bound to a database
    whose schema holds ``LatencyBase.metadata`` (``automl db upgrade``).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    # --- targets -------------------------------------------------------

    def target(self, spec: TargetSpec) -> TargetRecord:
        """The stored target for spec, created on first use (safe when two agents race)."""
        if not isinstance(spec, TargetSpec):
            raise TypeError(f"target() takes a TargetSpec, got {type(spec).__name__}")

        def get_or_create(session: Session) -> TargetRecord:
            row = session.scalars(
                select(LatencyTarget).where(
                    LatencyTarget.device_name == spec.device_name,
                    LatencyTarget.backend == spec.backend,
                    LatencyTarget.backend_version == spec.backend_version,
                    LatencyTarget.threads == spec.threads,
                    LatencyTarget.dtype == spec.dtype,
                    LatencyTarget.batch == spec.batch,
                )
            ).one_or_none()
            if row is None:
                row = LatencyTarget(
                    device_name=spec.device_name,
                    backend=spec.backend,
                    backend_version=spec.backend_version,
                    threads=spec.threads,
                    dtype=spec.dtype,
                    batch=spec.batch,
                )
                session.add(row)
                session.flush()
            return target_record(row)

        return self._run(f"get or create the target {spec.device_name!r}/{spec.backend!r}", get_or_create)

    def find_target(self, device_name: str, backend: str | None = None) -> list[TargetRecord]:
        """The targets of a device (of one backend when given), oldest first."""
        query = select(LatencyTarget).where(LatencyTarget.device_name == device_name)
        if backend is not None:
            query = query.where(LatencyTarget.backend == backend)
        query = query.order_by(LatencyTarget.id)
        return self._run(
            f"find the targets of device {device_name!r}",
            lambda session: [target_record(row) for row in session.scalars(query)],
        )

    # --- pace -------------------------------------------------------------

    def pace_ms(self, target: TargetRecord) -> float | None:
        """The yardstick time target's latencies are given at (latency_db.pace); None before the first."""

        def read(session: Session) -> float | None:
            _require_target(session, target)
            return _stored_pace(session, target.id)

        return self._run(f"read the pace of target {target.id}", read)

    def at_target_pace(self, target: TargetRecord, stats: MeasurementStats) -> MeasurementStats:
        """stats rescaled to target's pace, which the first stats with a yardstick time set."""
        if not isinstance(stats, MeasurementStats):
            raise TypeError(f"at_target_pace() takes MeasurementStats, got {type(stats).__name__}")

        def scale(session: Session) -> MeasurementStats:
            _require_target(session, target)
            return _paced(session, target.id, stats)

        return self._run(f"pace a measurement on target {target.id}", scale)

    # --- op measurements ----------------------------------------------

    def record(
        self,
        target: TargetRecord,
        key: str,
        stats: MeasurementStats,
        agent_version: str,
        measured_at: datetime | None = None,
    ) -> MeasurementRecord:
        """Store a successful measurement of key on target; it becomes the latest value.

        Stats that carry a yardstick time are stored at the target's pace
        (latency_db.pace), the first such stats setting it.
        """
        op_key = parse_key(key)
        if not isinstance(stats, MeasurementStats):
            raise TypeError(f"record() takes MeasurementStats, got {type(stats).__name__}")
        check_agent_version(agent_version)
        when = measured_at or utcnow()

        def add(session: Session) -> MeasurementRecord:
            _require_target(session, target)
            paced = _paced(session, target.id, stats)
            row = measurement_row(target.id, _op_id(session, op_key.key, op_key.kind), paced, agent_version, when)
            session.add(row)
            session.flush()
            return measurement_record(op_key.key, row)

        return self._run(f"record {key!r} on target {target.id}", add)

    def record_failure(
        self,
        target: TargetRecord,
        key: str,
        error: str,
        agent_version: str,
        measured_at: datetime | None = None,
    ) -> MeasurementRecord:
        """Store a failed measurement (kept for the history; earlier good values stay current)."""
        op_key = parse_key(key)
        if not isinstance(error, str) or not error.strip():
            raise ValueError(f"error must be a non-empty message, got {error!r}")
        check_agent_version(agent_version)
        when = measured_at or utcnow()

        def add(session: Session) -> MeasurementRecord:
            _require_target(session, target)
            row = LatencyMeasurement(
                target_id=target.id,
                op_id=_op_id(session, op_key.key, op_key.kind),
                measured_at=when,
                agent_version=agent_version,
                method={},
                error=error,
            )
            session.add(row)
            session.flush()
            return measurement_record(op_key.key, row)

        return self._run(f"record the failure of {key!r} on target {target.id}", add)

    def latest(self, target: TargetRecord, key: str) -> MeasurementRecord | None:
        """The latest successful measurement of key on target, or None."""
        canonical = parse_key(key).key
        query = (
            select(LatencyMeasurement)
            .join(LatencyOp)
            .where(
                LatencyMeasurement.target_id == target.id,
                LatencyOp.key == canonical,
                LatencyMeasurement.error.is_(None),
            )
            .order_by(LatencyMeasurement.measured_at.desc(), LatencyMeasurement.id.desc())
            .limit(1)
        )

        def read(session: Session) -> MeasurementRecord | None:
            row = session.scalars(query).first()
            return None if row is None else measurement_record(canonical, row)

        return self._run(f"read {key!r} on target {target.id}", read)

    def history(self, target: TargetRecord, key: str) -> list[MeasurementRecord]:
        """Every measurement of key on target, failures included, oldest first."""
        canonical = parse_key(key).key
        query = (
            select(LatencyMeasurement)
            .join(LatencyOp)
            .where(LatencyMeasurement.target_id == target.id, LatencyOp.key == canonical)
            .order_by(LatencyMeasurement.measured_at, LatencyMeasurement.id)
        )
        return self._run(
            f"read the history of {key!r} on target {target.id}",
            lambda session: [measurement_record(canonical, row) for row in session.scalars(query)],
        )

    def lut(self, target: TargetRecord) -> dict[str, MeasurementRecord]:
        """The latest successful measurement of every key measured on target, by key;
        a measurement flagged unreliable only when the key has no other."""
        flagged_last = case((LatencyMeasurement.reliable.is_(False), 1), else_=0)
        rank = (
            func.row_number()
            .over(
                partition_by=LatencyMeasurement.op_id,
                order_by=(flagged_last, LatencyMeasurement.measured_at.desc(), LatencyMeasurement.id.desc()),
            )
            .label("rank")
        )
        ranked = (
            select(LatencyMeasurement.id, rank)
            .where(LatencyMeasurement.target_id == target.id, LatencyMeasurement.error.is_(None))
            .subquery()
        )
        query = (
            select(LatencyOp.key, LatencyMeasurement)
            .join(ranked, ranked.c.id == LatencyMeasurement.id)
            .join(LatencyOp, LatencyOp.id == LatencyMeasurement.op_id)
            .where(ranked.c.rank == 1)
            .order_by(LatencyOp.key)
        )
        return self._run(
            f"read the latency table of target {target.id}",
            lambda session: {key: measurement_record(key, row) for key, row in session.execute(query)},
        )

    def lut_ms(self, target: TargetRecord) -> dict[str, float]:
        """key -> median ms of the latest successful measurements: the input of ``LatencyPredictor``."""
        return {key: record.stats.median_ms for key, record in self.lut(target).items() if record.stats}

    def missing(self, target: TargetRecord, keys: Iterable[str]) -> list[str]:
        """The keys with no successful measurement on target, in the given order, without repeats.

        Every key is checked first (InvalidKeyError), so a bad key never yields a partial answer.
        """
        wanted = list(dict.fromkeys(parse_key(key).key for key in keys))

        def read(session: Session) -> list[str]:
            measured: set[str] = set()
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                measured.update(
                    session.scalars(
                        select(LatencyOp.key)
                        .join(LatencyMeasurement)
                        .where(
                            LatencyMeasurement.target_id == target.id,
                            LatencyMeasurement.error.is_(None),
                            LatencyOp.key.in_(chunk),
                        )
                        .distinct()
                    )
                )
            return [key for key in wanted if key not in measured]

        return self._run(f"list the unmeasured keys of target {target.id}", read)

    def failures(self, target: TargetRecord, keys: Iterable[str]) -> dict[str, str]:
        """key -> latest error, for the given keys that failed and were never measured successfully.

        One query per chunk of keys, so a caller polling many keys does not ask once per key.
        """
        wanted = list(dict.fromkeys(parse_key(key).key for key in keys))

        def read(session: Session) -> dict[str, str]:
            errors: dict[str, str] = {}
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                rows = session.execute(
                    select(LatencyOp.key, LatencyMeasurement.error)
                    .join(LatencyMeasurement)
                    .where(LatencyMeasurement.target_id == target.id, LatencyOp.key.in_(chunk))
                    .order_by(LatencyMeasurement.measured_at, LatencyMeasurement.id)
                )
                latest_ok: set[str] = set()
                for key, error in rows:  # oldest first: the last row of a key is its latest
                    if error is None:
                        latest_ok.add(key)
                        errors.pop(key, None)
                    elif key not in latest_ok:
                        errors[key] = error
            return errors

        return self._run(f"list the failed keys of target {target.id}", read)

    # --- whole networks -------------------------------------------------

    def record_network(
        self,
        target: TargetRecord,
        arch: dict[str, Any],
        measured_ms: float,
        lut_sum_ms: float,
        agent_version: str,
        *,
        n_ops: int,
        measured_at: datetime | None = None,
        yardstick_ms: float | None = None,
        cv: float | None = None,
        method: dict[str, Any] | None = None,
    ) -> NetworkRecord:
        """Store an end-to-end measurement of a network and the LUT sum over its n_ops ops.

        With ``yardstick_ms`` (the yardstick's time beside the measurement),
        measured_ms is stored at the target's pace, as op measurements are.
        ``cv`` and ``method`` are its evidence (the agent's method, with
        ``reliable`` and ``unreliable_reason`` when the agent assessed it).
        """
        evidence = None if method is None else check_json_dict("method", method)
        spread = None if cv is None else check_float("cv", cv, minimum=0.0)
        reliable, reason = reliability(evidence or {})
        arch_json = check_json_dict("arch", arch)
        measured = check_float("measured_ms", measured_ms, minimum=0.0)
        stick = None if yardstick_ms is None else check_float("yardstick_ms", yardstick_ms, minimum=0.0)
        if stick == 0.0:
            raise ValueError("yardstick_ms must be > 0 (or None when no yardstick ran)")
        lut_sum = check_float("lut_sum_ms", lut_sum_ms, minimum=0.0)
        check_int("n_ops", n_ops, minimum=1)
        check_agent_version(agent_version)
        when = measured_at or utcnow()

        def add(session: Session) -> NetworkRecord:
            _require_target(session, target)
            factor = 1.0 if stick is None else _set_pace(session, target.id, stick) / stick
            row = LatencyNetworkMeasurement(
                target_id=target.id,
                arch=arch_json,
                measured_ms=measured * factor,
                lut_sum_ms=lut_sum,
                n_ops=n_ops,
                measured_at=when,
                agent_version=agent_version,
                cv=spread,
                method=evidence,
                reliable=reliable,
                unreliable_reason=reason,
            )
            session.add(row)
            session.flush()
            return network_record(row)

        return self._run(f"record a network measurement on target {target.id}", add)

    def networks(self, target: TargetRecord, *, usable_only: bool = False) -> list[NetworkRecord]:
        """The end-to-end network measurements of target, oldest first; with
        ``usable_only``, without those flagged unreliable (what may calibrate)."""
        query = (
            select(LatencyNetworkMeasurement)
            .where(LatencyNetworkMeasurement.target_id == target.id)
            .order_by(LatencyNetworkMeasurement.measured_at, LatencyNetworkMeasurement.id)
        )
        if usable_only:
            query = query.where(LatencyNetworkMeasurement.reliable.is_not(False))
        return self._run(
            f"read the network measurements of target {target.id}",
            lambda session: [network_record(row) for row in session.scalars(query)],
        )

    # --- YAML tables ------------------------------------------------------

    def export_yaml(self, target: TargetRecord, path: str | os.PathLike[str]) -> int:
        """Write target's latency table (latest successful values) in the reference format; returns the count."""
        table = {key: record.stats for key, record in self.lut(target).items() if record.stats}
        write_lut_yaml(path, table)
        return len(table)

    def import_yaml(
        self, target: TargetRecord, path: str | os.PathLike[str], agent_version: str = "imported"
    ) -> int:
        """Store every entry of a reference-format table as a measurement on target; returns the count.

        All or nothing: the whole file is checked before anything is stored
        (LutFormatError naming the bad entry), and all entries go in one transaction.
        """
        check_agent_version(agent_version)
        entries = read_lut_yaml(path)
        when = utcnow()

        def add(session: Session) -> int:
            _require_target(session, target)
            op_ids = _op_ids(session, {key: parse_key(key).kind for key in entries})
            session.add_all(
                measurement_row(target.id, op_ids[key], stats, agent_version, when) for key, stats in entries.items()
            )
            session.flush()
            return len(entries)

        return self._run(f"import {os.fspath(path)!r} into target {target.id}", add)

    # --- sessions ---------------------------------------------------------

    def _run(self, action: str, work: Callable[[Session], T]) -> T:
        """work(session) in one transaction, retried once if a concurrent writer created the same row."""
        try:
            with self._session(action) as session:
                return work(session)
        except LatencyStoreError as exc:
            # Two agents creating the same target or op at once: one insert loses on the
            # unique constraint; the retry finds the winner's row.
            if not isinstance(exc.__cause__, IntegrityError):
                raise
        with self._session(action) as session:
            return work(session)

    @contextmanager
    def _session(self, action: str) -> Iterator[Session]:
        session = self._session_factory()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            hint = ""
            if isinstance(exc, (OperationalError, ProgrammingError)):
                hint = " (if the latency tables are missing or stale, run `automl db upgrade`)"
            # A DBAPIError's own text repeats the SQL and its parameters; the driver's message is enough.
            reason = getattr(exc, "orig", None) or exc
            raise LatencyStoreError(
                f"latency database: could not {action}: {type(exc).__name__}: {reason}{hint}"
            ) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
