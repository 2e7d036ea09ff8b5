"""Health, readiness and the hardware profiles jobs may name."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import text

from prunesearch.migrations import VERSION_TABLE
from prunesearch.profilers.hardware import known_profiles, user_profile_dir
from prunesearch.profilers.registry import LOCAL_NAMES
from prunesearch.service.api.auth import UNAUTHORIZED
from prunesearch.service.api.deps import SessionDep, current_owner
from prunesearch.service.api.errors import responses

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503))
def readyz(session: SessionDep, request: Request) -> dict:
    """The database answers and its schema is migrated; under `prunesearch serve`, its worker runs too
    (`worker`: running, or restarted `restarts` times; 503 while a dead one waits to be restarted)."""
    try:
        revision = session.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except Exception as exc:
        raise HTTPException(503, f"database not ready: {type(exc).__name__}") from None
    if revision is None:
        raise HTTPException(503, "database not migrated: run `prunesearch db upgrade`")
    supervisor = getattr(request.app.state, "worker_supervisor", None)
    worker = supervisor.status() if supervisor is not None else {}
    if worker.get("worker") == "down":
        raise HTTPException(503, f"worker down, restarting ({worker['restarts']} restarts so far)")
    return {"status": "ready", "schema": revision, **worker}


@router.get("/v1/hardware", dependencies=[Depends(current_owner)], responses=UNAUTHORIZED)
def hardware() -> dict:
    """Named hardware profiles (datasheet peaks) and the local, measured options."""
    profiles = [p.to_dict() for p in known_profiles(user_profile_dir()).values()]
    return {"profiles": profiles, "local": list(LOCAL_NAMES)}
