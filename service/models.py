"""The service's tables (SQLAlchemy 2 declarative). Optuna keeps its own tables in the same database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from prunesearch.choices import EvaluationStatus, ExportStatus, JobStatus

# Who owns what requests without a token create on a loopback server (and rows from before migration 0004).
LOCAL_OWNER = "local"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def is_id(value: str) -> bool:
    """Whether `value` is an id this service could have issued (a canonical UUID string)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Job(Base):
    """One search job. `trials_claimed` is the atomic counter that keeps parallel workers at n_trials."""

    __tablename__ = "ps_jobs"
    # Idempotency keys are per owner: two accounts may use the same key.
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_ps_jobs_owner_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), default=LOCAL_OWNER, server_default=LOCAL_OWNER)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    # Values of `JobStatus`, stored as plain strings (a `StrEnum` member equals its value): the column stays VARCHAR.
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    n_trials: Mapped[int] = mapped_column(Integer)
    parallelism: Mapped[int] = mapped_column(Integer, default=1)
    trials_claimed: Mapped[int] = mapped_column(Integer, default=0)
    trials_done: Mapped[int] = mapped_column(Integer, default=0)
    front_size: Mapped[int] = mapped_column(Integer, default=0)
    hypervolume: Mapped[float | None] = mapped_column(Float)
    active_workers: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None] = mapped_column(doc="lease: refreshed by the job's workers")
    events_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # the last event's `seq`
    # One more each time the job is taken over from workers whose lease expired: older epochs' workers stop.
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    joins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # workers that joined: seed slots

    @property
    def study_name(self) -> str:
        return f"job-{self.id}"


class ParetoSnapshot(Base):
    """The Pareto front as it stood after `trials_done` trials (the latest one is what clients see)."""

    __tablename__ = "ps_pareto_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("ps_jobs.id", ondelete="CASCADE"), index=True)
    trials_done: Mapped[int] = mapped_column(Integer)
    hypervolume: Mapped[float | None] = mapped_column(Float)
    front: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Export(Base):
    """A request to materialise one trial as a checkpoint archive."""

    __tablename__ = "ps_exports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("ps_jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(200), default=LOCAL_OWNER, server_default=LOCAL_OWNER)  # the job's owner
    trial: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.QUEUED.value, index=True)  # `ExportStatus`
    path: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime | None]  # renewed while a worker writes it: its lease
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # only the latest may finish
    finished_at: Mapped[datetime | None]
    heal: Mapped[dict[str, Any] | None]  # the heal asked for (`schemas.HealOptions`, paths resolved); None: no heal
    progress: Mapped[dict[str, Any] | None]  # phase, and while healing step/total/loss/tokens_per_s
    started_at: Mapped[datetime | None]  # when its latest attempt started


class Event(Base):
    """Something that happened to a job (`EventKind`), numbered `seq` = 1, 2, ... per job in commit order: the
    writer takes the number from `Job.events_seq` in the same transaction, which locks the job's row."""

    __tablename__ = "ps_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("ps_jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # `EventKind`
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Evaluation(Base):
    """An lm-evaluation-harness run on an export's checkpoint; workers claim it as they claim exports."""

    __tablename__ = "ps_evaluations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    export_id: Mapped[str] = mapped_column(ForeignKey("ps_exports.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=EvaluationStatus.QUEUED.value, index=True)
    request: Mapped[dict[str, Any]]  # `schemas.EvaluationCreate` with data and task files as checked local paths
    results: Mapped[dict[str, Any] | None]  # `pruning.lmeval.evaluate`'s report
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]  # renewed while a worker runs it: its lease
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # only the latest may finish


class Dataset(Base):
    """An uploaded calibration file."""

    __tablename__ = "ps_datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), default=LOCAL_OWNER, server_default=LOCAL_OWNER)
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An API token of account `name` (`prunesearch token create`); only its SHA-256 is stored."""

    __tablename__ = "ps_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
