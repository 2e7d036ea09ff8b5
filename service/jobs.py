"""Admission of a new job: resolve its paths and hardware, then insert it (idempotently)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from prunesearch.profilers.hardware import HardwareError, known_profiles, user_profile_dir
from prunesearch.profilers.registry import LOCAL_NAMES, check_engine

from . import crud
from .auth import Principal
from .models import Dataset, Job, is_id
from .paths import PathRejected, resolve_calibration, resolve_model
from .schemas import JobCreate
from .settings import Settings


def check_hardware(name: str) -> None:
    """Only named profiles: a request may not point the server at a profile file."""
    known = [*sorted(known_profiles(user_profile_dir())), *LOCAL_NAMES]
    if name not in known:
        raise HardwareError(f"unknown hardware {name!r}; known: {', '.join(known)}")


def resolved_spec(body: JobCreate, settings: Settings, session: Session, principal: Principal) -> dict:
    """The stored spec: the body's search part with model and calibration as checked local paths (uploads of
    other owners are not `principal`'s to name)."""
    check_hardware(body.hardware)
    check_engine(body.hardware, body.workload.engine)
    spec = body.search_spec()
    spec["model"] = checked_path("model", lambda: resolve_model(body.model, settings))
    spec["calibration"] = text_file("calibration", body.calibration, settings, session, principal)
    return spec


def text_file(field: str, value: str, settings: Settings, session: Session, principal: Principal) -> str:
    """A calibration-like text a request names: an upload of `principal`'s by id, or a file under a calibration
    root; a file in another owner's upload is refused as if it did not exist."""
    dataset = owned_dataset(session, value, principal)
    dataset_path = dataset.path if dataset else None
    path = checked_path(field, lambda: resolve_calibration(value, settings, dataset_path, field))
    if dataset is None and not principal.admin and not _own_upload(Path(path), settings, session, principal):
        raise PathRejected(field, f"{field} {value!r} is neither a dataset id nor an allowed file")
    return path


def owned_dataset(session: Session, value: str, principal: Principal) -> Dataset | None:
    """The upload with id `value` if `principal` may use it."""
    dataset = crud.get_dataset(session, dataset_id=value) if is_id(value) else None
    return dataset if dataset is not None and principal.may_access(dataset.owner) else None


def _own_upload(path: Path, settings: Settings, session: Session, principal: Principal) -> bool:
    """False for a file under the uploads directory that is not one of `principal`'s uploads (True elsewhere)."""
    uploads = settings.datasets_dir.resolve()
    if not path.is_relative_to(uploads):
        return True
    parts = path.relative_to(uploads).parts
    dataset = owned_dataset(session, parts[0], principal) if parts else None
    return dataset is not None and Path(dataset.path).resolve() == path


def checked_path(field: str, resolve) -> str:
    """Run a path resolution, turning filesystem errors on odd input (NUL bytes, huge names, `~nosuchuser`,
    symlink loops) into a 422."""
    try:
        return resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, PathRejected):
            raise
        raise PathRejected(field, f"{field} is not a usable path: {exc}") from None


def submit_job(
    body: JobCreate, settings: Settings, session: Session, idempotency_key: str | None, principal: Principal
) -> Job:
    """Insert the job for `principal` (or, by an admin, for `body.owner`), or return the one its owner already
    created with this idempotency key."""
    owner = body.owner or principal.owner
    if idempotency_key:
        existing = crud.get_job_by_key(session, owner=owner, idempotency_key=idempotency_key)
        if existing is not None:
            return existing
    spec = resolved_spec(body, settings, session, principal)
    try:
        with session.begin_nested():
            return crud.create_job(
                session,
                spec=spec,
                parallelism=body.parallelism,
                owner=owner,
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        # A concurrent retry with the same key won the race.
        existing = crud.get_job_by_key(session, owner=owner, idempotency_key=idempotency_key or "")
        if existing is None:
            raise
        return existing
