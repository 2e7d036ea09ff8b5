"""Every read and write of the service's tables, with keyword-only arguments. Callers pass a session from
`db.session_scope`; the API and the worker share these functions."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from prunesearch.choices import EvaluationStatus, ExportStatus, JobStatus

from .events import emit_export, emit_status
from .models import LOCAL_OWNER, Dataset, Evaluation, Event, Export, Job, ParetoSnapshot, utcnow


def create_job(
    session: Session,
    *,
    spec: dict[str, Any],
    parallelism: int,
    owner: str | None,
    idempotency_key: str | None,
) -> Job:
    """Insert a queued job."""
    job = Job(
        spec=spec,
        n_trials=spec["n_trials"],
        parallelism=parallelism,
        owner=owner or LOCAL_OWNER,
        idempotency_key=idempotency_key,
    )
    session.add(job)
    session.flush()
    emit_status(session, job)
    return job


def get_job(session: Session, *, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_job_by_key(session: Session, *, owner: str, idempotency_key: str) -> Job | None:
    """The job `owner` created with this idempotency key (keys are per owner)."""
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == idempotency_key))


def list_jobs(
    session: Session, *, status: str | None, offset: int, limit: int, owner: str | None = None
) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and the total count; `owner`: only that owner's (None: everyone's)."""
    query = select(Job) if status is None else select(Job).where(Job.status == status)
    if owner is not None:
        query = query.where(Job.owner == owner)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc()).offset(offset).limit(limit)).all()
    return list(rows), total


def request_cancel(session: Session, *, job: Job) -> None:
    """Queued jobs cancel at once; running ones stop between trials (workers see `cancel_requested`)."""
    job.cancel_requested = True
    if job.status == JobStatus.QUEUED:
        job.status, job.finished_at = JobStatus.CANCELLED, utcnow()
        emit_status(session, job)


def delete_job(session: Session, *, job: Job) -> None:
    session.execute(delete(ParetoSnapshot).where(ParetoSnapshot.job_id == job.id))
    session.execute(delete(Event).where(Event.job_id == job.id))
    exports = select(Export.id).where(Export.job_id == job.id)
    session.execute(delete(Evaluation).where(Evaluation.export_id.in_(exports)))
    session.execute(delete(Export).where(Export.job_id == job.id))
    session.delete(job)


def claim_trial(session: Session, *, job_id: str, epoch: int | None = None) -> bool:
    """Atomically reserve one trial of a running job; False once n_trials are claimed (or it stopped, or, given
    the caller's lease `epoch`, the job was taken over from the caller's generation of workers)."""
    query = (
        update(Job)
        .where(Job.id == job_id, Job.trials_claimed < Job.n_trials, Job.status == JobStatus.RUNNING)
        .where(Job.cancel_requested.is_(False))
    )
    if epoch is not None:
        query = query.where(Job.lease_epoch == epoch)
    result = session.execute(query.values(trials_claimed=Job.trials_claimed + 1))
    return result.rowcount == 1


def claimable_jobs(session: Session, *, lease_s: float, for_update: bool):
    """The query for jobs a worker may take: queued, joinable (parallelism left), or with an expired lease."""
    stale = utcnow() - timedelta(seconds=lease_s)
    joinable = (
        (Job.status == JobStatus.RUNNING)
        & (Job.active_workers < Job.parallelism)
        & (Job.trials_claimed < Job.n_trials)
        & Job.cancel_requested.is_(False)
    )
    expired = (Job.status == JobStatus.RUNNING) & (Job.heartbeat_at < stale)
    query = select(Job).where(or_(Job.status == JobStatus.QUEUED, joinable, expired)).order_by(Job.created_at).limit(1)
    return query.with_for_update(skip_locked=True) if for_update else query


def join_job(session: Session, *, job: Job, lease_s: float) -> tuple[int, int]:
    """Mark the caller as one more worker on `job`; an expired lease means its workers died: recover it, in a
    new lease epoch (workers of the old one that still run stop claiming trials). Returns the caller's lease
    epoch and its join slot (0 for the job's first worker, then 1, 2, ...)."""
    now, before = utcnow(), job.status
    if job.status == JobStatus.RUNNING and _aware(job.heartbeat_at) < now - timedelta(seconds=lease_s):
        # Trials claimed by dead workers never finished: hand them out again.
        job.active_workers, job.trials_claimed = 0, job.trials_done
        job.lease_epoch += 1
    job.status, job.started_at = JobStatus.RUNNING, job.started_at or now
    job.active_workers += 1
    job.heartbeat_at = now
    if before != JobStatus.RUNNING:
        emit_status(session, job)
    slot, job.joins = job.joins, job.joins + 1
    return job.lease_epoch, slot


def heartbeat(session: Session, *, job_id: str, epoch: int | None = None) -> bool:
    """Renew the job's lease; False when the job was taken over from the caller's epoch (or is gone)."""
    query = update(Job).where(Job.id == job_id)
    if epoch is not None:
        query = query.where(Job.lease_epoch == epoch)
    return session.execute(query.values(heartbeat_at=utcnow())).rowcount == 1


def record_progress(
    session: Session, *, job_id: str, trials_done: int, front_size: int, hypervolume: float | None
) -> None:
    """Store progress (never moving trials_done backwards: parallel workers report out of order)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or trials_done < job.trials_done:
        return
    job.trials_done, job.front_size, job.hypervolume = trials_done, front_size, hypervolume
    job.heartbeat_at = utcnow()


def add_snapshot(
    session: Session, *, job_id: str, trials_done: int, hypervolume: float | None, front: list[Any]
) -> None:
    session.add(ParetoSnapshot(job_id=job_id, trials_done=trials_done, hypervolume=hypervolume, front=front))


def latest_snapshot(session: Session, *, job_id: str) -> ParetoSnapshot | None:
    query = select(ParetoSnapshot).where(ParetoSnapshot.job_id == job_id)
    return session.scalar(query.order_by(ParetoSnapshot.trials_done.desc(), ParetoSnapshot.id.desc()).limit(1))


def leave_job(
    session: Session,
    *,
    job_id: str,
    error: str | None = None,
    requeue: bool = False,
    pending: bool = False,
    epoch: int | None = None,
) -> Job:
    """The caller stops working on the job; the last worker out (or any, once all trials are done and nothing
    is `pending`, such as candidates of the heal stage left to heal) settles its final status. An error fails
    the job for everyone; a worker shutting down (`requeue`), or the last one out with work `pending`, leaves an
    unfinished job queued for another worker. A caller whose lease `epoch` is over changes nothing: the job is
    its successors' now."""
    job = session.get(Job, job_id, with_for_update=True)
    assert job is not None
    if epoch is not None and job.lease_epoch != epoch:
        return job
    job.active_workers = max(0, job.active_workers - 1)
    if job.status != JobStatus.RUNNING:
        return job
    _settle(job, error=error, requeue=requeue, pending=pending)
    if job.status != JobStatus.RUNNING:
        emit_status(session, job)
    return job


def _settle(job: Job, *, error: str | None, requeue: bool, pending: bool) -> None:
    """`leave_job`'s decision for a running job the caller leaves."""
    if error is not None:
        job.status, job.error, job.cancel_requested = JobStatus.FAILED, error, True
    elif job.trials_done >= job.n_trials and not pending:
        job.status = JobStatus.SUCCEEDED
    elif job.active_workers > 0:
        return
    elif (requeue or pending) and not job.cancel_requested:  # pending: heal candidates left for another worker
        job.status, job.trials_claimed = JobStatus.QUEUED, job.trials_done
        return
    else:
        job.status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.SUCCEEDED
    job.finished_at = utcnow()


def create_export(
    session: Session,
    *,
    job_id: str,
    trial: int,
    dtype: str,
    heal: dict[str, Any] | None = None,
    owner: str = LOCAL_OWNER,
) -> Export:
    """Insert a queued export (`owner`: its job's); `heal`: the heal options (paths resolved), None for a plain
    export."""
    export = Export(job_id=job_id, trial=trial, dtype=dtype, heal=heal, owner=owner)
    session.add(export)
    session.flush()
    emit_export(session, export_id=export.id)
    return export


def get_export(session: Session, *, export_id: str) -> Export | None:
    return session.get(Export, export_id)


def list_exports(session: Session, *, job_id: str) -> list[Export]:
    return list(session.scalars(select(Export).where(Export.job_id == job_id)).all())


def claimable_exports(*, lease_s: float, for_update: bool, healed: bool = True):
    """Queued exports, and running ones whose worker stopped renewing their lease (it died); `healed=False`:
    only those without a heal."""
    stale = utcnow() - timedelta(seconds=lease_s)
    silent = (Export.heartbeat_at < stale) | Export.heartbeat_at.is_(None)
    abandoned = (Export.status == ExportStatus.RUNNING) & silent
    query = select(Export).where((Export.status == ExportStatus.QUEUED) | abandoned)
    if not healed:
        query = query.where(no_heal())
    query = query.order_by(Export.created_at).limit(1)
    return query.with_for_update(skip_locked=True) if for_update else query


def no_heal():
    """Exports without a heal: the column holds SQL NULL, or JSON null (how the JSON type stores Python None)."""
    return Export.heal.is_(None) | (cast(Export.heal, Text) == "null")


# Workers an export may outlive (each died while writing it) before it fails for good.
MAX_EXPORT_ATTEMPTS = 3


def start_export(session: Session, *, export: Export) -> int | None:
    """Start one more attempt at `export` and return its number; None (and the export failed) once the
    attempts are used up."""
    if export.attempts >= MAX_EXPORT_ATTEMPTS:
        export.status, export.finished_at = ExportStatus.FAILED, utcnow()
        export.error = f"its worker stopped {export.attempts} times while writing it"
        emit_export(session, export_id=export.id)
        return None
    export.status, export.heartbeat_at, export.attempts = ExportStatus.RUNNING, utcnow(), export.attempts + 1
    export.started_at = export.heartbeat_at
    emit_export(session, export_id=export.id)
    return export.attempts


def export_heartbeat(session: Session, *, export_id: str, attempt: int) -> None:
    session.execute(
        update(Export).where(Export.id == export_id, Export.attempts == attempt).values(heartbeat_at=utcnow())
    )


def record_export_progress(session: Session, *, export_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    """Store where `attempt` is (and renew its lease); False when a later attempt took the export over."""
    result = session.execute(
        update(Export)
        .where(Export.id == export_id, Export.attempts == attempt, Export.status == ExportStatus.RUNNING)
        .values(progress=progress, heartbeat_at=utcnow())
    )
    if result.rowcount != 1:
        return False
    emit_export(session, export_id=export_id)
    return True


def finish_export(session: Session, *, export_id: str, attempt: int, **fields: Any) -> bool:
    """Record the outcome of `attempt`; False when a later attempt took the export over (this one lost it)."""
    result = session.execute(
        update(Export)
        .where(Export.id == export_id, Export.attempts == attempt, Export.status == ExportStatus.RUNNING)
        .values(finished_at=utcnow(), **fields)
    )
    if result.rowcount != 1:
        return False
    emit_export(session, export_id=export_id)
    return True


def create_evaluation(session: Session, *, export_id: str, request: dict[str, Any]) -> Evaluation:
    """Insert a queued evaluation; `request`: what to evaluate, with data and task files as checked paths."""
    evaluation = Evaluation(export_id=export_id, request=request)
    session.add(evaluation)
    session.flush()
    return evaluation


def get_evaluation(session: Session, *, evaluation_id: str) -> Evaluation | None:
    return session.get(Evaluation, evaluation_id)


def claimable_evaluations(*, lease_s: float, for_update: bool):
    """Queued evaluations, and running ones whose worker stopped renewing their lease (it died)."""
    stale = utcnow() - timedelta(seconds=lease_s)
    silent = (Evaluation.heartbeat_at < stale) | Evaluation.heartbeat_at.is_(None)
    abandoned = (Evaluation.status == EvaluationStatus.RUNNING) & silent
    query = select(Evaluation).where((Evaluation.status == EvaluationStatus.QUEUED) | abandoned)
    query = query.order_by(Evaluation.created_at).limit(1)
    return query.with_for_update(skip_locked=True) if for_update else query


def start_evaluation(session: Session, *, evaluation: Evaluation) -> int | None:
    """Start one more attempt at `evaluation` and return its number; None (and the evaluation failed) once the
    attempts are used up."""
    now = utcnow()
    if evaluation.attempts >= MAX_EXPORT_ATTEMPTS:
        evaluation.status, evaluation.finished_at = EvaluationStatus.FAILED, now
        evaluation.error = f"its worker stopped {evaluation.attempts} times while running it"
        return None
    evaluation.status, evaluation.heartbeat_at = EvaluationStatus.RUNNING, now
    evaluation.started_at, evaluation.attempts = now, evaluation.attempts + 1
    return evaluation.attempts


def evaluation_heartbeat(session: Session, *, evaluation_id: str, attempt: int) -> None:
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.attempts == attempt)
        .values(heartbeat_at=utcnow())
    )


def finish_evaluation(session: Session, *, evaluation_id: str, attempt: int, **fields: Any) -> bool:
    """Record the outcome of `attempt`; False when a later attempt took the evaluation over."""
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.attempts == attempt)
        .where(Evaluation.status == EvaluationStatus.RUNNING)
        .values(finished_at=utcnow(), **fields)
    )
    return result.rowcount == 1


def create_dataset(
    session: Session, *, dataset_id: str, filename: str, path: str, size: int, sha256: str, owner: str = LOCAL_OWNER
) -> Dataset:
    dataset = Dataset(id=dataset_id, filename=filename, path=path, size=size, sha256=sha256, owner=owner)
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, *, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def _aware(value: datetime | None) -> datetime:
    """SQLite returns naive datetimes; treat them as UTC."""
    if value is None:
        return datetime.min.replace(tzinfo=utcnow().tzinfo)
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)
