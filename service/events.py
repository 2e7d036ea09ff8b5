"""Job events: what `GET /v1/jobs/{id}/events` streams. The workers and the API are separate processes, so every
event is a row of `ps_events`, written in the transaction of the change it reports; the API reads them back.

Each job numbers its events 1, 2, ... (`seq`, the Server-Sent Event id). The number comes from an
`UPDATE ps_jobs SET events_seq = events_seq + 1 ... RETURNING`, which locks the job's row until the commit: events
of one job commit in the order of their numbers, so a reader that has seen number N never later finds a
smaller one committed (what makes `Last-Event-ID` resumption exact, on PostgreSQL as on SQLite)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from prunesearch.choices import EventKind

from .models import Event, Export, Job, utcnow


def emit(session: Session, *, job_id: str, kind: EventKind, data: dict[str, Any]) -> int | None:
    """Add an event to the job's stream; its number, or None when the job is gone. On SQLite, call it after
    the transaction's first write (or in a `BEGIN IMMEDIATE` one), like any read-then-write."""
    statement = (
        update(Job)
        .where(Job.id == job_id)
        .values(events_seq=Job.events_seq + 1)
        .returning(Job.events_seq)
        .execution_options(synchronize_session=False)
    )
    seq = session.execute(statement).scalar_one_or_none()
    if seq is not None:
        session.add(Event(job_id=job_id, seq=seq, kind=kind.value, data=data))
    return seq


def emit_status(session: Session, job: Job) -> None:
    """The job's state, as it stands in `job`."""
    data = {"status": job.status, "trials_done": job.trials_done, "n_trials": job.n_trials, "error": job.error}
    emit(session, job_id=job.id, kind=EventKind.STATUS, data=data)


def emit_export(session: Session, *, export_id: str) -> None:
    """An export's state and progress, as flushed in this transaction."""
    session.flush()
    row = session.execute(
        select(Export.job_id, Export.trial, Export.status, Export.attempts, Export.progress, Export.error).where(
            Export.id == export_id
        )
    ).one_or_none()
    if row is None:
        return
    data = {"export_id": export_id, "trial": row.trial, "status": row.status, "attempt": row.attempts}
    data |= {"progress": row.progress, "error": row.error}
    emit(session, job_id=row.job_id, kind=EventKind.EXPORT, data=data)


def emit_progress(
    session: Session, *, job_id: str, progress: dict[str, Any], front: list[dict[str, Any]], previous: Any
) -> None:
    """After a trial: a `trial` event when `progress` (trials_done, n_trials, front_size, hypervolume) is newer
    than the `previous` snapshot (a report that parallel workers overtook, or the same count again, is not), and
    a `front` event when the front's trials differ from that snapshot's."""
    if previous is not None and progress["trials_done"] <= previous.trials_done:
        return
    emit(session, job_id=job_id, kind=EventKind.TRIAL, data=progress)
    if previous is None or front_trials(front) != front_trials(previous.front):
        rows = [{"trial": row.get("trial"), "metrics": row.get("metrics", {})} for row in front]
        data = {"trials_done": progress["trials_done"], "hypervolume": progress["hypervolume"], "front": rows}
        emit(session, job_id=job_id, kind=EventKind.FRONT, data=data)


def front_trials(front: list[dict[str, Any]]) -> list[int]:
    """The trial numbers of a stored front, sorted: two fronts are the same when these are."""
    return sorted(int(row["trial"]) for row in front if "trial" in row)


def events_after(session: Session, *, job_id: str, after: int, limit: int = 500) -> list[Event]:
    """The job's events numbered above `after`, oldest first."""
    query = select(Event).where(Event.job_id == job_id, Event.seq > after).order_by(Event.seq).limit(limit)
    return list(session.scalars(query).all())


def count_recent(session: Session, *, kind: EventKind, seconds: float) -> int:
    """How many events of `kind` (all jobs) were written in the last `seconds`."""
    since = utcnow() - timedelta(seconds=seconds)
    query = select(func.count()).where(Event.kind == kind.value, Event.created_at >= since)
    return session.scalar(query) or 0
