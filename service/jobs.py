"""Admission of a new job: resolve its paths and hardware, then insert it (idempotently)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from prunesearch.profilers.hardware import HardwareError, known_profiles, user_profile_dir
from prunesearch.profilers.registry import LOCAL_NAMES, check_engine

from . import crud
from .models import Job, is_id
from .paths import PathRejected, resolve_calibration, resolve_model
from .schemas import JobCreate
from .settings import Settings


def check_hardware(name: str) -> None:
    """Only named profiles: a request may not point the server at a profile file."""
    known = [*sorted(known_profiles(user_profile_dir())), *LOCAL_NAMES]
    if name not in known:
        raise HardwareError(f"unknown hardware {name!r}; known: {', '.join(known)}")


def resolved_spec(body: JobCreate, settings: Settings, session: Session) -> dict:
    """The stored spec: the body's search part with model and calibration as checked local paths."""
    check_hardware(body.hardware)
    check_engine(body.hardware, body.workload.engine)
    dataset = crud.get_dataset(session, dataset_id=body.calibration) if is_id(body.calibration) else None
    spec = body.search_spec()
    spec["model"] = checked_path("model", lambda: resolve_model(body.model, settings))
    dataset_path = dataset.path if dataset else None
    calibration = body.calibration
    spec["calibration"] = checked_path("calibration", lambda: resolve_calibration(calibration, settings, dataset_path))
    return spec


def checked_path(field: str, resolve) -> str:
    """Run a path resolution, turning filesystem errors on odd input (NUL bytes, huge names) into a 422."""
    try:
        return resolve()
    except (OSError, ValueError) as exc:
        if isinstance(exc, PathRejected):
            raise
        raise PathRejected(field, f"{field} is not a usable path: {exc}") from None


def submit_job(body: JobCreate, settings: Settings, session: Session, idempotency_key: str | None) -> Job:
    """Insert the job, or return the one already created with this idempotency key."""
    if idempotency_key:
        existing = crud.get_job_by_key(session, idempotency_key=idempotency_key)
        if existing is not None:
            return existing
    spec = resolved_spec(body, settings, session)
    try:
        with session.begin_nested():
            return crud.create_job(
                session,
                spec=spec,
                parallelism=body.parallelism,
                owner=body.owner,
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        # A concurrent retry with the same key won the race.
        existing = crud.get_job_by_key(session, idempotency_key=idempotency_key or "")
        if existing is None:
            raise
        return existing
