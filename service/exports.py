"""Admission of an export: a heal's training and evaluation text resolve as a job's calibration does (an uploaded
dataset id, or a file under a calibration root), and default to the job's calibration text."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from prunesearch.search.backend import SearchBackend

from . import crud
from .jobs import checked_path
from .models import Job, is_id
from .paths import resolve_calibration
from .schemas import HealOptions
from .settings import Settings


def heal_record(options: HealOptions | None, job: Job, settings: Settings, session: Session) -> dict[str, Any] | None:
    """The heal as stored on the export: the options with `data` and `eval` as checked local paths."""
    if options is None:
        return None
    record = options.model_dump(mode="json")
    calibration = job.spec["calibration"]
    record["data"] = _text_file("heal.data", options.data, settings, session) if options.data else calibration
    if options.eval is None:
        record["eval"] = [calibration]
    else:
        record["eval"] = [_text_file(f"heal.eval.{i}", v, settings, session) for i, v in enumerate(options.eval)]
    return record


def _text_file(field: str, value: str, settings: Settings, session: Session) -> str:
    dataset = crud.get_dataset(session, dataset_id=value) if is_id(value) else None
    dataset_path = dataset.path if dataset else None
    return checked_path(field, lambda: resolve_calibration(value, settings, dataset_path, field))


def export_conflict(backend: SearchBackend, job: Job, trial: int) -> str | None:
    """Why trial `trial` of `job` cannot be exported (None: it can): it has not run, is still running, failed,
    or broke a constraint. The API answers 409 with it when the export is asked for, not once a worker fails it."""
    try:
        record = backend.trial(job.study_name, trial)
    except LookupError:  # the search has not started
        record = None
    if record is None:
        return f"job {job.id} has no trial {trial} yet ({job.trials_done} trials done)"
    if record["state"] != "complete":
        state = {"running": "still running", "fail": "failed"}.get(record["state"], record["state"])
        return f"trial {trial} of job {job.id} is {state}: only a complete trial can be exported"
    if not record["feasible"]:
        return f"trial {trial} of job {job.id} is infeasible (it breaks a constraint): export a feasible trial"
    return None
