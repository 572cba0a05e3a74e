"""A stage's lease, kept alive by a heartbeat while its process runs.

The lease tells the recovery sweep that a live worker holds the stage
(``stages.orphaned_stages``). It used to be renewed only when the stage
called ``StageContext.check_cancelled`` or wrote an event; a stage whose
single step outlasts the lease (one L-BFGS step of the privacy audit's DLG
on a batch of 32 through a proxyless-mobile network took over two minutes
on a loaded 2-core machine, 2026-12-03) then looked lost, and the sweep
started a second copy beside the first. A heartbeat thread renews the lease
every third of its length for as long as the worker process lives: a dead
worker stops renewing, which is all the lease has to tell. A stage that
hangs inside a live process keeps its lease (the job's cancel still reaches
it wherever it calls ``check_cancelled``).
"""
from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType

from automl_server.db.engine import Database
from automl_server.db.models import Job, utcnow

log = logging.getLogger(__name__)


class LeaseHeartbeat:
    """``with LeaseHeartbeat(db, job_id, owner, lease_s):`` renews the lease of ``owner`` until the block ends.

    Renews only while ``owner`` still holds the lease: a stage taken over (or released)
    is never taken back by the heartbeat."""

    def __init__(self, db: Database, job_id: str, owner: str, lease_s: float) -> None:
        self.db, self.job_id, self.owner, self.lease_s = db, job_id, owner, lease_s
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def renew(self) -> bool:
        """One beat; False when the lease is no longer this owner's."""
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.lease_owner != self.owner:
                return False
            job.lease_until = utcnow() + timedelta(seconds=self.lease_s)
        self.beats += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # a database blip: the next beat tries again, the lease has slack
                log.warning("job %s: could not renew the stage lease: %s", self.job_id, exc)
