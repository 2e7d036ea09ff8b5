"""Atomic claims. PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED`, so workers on many machines never take the
same row; SQLite: an immediate transaction (the write lock is taken before the read)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from prunesearch.service import crud
from prunesearch.service.db import is_sqlite, session_scope
from prunesearch.service.exportfiles import remove_export


class JobClaim(NamedTuple):
    job_id: str
    alone: bool  # no other worker was on the job when this one joined: trials left RUNNING were abandoned
    epoch: int = 0  # the job's lease epoch this worker joined in: it works on the job while that lasts
    slot: int = 0  # how many workers joined the job before this one (its sampler seed derives from it)


def claim_job(url: str, *, lease_s: float) -> JobClaim | None:
    """Join a queued job, a running one with parallelism to spare, or one whose workers' lease expired."""
    sqlite = is_sqlite(url)
    with session_scope(url, immediate=sqlite) as session:
        job = session.scalar(crud.claimable_jobs(session, lease_s=lease_s, for_update=not sqlite))
        if job is None:
            return None
        epoch, slot = crud.join_job(session, job=job, lease_s=lease_s)
        return JobClaim(job.id, alone=job.active_workers == 1, epoch=epoch, slot=slot)


class ExportClaim(NamedTuple):
    export_id: str
    attempt: int


def claim_export(
    url: str, *, lease_s: float, export_root: Path | None = None, healed: bool = True
) -> ExportClaim | None:
    """Take the oldest queued export request, or one whose worker's lease expired (failing, on the way, those
    whose attempts are used up, and removing their files under `export_root` when given). `healed=False`: only
    exports without a heal (a worker between trials takes no export that would hold its search up for long)."""
    sqlite = is_sqlite(url)
    given_up: list[tuple[str, int]] = []
    try:
        with session_scope(url, immediate=sqlite) as session:
            for _ in range(100):
                query = crud.claimable_exports(lease_s=lease_s, for_update=not sqlite, healed=healed)
                export = session.scalar(query)
                if export is None:
                    return None
                attempt = crud.start_export(session, export=export)
                if attempt is not None:
                    return ExportClaim(export.id, attempt)
                given_up.append((export.id, export.attempts))
                session.flush()
            return None
    finally:  # after the commit: the failed exports' dead attempts left their files (a heal's state above all)
        if export_root is not None:
            for export_id, attempts in given_up:
                remove_export(export_root, export_id, attempts)


def claim_trial(url: str, job_id: str, epoch: int | None = None) -> bool:
    """One more trial for this job, if its quota allows and (given `epoch`) the caller's lease still holds (a
    single conditional UPDATE: atomic everywhere)."""
    with session_scope(url) as session:
        return crud.claim_trial(session, job_id=job_id, epoch=epoch)
