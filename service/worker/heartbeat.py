"""A background thread that renews a job's or an export's lease while a worker runs it (trials and exports may
take long)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from prunesearch.service import crud
from prunesearch.service.db import session_scope

log = logging.getLogger(__name__)


class Heartbeat:
    """Call `renew(session)` every `interval_s` until stopped."""

    def __init__(self, url: str, interval_s: float, renew: Callable[[Session], None], name: str) -> None:
        self._url, self._interval, self._renew, self._name = url, interval_s, renew, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    @classmethod
    def for_job(cls, url: str, job_id: str, interval_s: float, epoch: int | None = None) -> Heartbeat:
        """Renews the job's lease while it is the caller's (`epoch`): a worker taken for dead renews no lease of
        the workers that took the job over."""

        def renew(session: Session) -> None:
            crud.heartbeat(session, job_id=job_id, epoch=epoch)

        return cls(url, interval_s, renew, f"job {job_id}")

    @classmethod
    def for_export(cls, url: str, export_id: str, attempt: int, interval_s: float) -> Heartbeat:
        def renew(session: Session) -> None:
            crud.export_heartbeat(session, export_id=export_id, attempt=attempt)

        return cls(url, interval_s, renew, f"export {export_id}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with session_scope(self._url) as session:
                    self._renew(session)
            except Exception:  # a missed beat is harmless; the lease is many beats long
                log.warning("heartbeat for %s failed", self._name, exc_info=True)
