"""Where an export's files lie under the export root, and their removal: shared by the worker, which writes
them, and the API, which removes them with the job (neither imports the other)."""

from __future__ import annotations

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

    def remove_attempt(self) -> None:
        """This attempt's checkpoint folder and archive."""
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
    """Every file export `export_id` may have under `root`: each attempt's checkpoint and archive, and the
    files its attempts share."""
    for attempt in range(1, max(attempts, 1) + 1):
        ExportFiles(root, export_id, attempt).remove_attempt()
    ExportFiles(root, export_id).remove_shared()
