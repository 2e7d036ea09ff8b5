"""`GET /v1/jobs/{id}/events`: a job's events as Server-Sent Events, resumable with `Last-Event-ID`.

Workers write the events to the database (`service.events`); this route polls it every `events_poll_s` and
sends what is new. Without `Last-Event-ID` a client gets the job's whole history first. The stream ends after the
event that leaves the job final with no export of it queued or running."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from prunesearch.choices import FINAL_JOB_STATUSES, EventKind, ExportStatus
from prunesearch.service import crud
from prunesearch.service.api.auth import UNAUTHORIZED
from prunesearch.service.api.deps import CurrentOwner, SettingsDep
from prunesearch.service.auth import Principal
from prunesearch.service.db import session_scope
from prunesearch.service.events import events_after
from prunesearch.service.models import is_id

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=UNAUTHORIZED)

PAGE = 500  # events read per query
PING_S = 15  # a comment line this often keeps proxies from closing a quiet stream
SHUTDOWN_GRACE_S = 2.0  # a stream's time to end by itself when the server stops (it polls every events_poll_s)

EVENT_STREAM_DOC = {
    200: {
        "description": (
            "`text/event-stream`: one event per change, `id` = the job's event number (send it back as "
            "`Last-Event-ID` to resume), `event` = " + " | ".join(kind.value for kind in EventKind) + ", "
            "`data` = a JSON object (see docs/service.md, Live events)."
        ),
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string", "enum": [kind.value for kind in EventKind]},
                        "data": {"type": "string", "description": "a JSON object"},
                    },
                    "required": ["id", "event", "data"],
                }
            }
        },
    },
    404: {"description": "no such job"},
}


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=EVENT_STREAM_DOC)
async def job_events(
    job_id: str,
    settings: SettingsDep,
    principal: CurrentOwner,
    last_event_id: Annotated[int, Header(ge=0, le=2**62, description="resume after this event")] = 0,
) -> EventSourceResponse:
    """The job's events: `status` (its state changed), `trial` (a trial finished), `front` (the Pareto front
    changed), `export` (an export of it changed state or progress: phase, heal step and loss)."""
    url = settings.db_url
    if not is_id(job_id) or not await run_in_threadpool(job_visible, url, job_id, principal):
        raise HTTPException(404, f"job {job_id} not found")
    shutdown = anyio.Event()  # set by sse-starlette when the server stops: the stream then ends cleanly
    events = stream(url, job_id, last_event_id, settings.events_poll_s, shutdown)
    return EventSourceResponse(events, ping=PING_S, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)


def job_visible(url: str, job_id: str, principal: Principal) -> bool:
    """Whether the stream may open: the job exists and `principal` may read it (else a 404, as in `JobDep`)."""
    with session_scope(url) as session:
        job = crud.get_job(session, job_id=job_id)
        return job is not None and principal.may_access(job.owner)


async def stream(
    url: str, job_id: str, after: int, poll_s: float, shutdown: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    """Events numbered above `after`, as they are committed, until the job is done (or deleted) or the server
    stops (a client resumes elsewhere with `Last-Event-ID`)."""
    while not shutdown.is_set():
        events, done = await run_in_threadpool(read_events, url, job_id, after)
        for seq, kind, data in events:
            yield ServerSentEvent(data=json.dumps(data), event=kind, id=str(seq))
            after = seq
        if done:
            return
        if len(events) < PAGE:
            with anyio.move_on_after(poll_s):
                await shutdown.wait()


def read_events(url: str, job_id: str, after: int) -> tuple[list[tuple[int, str, Any]], bool]:
    """The next page of events, and whether they are the last: the job is gone, or final with no export of it
    queued or running. The state is read before the events, so an event committed with that state is read too."""
    with session_scope(url) as session:
        job = crud.get_job(session, job_id=job_id)
        settled = job is None or (job.status in FINAL_JOB_STATUSES and not _exports_active(session, job_id))
        rows = [(e.seq, e.kind, e.data) for e in events_after(session, job_id=job_id, after=after, limit=PAGE)]
    return rows, settled and len(rows) < PAGE


def _exports_active(session, job_id: str) -> bool:
    active = (ExportStatus.QUEUED, ExportStatus.RUNNING)
    return any(export.status in active for export in crud.list_exports(session, job_id=job_id))
