"""Admission of an export: a heal's training and evaluation text resolve as a job's calibration does (an uploaded
dataset id, or a file under a calibration root), and default to the job's calibration text."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from prunesearch.search.backend import SearchBackend

from .auth import Principal
from .jobs import text_file
from .models import Job
from .schemas import HealOptions
from .settings import Settings


def heal_record(
    options: HealOptions | None, job: Job, settings: Settings, session: Session, principal: Principal
) -> dict[str, Any] | None:
    """The heal as stored on the export: the options with `data` and `eval` as checked local paths (uploads
    `principal` may use)."""
    if options is None:
        return None
    record = options.model_dump(mode="json")
    calibration = job.spec["calibration"]

    def checked(field: str, value: str) -> str:
        return text_file(field, value, settings, session, principal)

    record["data"] = checked("heal.data", options.data) if options.data else calibration
    if options.eval is None:
        record["eval"] = [calibration]
    else:
        record["eval"] = [checked(f"heal.eval.{i}", v) for i, v in enumerate(options.eval)]
    return record


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
