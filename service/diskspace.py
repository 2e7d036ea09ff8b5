"""Free disk space: an upload or export refused up front (a 507) when its volume is nearly full, rather than
failing half written."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class InsufficientStorage(OSError):
    """Too little free space to start writing (an `ENOSPC` OSError, so handlers treat it as a full disk)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def free_bytes(path: Path) -> int:
    """Free bytes on the volume that holds `path` (or would hold it: its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage(Path.cwd()).free


def check_free_space(path: Path, min_free: int) -> None:
    """Raise `InsufficientStorage` when the volume of `path` has less than `min_free` bytes free."""
    if min_free > 0 and free_bytes(path) < min_free:
        raise InsufficientStorage(f"less than {min_free} bytes free on the server's volume")
