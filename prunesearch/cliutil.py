"""What every sub-CLI shares: the user-error type, JSON output, and reading the files a user names.

A leaf: it imports nothing from prunesearch, so every sub-CLI (pruning, profilers, search, service) imports it and
none imports `prunesearch.cli`, which imports them.

Exit codes (`prunesearch.cli.main`): a `CLIError` is a mistake in what the user asked for, printed as one line on
stderr with exit code 2. Anything else is a bug: its traceback is kept and the exit code is 1. Sub-commands turn
the domain's input errors (an invalid plan, an unknown hardware profile, ...) into `CLIError` where the input is
read, or by naming them with `user_errors`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R")


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2, never a traceback."""


def user_errors(*types: type[BaseException]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a sub-command handler so that `types` (the domain's input errors it may raise, such as
    `PlanError`) become `CLIError`; every other exception stays a bug with its traceback."""

    def decorate(handler: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(handler)
        def wrapped(*args: Any, **kwargs: Any) -> R:
            try:
                return handler(*args, **kwargs)
            except types as exc:
                raise CLIError(one_line(exc)) from exc

        return wrapped

    return decorate


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a `KeyError`'s quotes removed, several lines joined by '; ')."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout (enum members print as their values)."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a file the user named, or a `CLIError` saying it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {what} {path}: {exc}") from exc


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file the user named, parsed; a `CLIError` when it is missing or not JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{what} {path} is not valid JSON: {exc}") from exc


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """An output directory the user named, created if needed; a `CLIError` when a file is in the way or it
    cannot be made (checked before any slow work starts)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"{flag} {path} cannot be used as a directory: {exc.strerror or exc}") from exc
    return path


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """`config.json` of a model directory the user named, as a dict."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CLIError(f"{model_dir} has no config.json; --model must be a model directory")
    return read_json(path, "model config")


def validation_message(errors: Iterable[Mapping[str, Any]], flags: Mapping[str, str] | None = None) -> str:
    """One line from pydantic's `ValidationError.errors()`: `field: problem; ...`, a field shown as its
    command-line flag where `flags` names one (`{"workload.batch": "--batch"}`)."""
    parts = []
    for error in errors:
        field = ".".join(map(str, error["loc"]))
        parts.append(f"{(flags or {}).get(field, field)}: {_problem(error)}")
    return "; ".join(parts)


def _problem(error: Mapping[str, Any]) -> str:
    bounds = error.get("ctx") or {}
    if error["type"] == "greater_than_equal":
        return f"must be at least {bounds['ge']} (got {error['input']})"
    if error["type"] == "less_than_equal":
        return f"must be at most {bounds['le']} (got {error['input']})"
    return str(error["msg"])
