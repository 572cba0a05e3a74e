"""Retiring a device: its row and runtimes go; its jobs keep their records
(``device_name`` stays, ``device_id`` is set to NULL by the foreign key); its
latency tables are kept under an archive name and can be taken back by a
device of the same name that registers with ``reuse_latency``.

Why rename instead of leaving the tables under the device's name: a new
device registered under an old name is usually other hardware (a new phone
on the same bench slot), and mixing its latencies with the old one's would
silently mislead the search. Taking them back is an explicit choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Result, select, update
from sqlalchemy.orm import Session

from automl_server.db.models import Device, Job, JobState, utcnow
from automl_server.jobs import service
from latency_db.models import DEVICE_NAME_LEN, LatencyTarget

# ``@`` is outside the device-name pattern, so no live device can own an archive name.
ARCHIVE_MARK = "@retired-"
_STAMP_FORMAT = "%Y%m%dT%H%M%S%f"


class DeviceBusy(Exception):
    """The device has queued or running jobs and ``force`` was not given."""

    def __init__(self, device_name: str, job_ids: list[str]) -> None:
        self.job_ids = job_ids
        super().__init__(
            f"device {device_name!r} has {len(job_ids)} queued or running job(s): {', '.join(job_ids)}; "
            f"cancel them first, or retire it anyway with force (DELETE /api/v1/devices/{device_name}?force=true, "
            f"`automl devices delete {device_name} --force`), which cancels them")


@dataclass
class Retired:
    name: str
    cancelled_jobs: list[str] = field(default_factory=list)
    # The name its latency tables are kept under; None when it had none.
    latency_archive: str | None = None
    latency_targets_kept: int = 0


def archive_prefix(device_name: str) -> str:
    """What every archive name of ``device_name`` starts with.

    Deviation: a name longer than 77 characters is cut so that the archive
    name fits the 100-character column; two such names sharing their first 77
    characters would share archives (names that long are not expected).
    """
    room = DEVICE_NAME_LEN - len(ARCHIVE_MARK) - len(utcnow().strftime(_STAMP_FORMAT))
    return device_name[:room] + ARCHIVE_MARK


def _active_jobs(session: Session, device: Device) -> list[Job]:
    active = (JobState.QUEUED.value, JobState.RUNNING.value)
    return list(session.scalars(select(Job).where(Job.device_name == device.name, Job.state.in_(active))
                                .order_by(Job.created_at)))


def retire(session: Session, device: Device, *, force: bool) -> Retired:
    """Delete ``device``; raises DeviceBusy when it has active jobs and not ``force``."""
    jobs = _active_jobs(session, device)
    if jobs and not force:
        raise DeviceBusy(device.name, [job.id for job in jobs])
    retired = Retired(name=device.name)
    for job in jobs:
        service.record_event(session, job, "log", f"device {device.name!r} was retired; cancelling this job",
                             stage=job.stage)
        service.request_cancel(session, job)
        retired.cancelled_jobs.append(job.id)
    archive = archive_prefix(device.name) + utcnow().strftime(_STAMP_FORMAT)
    kept = _updated(session.execute(update(LatencyTarget).where(LatencyTarget.device_name == device.name)
                                    .values(device_name=archive)))
    if kept:
        retired.latency_archive, retired.latency_targets_kept = archive, kept
    session.delete(device)
    session.flush()
    return retired


def reuse_latency(session: Session, device_name: str) -> int:
    """Give ``device_name`` back the latency tables of its latest retirement; returns how many targets."""
    if session.scalar(select(LatencyTarget.id).where(LatencyTarget.device_name == device_name).limit(1)):
        return 0  # it measured under this name already; merging two histories is not what was asked
    prefix = archive_prefix(device_name)
    archives = session.scalars(select(LatencyTarget.device_name).where(LatencyTarget.device_name.startswith(
        prefix, autoescape=True)).distinct()).all()
    if not archives:
        return 0
    latest = max(archives)  # the stamp sorts in time order
    return _updated(session.execute(update(LatencyTarget).where(LatencyTarget.device_name == latest)
                                    .values(device_name=device_name)))


def _updated(result: Result[Any]) -> int:
    """Rows an UPDATE changed (an UPDATE's result is a CursorResult, typed as Result)."""
    return cast(CursorResult[Any], result).rowcount
