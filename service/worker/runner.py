"""Run one job's share of trials: the search backend with the job's quota, cancel check and progress hooks."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from prunesearch.choices import EventKind, JobStatus
from prunesearch.search.backend import SearchBackend, SearchCallbacks, SearchProgress
from prunesearch.search.seeds import worker_seed
from prunesearch.search.spec import SearchSpec
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.events import emit, emit_progress
from prunesearch.service.settings import Settings

from . import metrics
from .claims import claim_trial
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


def run_job(
    job_id: str,
    settings: Settings,
    stopping: threading.Event,
    between_trials: Callable[[], None],
    *,
    backend: SearchBackend,
    recover: bool = False,
    epoch: int | None = None,
    slot: int = 0,
) -> None:
    """Work on `job_id` until its trials are all claimed, it is cancelled, this worker is stopping, or its lease
    is lost (another worker took the job over from this one's lease `epoch`, taking it for dead).

    `recover`: this worker joined the job alone (decided in the claim's transaction), so Optuna trials left
    RUNNING belong to dead workers and are failed as abandoned first. `slot`: how many workers joined the job
    before this one; its sampler seed derives from it and the job's seed (`worker_seed`)."""
    url = settings.db_url
    with session_scope(url) as session:
        job = crud.get_job(session, job_id=job_id)
        spec, study = SearchSpec.model_validate(job.spec), job.study_name
        shared = job.parallelism > 1  # TPE's constant liar only where workers can run trials side by side

    clock = metrics.TrialClock()

    def on_trial(progress: SearchProgress) -> None:
        record(url, job_id, progress)
        clock.trial_done()
        ids = {"job_id": job_id, "trial": progress.last_trial}
        log.info(
            "job %s: trial %s finished, %d/%d",
            job_id,
            progress.last_trial,
            progress.trials_done,
            progress.n_trials,
            extra=ids,
        )
        between_trials()

    callbacks = SearchCallbacks(
        claim=lambda: claim_trial(url, job_id, epoch),
        should_stop=lambda: stopping.is_set() or _stopped(url, job_id, epoch),
        on_trial=on_trial,
        on_heal=lambda update: record_heal(url, job_id, update),
    )

    error, pending, seed = None, False, worker_seed(spec.seed, slot)
    with Heartbeat.for_job(url, job_id, settings.heartbeat_s, epoch):
        try:
            progress = backend.run(spec, study, callbacks, shared=shared, recover=recover, sampler_seed=seed)
            record(url, job_id, progress)
            pending = spec.heal is not None and heal_pending(backend, study)
        except Exception as exc:
            log.exception("job %s failed", job_id, extra={"job_id": job_id})
            error = f"{type(exc).__name__}: {exc}"[:2000]
    requeue = stopping.is_set()
    with session_scope(url, immediate=True) as session:
        job = crud.leave_job(session, job_id=job_id, error=error, requeue=requeue, pending=pending, epoch=epoch)
        ids = {"job_id": job_id}
        if epoch is not None and job.lease_epoch != epoch:
            log.warning("left job %s: its lease was taken over by another worker", job_id, extra=ids)
        else:
            log.info("left job %s: %s, %d/%d trials", job_id, job.status, job.trials_done, job.n_trials, extra=ids)


def heal_pending(backend: SearchBackend, study: str) -> bool:
    """Whether the job's heal stage has candidates left (or has not picked them yet): the job stays running
    until its last worker has healed them (the search runs the stage once its trials are all finished)."""
    status = backend.heal_status(study)
    return status is None or len(status["healed"]) < len(status["candidates"])


def _stopped(url: str, job_id: str, epoch: int | None = None) -> bool:
    """Whether to take no more trials: the job is gone, cancelled or over, or no longer this worker's."""
    with session_scope(url) as session:
        job = crud.get_job(session, job_id=job_id)
        if job is None or job.cancel_requested or job.status != JobStatus.RUNNING:
            return True
        if epoch is not None and job.lease_epoch != epoch:
            log.warning("job %s was taken over by another worker (lease lost): taking no more of its trials", job_id)
            return True
        return False


def record_heal(url: str, job_id: str, update: dict) -> None:
    """The heal stage's progress as a job event (advisory: a database error is only logged)."""
    data = json.loads(json.dumps(update, default=str))
    try:
        with session_scope(url, immediate=True) as session:
            emit(session, job_id=job_id, kind=EventKind.HEAL, data=data)
    except Exception:
        log.warning("job %s: heal progress not recorded", job_id, exc_info=True, extra={"job_id": job_id})


def record(url: str, job_id: str, progress: SearchProgress) -> None:
    """Store progress and a snapshot of the Pareto front the search computed (plans and metrics as JSON)."""
    front = json.loads(json.dumps(list(progress.front), default=str))
    with session_scope(url, immediate=True) as session:
        crud.record_progress(
            session,
            job_id=job_id,
            trials_done=progress.trials_done,
            front_size=progress.front_size,
            hypervolume=progress.hypervolume,
        )
        previous = crud.latest_snapshot(session, job_id=job_id)  # read under the job's row lock
        crud.add_snapshot(
            session,
            job_id=job_id,
            trials_done=progress.trials_done,
            hypervolume=progress.hypervolume,
            front=front,
        )
        counts = progress.to_dict() | {"trial": progress.last_trial}
        emit_progress(session, job_id=job_id, progress=counts, front=front, previous=previous)
