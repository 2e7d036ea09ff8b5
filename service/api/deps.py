"""Injected dependencies, as `Annotated` aliases the routes take as parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from sqlalchemy.orm import Session

from prunesearch.search.backend import SearchBackend
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import Export, Job, is_id
from prunesearch.service.settings import Settings


async def get_settings(request: Request) -> Settings:
    """Async on purpose: no I/O, so it need not hop to the thread pool."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_backend(request: Request) -> SearchBackend:
    """The search backend the app was built with (no I/O, so async like `get_settings`)."""
    return request.app.state.backend


BackendDep = Annotated[SearchBackend, Depends(get_backend)]


def get_session(request: Request, settings: SettingsDep) -> Iterator[Session]:
    """Requests that write take SQLite's write lock up front (`BEGIN IMMEDIATE`): a read-then-write
    transaction could otherwise fail at once with "database is locked" after a worker's commit."""
    with session_scope(settings.db_url, immediate=request.method != "GET") as session:
        yield session


# scope="function": the session commits when the route returns, before the response is sent (by default FastAPI
# would close it after the response, and a client acting on a 202 at once could miss what the request wrote).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_job(job_id: str, session: SessionDep) -> Job:
    job = crud.get_job(session, job_id=job_id) if is_id(job_id) else None
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


JobDep = Annotated[Job, Depends(get_job)]


def get_export(export_id: str, session: SessionDep) -> Export:
    export = crud.get_export(session, export_id=export_id) if is_id(export_id) else None
    if export is None:
        raise HTTPException(404, f"export {export_id} not found")
    return export


ExportDep = Annotated[Export, Depends(get_export)]
OffsetDep = Annotated[int, Query(ge=0, le=10_000_000)]
LimitDep = Annotated[int, Query(ge=1, le=500)]
