"""Where prunesearch keeps per-machine data (caches, calibrations, user hardware profiles)."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """`$PRUNESEARCH_HOME`, else `~/.cache/prunesearch`."""
    return Path(os.environ.get("PRUNESEARCH_HOME") or Path.home() / ".cache" / "prunesearch")
