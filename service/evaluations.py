"""Admission of an evaluation: its text and task files resolve as a job's calibration does (an uploaded dataset id,
or a file under a calibration root) and are checked before it is queued; task names pass as they are. Task YAML
files are refused here: they may name code to run (`!function`) and files anywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from prunesearch.pruning import lmtasks

from .auth import Principal
from .jobs import text_file
from .models import is_id
from .paths import PathRejected
from .schemas import EvaluationCreate
from .settings import Settings

_TASK_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,199}$")


def evaluation_request(
    body: EvaluationCreate, settings: Settings, session: Session, principal: Principal
) -> dict[str, Any]:
    """The evaluation as stored: the body with every file a checked local path (uploads only `principal`'s)."""
    request = body.model_dump(mode="json")
    request["data"] = [
        _checked_file(f"data.{i}", value, settings, session, principal, lmtasks.perplexity_task)
        for i, value in enumerate(body.data)
    ]
    request["tasks"] = [_task(f"tasks.{i}", value, settings, session, principal) for i, value in enumerate(body.tasks)]
    return request


def _task(field: str, value: str, settings: Settings, session: Session, principal: Principal) -> str:
    if is_id(value) or lmtasks.is_multiple_choice_file(value):
        return _checked_file(field, value, settings, session, principal, lmtasks.multiple_choice_task)
    if lmtasks.is_yaml(value):
        raise PathRejected(field, f"{field}: task YAML files are not accepted by the service; use prunesearch evaluate")
    if not _TASK_NAME.match(value):
        raise PathRejected(field, f"{field}: {value!r} is neither a dataset id, an allowed .jsonl file nor a task name")
    return value


def _checked_file(field: str, value: str, settings: Settings, session: Session, principal: Principal, build) -> str:
    """The file's path (resolved as a job's calibration: another owner's upload is as if it did not exist), once
    `build` (a task builder of `lmtasks`) accepts its content."""
    path = text_file(field, value, settings, session, principal)
    try:
        build(Path(path))
    except lmtasks.TaskFileError as exc:
        raise PathRejected(field, f"{field}: {exc}") from None
    return path
