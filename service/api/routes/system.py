"""Health, readiness and the hardware profiles jobs may name."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
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
def readyz(session: SessionDep) -> dict:
    """The database answers and its schema is migrated."""
    try:
        revision = session.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except Exception as exc:
        raise HTTPException(503, f"database not ready: {type(exc).__name__}") from None
    if revision is None:
        raise HTTPException(503, "database not migrated: run `prunesearch db upgrade`")
    return {"status": "ready", "schema": revision}


@router.get("/v1/hardware", dependencies=[Depends(current_owner)], responses=UNAUTHORIZED)
def hardware() -> dict:
    """Named hardware profiles (datasheet peaks) and the local, measured options."""
    profiles = [p.to_dict() for p in known_profiles(user_profile_dir()).values()]
    return {"profiles": profiles, "local": list(LOCAL_NAMES)}
