"""A background thread that renews a job's lease while a worker runs it (trials may take long)."""

from __future__ import annotations

import logging
import threading

from prunesearch.service import crud
from prunesearch.service.db import session_scope

log = logging.getLogger(__name__)


class Heartbeat:
    """Refresh `heartbeat_at` of `job_id` every `interval_s` until stopped."""

    def __init__(self, url: str, job_id: str, interval_s: float) -> None:
        self._url, self._job_id, self._interval = url, job_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

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
                    crud.heartbeat(session, job_id=self._job_id)
            except Exception:  # a missed beat is harmless; the lease is many beats long
                log.warning("heartbeat for job %s failed", self._job_id, exc_info=True)
