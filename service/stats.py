"""Aggregate reads of the service's tables for `/metrics`: what every worker did, on every machine, as the
database records it (the API computes these at scrape time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from prunesearch.choices import EventKind, ExportStatus, JobStatus

from .events import count_recent
from .models import Export, Job

# Finished exports whose durations the histograms hold: the most recent ones.
DURATION_ROWS = 10_000
# Trials per second is the count of trials finished over this window, divided by it.
RATE_WINDOW_S = 60.0


@dataclass
class ServiceStats:
    jobs: dict[str, int]  # by status (every `JobStatus`, zeros included)
    exports: dict[str, int]  # by status (every `ExportStatus`)
    trials_finished: int
    trials_per_second: float
    active_workers: int  # summed over running jobs
    export_seconds: list[float] = field(default_factory=list)  # succeeded exports, claim to finish (heal included)
    heal_seconds: list[float] = field(default_factory=list)  # healed exports: the heal alone, end to end


def read_stats(session: Session) -> ServiceStats:
    jobs = dict.fromkeys((s.value for s in JobStatus), 0)
    jobs |= {row[0]: row[1] for row in session.execute(select(Job.status, func.count()).group_by(Job.status))}
    exports = dict.fromkeys((s.value for s in ExportStatus), 0)
    exports |= {row[0]: row[1] for row in session.execute(select(Export.status, func.count()).group_by(Export.status))}
    trials = session.scalar(select(func.coalesce(func.sum(Job.trials_done), 0))) or 0
    workers = session.scalar(
        select(func.coalesce(func.sum(Job.active_workers), 0)).where(Job.status == JobStatus.RUNNING)
    )
    recent = count_recent(session, kind=EventKind.TRIAL, seconds=RATE_WINDOW_S)
    stats = ServiceStats(jobs, exports, int(trials), recent / RATE_WINDOW_S, int(workers or 0))
    _durations(session, stats)
    return stats


def _durations(session: Session, stats: ServiceStats) -> None:
    query = (
        select(Export.started_at, Export.finished_at, Export.summary)
        .where(Export.status == ExportStatus.SUCCEEDED, Export.started_at.is_not(None))
        .order_by(Export.finished_at.desc())
        .limit(DURATION_ROWS)
    )
    for started, finished, summary in session.execute(query):
        if finished is not None:
            stats.export_seconds.append(max(0.0, _seconds(finished) - _seconds(started)))
        heal = (summary or {}).get("heal") if isinstance(summary, dict) else None
        if isinstance(heal, dict) and isinstance(heal.get("wall_seconds"), int | float):
            stats.heal_seconds.append(float(heal["wall_seconds"]))


def _seconds(value: datetime) -> float:
    """SQLite returns naive datetimes (stored as UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
