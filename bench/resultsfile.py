"""The benches' JSON results files: merge one figure at a path and write at once, and name the machine."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def record(results: Path, path: list[str], value) -> None:
    """Merge `value` into `results` at `path` and write it at once (a killed run keeps what it measured)."""
    data = json.loads(results.read_text()) if results.is_file() else {}
    data["machine"] = machine()
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    tmp = results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, results)


def machine() -> str:
    """The CPU's model name, cores, torch threads and torch version."""
    import torch

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
