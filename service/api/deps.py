"""Injected dependencies, as `Annotated` aliases the routes take as parameters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from prunesearch.search.backend import SearchBackend
from prunesearch.service import crud
from prunesearch.service.api import auth
from prunesearch.service.auth import Principal
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


async def current_owner(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(auth.bearer)],
) -> Principal:
    """Who the request acts as: its bearer token's account, else (where tokens are optional) the local admin;
    a 401 for a bad, revoked or (where required) missing token. Every `/v1` route depends on it: give a new
    route a `CurrentOwner` parameter, or `dependencies=[Depends(current_owner)]` on its router."""
    return await auth.principal_of(request, credentials, settings)


CurrentOwner = Annotated[Principal, Depends(current_owner)]


def get_session(request: Request, settings: SettingsDep) -> Iterator[Session]:
    """Requests that write take SQLite's write lock up front (`BEGIN IMMEDIATE`): a read-then-write
    transaction could otherwise fail at once with "database is locked" after a worker's commit.

    Function scope: the session commits when the route returns, before the response is sent, so a 201/202
    means the row is stored (a GET right after it finds it; a failed commit is an error, not an acknowledgement).
    """
    with session_scope(settings.db_url, immediate=request.method != "GET") as session:
        yield session


# scope="function": the session commits when the route returns, before the response is sent (by default FastAPI
# would close it after the response, and a client acting on a 202 at once could miss what the request wrote).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_job(job_id: str, session: SessionDep, principal: CurrentOwner) -> Job:
    """The job, if `principal` may see it (a 404 for another owner's, as for one that does not exist)."""
    job = crud.get_job(session, job_id=job_id) if is_id(job_id) else None
    if job is None or not principal.may_access(job.owner):
        raise HTTPException(404, f"job {job_id} not found")
    return job


JobDep = Annotated[Job, Depends(get_job)]


def get_export(export_id: str, session: SessionDep, principal: CurrentOwner) -> Export:
    export = crud.get_export(session, export_id=export_id) if is_id(export_id) else None
    if export is None or not principal.may_access(export.owner):
        raise HTTPException(404, f"export {export_id} not found")
    return export


ExportDep = Annotated[Export, Depends(get_export)]
OffsetDep = Annotated[int, Query(ge=0, le=10_000_000)]
LimitDep = Annotated[int, Query(ge=1, le=500)]
