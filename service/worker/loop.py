"""The worker loop: plain exports first (they are short), then jobs, then healed exports and evaluations (they may
take long); bounded, and stopped cleanly by SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from prunesearch.search.backend import OptunaBackend, SearchBackend
from prunesearch.service.settings import Settings

from . import metrics
from .claims import claim_export, claim_job
from .evaluation import claim_evaluation, run_evaluation
from .exporter import run_export
from .runner import run_job

log = logging.getLogger(__name__)


class Worker:
    """Claims and runs work until stopped, `max_idle_s` passes without work, or after `max_jobs` jobs.

    `backend`: runs the searches and exports (default: Optuna studies in the service's database)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_idle_s: float | None = None,
        max_jobs: int | None = None,
        backend: SearchBackend | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend or OptunaBackend(settings.db_url)
        self.max_idle_s, self.max_jobs = max_idle_s, max_jobs
        self.stopping = threading.Event()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the current trial, leave the job for others, and exit."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())

    def exit_with_parent(self) -> None:
        """Stop (cleanly, like SIGTERM) once the parent process is gone, e.g. a `serve` that was killed."""
        parent = os.getppid()

        def watch() -> None:
            while not self.stopping.wait(1.0):
                if os.getppid() != parent:
                    self.stopping.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()

    def run(self) -> int:
        """Loop until told to stop; returns the number of jobs worked on."""
        jobs, idle_since = 0, time.monotonic()
        while not self.stopping.is_set():
            if self.run_one_export():
                idle_since = time.monotonic()
                continue
            claim = claim_job(self.settings.db_url, lease_s=self.settings.lease_s)
            if claim is not None:
                log.info("claimed job %s", claim.job_id, extra={"job_id": claim.job_id})
                with metrics.busy("job"):
                    run_job(
                        claim.job_id,
                        self.settings,
                        self.stopping,
                        self.run_one_export,
                        backend=self.backend,
                        recover=claim.alone,
                        epoch=claim.epoch,
                        slot=claim.slot,
                    )
                jobs, idle_since = jobs + 1, time.monotonic()
                if self.max_jobs is not None and jobs >= self.max_jobs:
                    break
                continue
            if self.run_one_export(healed=True) or self.run_one_evaluation():  # no job: time for long work
                idle_since = time.monotonic()
                continue
            if self.max_idle_s is not None and time.monotonic() - idle_since > self.max_idle_s:
                break
            self.stopping.wait(self.settings.poll_s)
        return jobs

    def run_one_evaluation(self) -> bool:
        """Run the oldest queued evaluation (lm-evaluation-harness on an export), if any."""
        claim = claim_evaluation(self.settings.db_url, lease_s=self.settings.lease_s)
        if claim is None:
            return False
        log.info("evaluating %s (attempt %d)", claim.evaluation_id, claim.attempt)
        run_evaluation(claim, self.settings)
        return True

    def run_one_export(self, healed: bool = False) -> bool:
        """Run the oldest queued export, if any. Between trials (the default) only an export without a heal, so
        plain exports never wait long while a heal, which may take hours, never holds a search up: healed
        exports wait for a worker with no job to run."""
        root, lease_s = self.settings.export_root, self.settings.lease_s
        claim = claim_export(self.settings.db_url, lease_s=lease_s, export_root=root, healed=healed)
        if claim is None:
            return False
        log.info("exporting %s (attempt %d)", claim.export_id, claim.attempt, extra={"export_id": claim.export_id})
        with metrics.busy("export"):
            run_export(claim.export_id, self.settings, backend=self.backend, attempt=claim.attempt)
        return True
