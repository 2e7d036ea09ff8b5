"""Server paths out of what non-admins read: a job's resolved model and calibration, an export's heal files and
summary, error messages. A path under one of the server's directories (the data, model, calibration and exports
roots, the bundled examples, the home and temporary directories, the Python prefix) becomes relative to it, as a
client names models and calibration; any other absolute path is cut to its file name."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from .settings import EXAMPLES_DIR, Settings

# An absolute path of two or more parts that starts a word and is not an API path (`/v1/exports/ID/download`).
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])(?!/v1/)/(?:[^\s/'\"<>(),;:|]+/)+([^\s/'\"<>(),;:|]*)")


class PathRedactor:
    """Rewrites server paths in strings, and in the keys and values of nested dicts and lists."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        # Longest first, so a path under a nested root (the uploads under the data dir) is cut at the inner one.
        prefixes = sorted({p for root in roots for p in (root, str(Path(root).resolve()))}, key=len, reverse=True)
        alternatives = "|".join(re.escape(p.rstrip("/")) for p in prefixes)
        self.roots = re.compile(rf"(?<![\w.~/-])(?:{alternatives})(?:/|(?=[\s'\"<>(),;:|]|$))")

    def text(self, value: str) -> str:
        if "/" not in value:
            return value
        value = self.roots.sub(lambda match: "" if match.group().endswith("/") else ".", value)
        return _ABSOLUTE.sub(lambda match: match.group(1) or ".", value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def redactor_for(settings: Settings) -> PathRedactor:
    """The redactor of `settings`' directories (built once per set of directories)."""
    key = (settings.data_dir, settings.exports_dir, settings.model_roots, settings.calibration_roots)
    key = tuple(tuple(v) if isinstance(v, list) else v for v in key)
    redactor = _REDACTORS.get(key)
    if redactor is None:
        if len(_REDACTORS) >= 64:
            _REDACTORS.clear()
        redactor = _REDACTORS[key] = PathRedactor(server_roots(settings))
    return redactor


_REDACTORS: dict[tuple, PathRedactor] = {}


def server_roots(settings: Settings) -> tuple[str, ...]:
    roots = [
        settings.data_dir,
        settings.datasets_dir,
        settings.export_root,
        *settings.allowed_model_roots,
        *settings.allowed_calibration_roots,
        EXAMPLES_DIR,
        Path.home(),
        Path(tempfile.gettempdir()),
        Path(sys.prefix),
    ]
    return tuple(str(Path(root).expanduser().absolute()) for root in roots if str(root) not in ("", "/"))
