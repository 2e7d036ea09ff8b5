"""`/v1/jobs`: submit, list, inspect, trials, Pareto front, cancel, delete."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from starlette.concurrency import run_in_threadpool

from prunesearch.choices import JobStatus
from prunesearch.search.backend import SearchBackend
from prunesearch.service import crud
from prunesearch.service.api.auth import UNAUTHORIZED, for_caller
from prunesearch.service.api.cache import TTLCache
from prunesearch.service.api.deps import (
    BackendDep,
    CurrentOwner,
    JobDep,
    LimitDep,
    OffsetDep,
    SessionDep,
    SettingsDep,
    current_owner,
)
from prunesearch.service.api.errors import responses
from prunesearch.service.auth import Principal
from prunesearch.service.db import session_scope
from prunesearch.service.exportfiles import remove_export
from prunesearch.service.jobs import submit_job
from prunesearch.service.models import Job, is_id
from prunesearch.service.schemas import JobCreate, JobPublic, Page, ParetoPublic
from prunesearch.service.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(current_owner)], responses=UNAUTHORIZED)
# job id -> (owner, the admin's view, everyone else's view)
JOB_VIEWS: TTLCache[tuple[str, bytes, bytes]] = TTLCache(ttl_s=0.25)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


@router.post("", status_code=202, response_model=JobPublic, responses=responses(400, 403, 413, 422))
def create_job(
    body: JobCreate,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    principal: CurrentOwner,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Queue a search job (the caller's; an admin may name another `owner`); a retry with the same
    `Idempotency-Key` (per owner) returns the first job."""
    if body.owner not in (None, principal.owner) and not principal.admin:
        raise HTTPException(403, f"only an admin may submit a job for another owner than {principal.owner!r}")
    job = submit_job(body, settings, session, idempotency_key, principal)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return for_caller(JobPublic.of(job), principal, settings)


@router.get("", response_model=Page[JobPublic], responses=responses(422))
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentOwner,
    status: JobStatus | None = None,
    offset: OffsetDep = 0,
    limit: LimitDep = 50,
) -> Page[JobPublic]:
    """The caller's jobs (an admin's: everyone's)."""
    jobs, total = crud.list_jobs(session, status=status, offset=offset, limit=limit, owner=principal.scope)
    page = Page[JobPublic](items=[JobPublic.of(j) for j in jobs], total=total, offset=offset, limit=limit)
    return for_caller(page, principal, settings)


@router.get("/{job_id}", response_model=JobPublic, responses=responses(404))
async def get_job(job_id: str, settings: SettingsDep, backend: BackendDep, principal: CurrentOwner) -> Response:
    """The hot polling path: served from a 0.25 s cache, else one thread-pool hop for the whole read."""
    views = JOB_VIEWS.get(job_id)
    if views is None:
        views = await run_in_threadpool(read_job, settings, job_id, backend) if is_id(job_id) else None
        if views is not None:
            JOB_VIEWS.put(job_id, views)
    if views is None or not principal.may_access(views[0]):
        raise HTTPException(404, f"job {job_id} not found")
    return Response(views[1] if principal.admin else views[2], media_type="application/json")


def read_job(settings: Settings, job_id: str, backend: SearchBackend) -> tuple[str, bytes, bytes] | None:
    """The job's owner, and its view as an admin and as its owner (server paths rewritten) see it."""
    with session_scope(settings.db_url) as session:
        job = crud.get_job(session, job_id=job_id)
        if job is None:
            return None
        heal = _heal_status(job, backend) if job.spec.get("heal") else None
        view = JobPublic.of(job, heal)
        redacted = for_caller(view, Principal(job.owner), settings)
        return job.owner, view.model_dump_json().encode(), redacted.model_dump_json().encode()


def _heal_status(job: Job, backend: SearchBackend) -> dict | None:
    """Where a healing job's heal stage stands (read from its study; None before the stage starts). Read only
    once a trial is recorded: the study's tables exist by then (a read racing the worker's first creation of
    Optuna's tables could collide with it)."""
    if job.trials_done <= 0:
        return None
    try:
        return backend.heal_status(job.study_name)
    except LookupError:  # the study is not created yet
        return None


@router.get("/{job_id}/trials", response_model=Page[dict], responses=responses(404, 422))
def list_trials(
    job: JobDep,
    backend: BackendDep,
    settings: SettingsDep,
    principal: CurrentOwner,
    offset: OffsetDep = 0,
    limit: LimitDep = 50,
) -> Page[dict]:
    """Trials as the search engine stored them (state, plan, metrics, feasibility), by trial number."""
    items: list[dict] = []
    total = 0
    if job.started_at is not None:
        try:
            items, total = backend.trial_page(job.study_name, offset=offset, limit=limit)
        except LookupError:  # the study is not created yet
            items, total = [], 0
    return for_caller(Page[dict](items=items, total=total, offset=offset, limit=limit), principal, settings)


@router.get("/{job_id}/pareto", response_model=ParetoPublic, responses=responses(404))
def get_pareto(
    job: JobDep, session: SessionDep, backend: BackendDep, settings: SettingsDep, principal: CurrentOwner
) -> ParetoPublic:
    """The latest Pareto front the workers recorded (empty before the first trial), and for a job that heals,
    the healed front (its healed candidates not dominated by healed quality and latency: pick winners there)."""
    snap = crud.latest_snapshot(session, job_id=job.id)
    if snap is None:
        return ParetoPublic(job_id=job.id, trials_done=0, hypervolume=None, front=[])
    healed = []
    if job.spec.get("heal"):
        with contextlib.suppress(LookupError):
            healed = backend.healed_front(job.study_name)
    pareto = ParetoPublic(
        job_id=job.id,
        trials_done=snap.trials_done,
        hypervolume=snap.hypervolume,
        front=snap.front,
        healed_front=healed,
    )
    return for_caller(pareto, principal, settings)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic, responses=responses(404, 409))
def cancel_job(job: JobDep, session: SessionDep, settings: SettingsDep, principal: CurrentOwner) -> JobPublic:
    """Cancel a queued job at once, or a running one between trials."""
    if job.status not in ACTIVE:
        raise HTTPException(409, f"job {job.id} is {job.status}; only queued or running jobs can be cancelled")
    crud.request_cancel(session, job=job)
    JOB_VIEWS.invalidate(job.id)
    return for_caller(JobPublic.of(job), principal, settings)


@router.delete("/{job_id}", status_code=204, responses=responses(404, 409))
def delete_job(job: JobDep, session: SessionDep, settings: SettingsDep, backend: BackendDep) -> Response:
    """Delete a finished job with its snapshots, exports (files too) and Optuna study."""
    if job.status in ACTIVE:
        raise HTTPException(409, f"job {job.id} is {job.status}; cancel it and wait until it stops")
    for export in crud.list_exports(session, job_id=job.id):
        # A healed export may still run (its worker stops at its next progress write and removes what it
        # writes after this); every attempt's files and the heal's shared ones go now.
        _remove(export.path)
        remove_export(settings.export_root, export.id, export.attempts)
    crud.delete_job(session, job=job)
    JOB_VIEWS.invalidate(job.id)
    session.commit()  # release the write lock (SQLite) before Optuna opens its own connection
    backend.delete_study(job.study_name)
    return Response(status_code=204)


def _remove(path: str | None) -> None:
    if not path:
        return
    archive = Path(path)
    archive.unlink(missing_ok=True)
    shutil.rmtree(archive.with_suffix(""), ignore_errors=True)
