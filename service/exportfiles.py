"""Where an export's files lie under the export root, and their removal: shared by the worker, which writes
them, and the API, which removes them with the job (neither imports the other)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ExportFiles:
    """Where an attempt writes. The checkpoint folder and its archive are the attempt's own. The unhealed trial,
    the healed folder and the heal's work folder beside it (its resumable state, `<healed>.heal-work`) are named
    by the export alone: an attempt that takes over from a dead worker resumes the heal at the dead worker's last
    saved step, which needs the same student (the heal's fingerprint of a model includes the folder it was
    loaded from) and the same work folder."""

    def __init__(self, root: Path, export_id: str, attempt: int = 1) -> None:
        root = root.resolve()  # the heal names its work folder after the resolved output path
        self.root = root
        self.out_dir = root / f"{export_id}-{attempt}"
        self.archive = self.out_dir.with_suffix(".tar")
        self.student = root / f"{export_id}.student"
        self.healed = root / f"{export_id}.healed"
        # Written here first, then renamed into place: a half-written checkpoint or archive never has the name
        # of a finished one, and one folder holds all an attempt wrote.
        self.staging = root / f".{export_id}-{attempt}.partial"
        self.staged_dir = self.staging / self.out_dir.name
        self.staged_archive = self.staging / self.archive.name

    def publish(self) -> None:
        """Rename the staged checkpoint and archive into place (same volume: atomic renames)."""
        os.replace(self.staged_dir, self.out_dir)
        os.replace(self.staged_archive, self.archive)
        self.staging.rmdir()

    def remove_attempt(self) -> None:
        """This attempt's checkpoint folder and archive, finished or staged."""
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.archive.unlink(missing_ok=True)

    def remove_shared(self) -> None:
        """The unhealed trial, the healed folder, the heal's work folder and any half-written temporary beside
        them: only the attempt that owns the export may, once it has recorded the outcome (or once the export
        is gone or has failed for good)."""
        leftovers = [*self.root.glob(f"{self.healed.name}.*"), *self.root.glob(f".{self.healed.name}.*")]
        for path in [self.student, self.healed, *leftovers]:
            shutil.rmtree(path, ignore_errors=True)


def remove_export(root: Path, export_id: str, attempts: int) -> None:
    """Every file export `export_id` may have under `root`: each attempt's checkpoint and archive (those of
    attempts the count missed too: whatever is named after the export), and the files its attempts share."""
    for attempt in range(1, max(attempts, 1) + 1):
        ExportFiles(root, export_id, attempt).remove_attempt()
    ExportFiles(root, export_id).remove_shared()
    for path in [*root.glob(f"{export_id}-*"), *root.glob(f".{export_id}-*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
