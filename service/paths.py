"""Resolve the model and calibration a request names, refusing anything outside the configured roots."""

from __future__ import annotations

import re
from pathlib import Path

from .settings import Settings

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PathRejected(ValueError):
    """A request named a path it may not use; `field` says which body field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def within(path: Path, roots: list[Path]) -> bool:
    """Whether `path` (symlinks resolved) lies inside one of `roots`."""
    real = path.resolve()
    return any(real.is_relative_to(root.resolve()) for root in roots)


def resolve_model(value: str, settings: Settings) -> str:
    """A model directory under an allowed root (relative paths are taken from the first root), or a hub id."""
    roots = settings.allowed_model_roots
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        local = [root / candidate for root in roots if (root / candidate).exists()]
        candidate = local[0] if local else candidate
    if candidate.is_absolute() or candidate.exists():
        if not within(candidate, roots):
            raise PathRejected("model", f"model path {value!r} is outside the allowed model roots")
        if not (candidate / "config.json").is_file():
            raise PathRejected("model", f"model {value!r} is not a directory holding config.json")
        return str(candidate.resolve())
    if settings.allow_hub and _HUB_ID.match(value):
        return value
    raise PathRejected("model", f"model {value!r} not found under the allowed model roots (hub ids are disabled)")


def resolve_calibration(value: str, settings: Settings, dataset_path: str | None, field: str = "calibration") -> str:
    """An uploaded dataset (its path, found by the caller) or a file under an allowed calibration root; `field`
    names the request field in errors (a job's calibration, a heal's data or evaluation text)."""
    if dataset_path is not None:
        return dataset_path
    candidate = Path(value).expanduser()
    roots = settings.allowed_calibration_roots
    if not candidate.is_absolute():
        local = [root / candidate for root in roots if (root / candidate).is_file()]
        if not local:
            raise PathRejected(field, f"{field} {value!r} is neither a dataset id nor an allowed file")
        candidate = local[0]
    if not within(candidate, roots):
        raise PathRejected(field, f"{field} path {value!r} is outside the allowed calibration roots")
    if not candidate.is_file():
        raise PathRejected(field, f"{field} file {value!r} does not exist")
    return str(candidate.resolve())
