"""An export attempt's progress, written to its row for `GET /v1/exports/{id}`: the phase (exporting, healing,
archiving) at once, and while healing the step, total, loss and tokens/s at most once per interval."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from prunesearch.pruning.healsettings import HealProgress
from prunesearch.service import crud
from prunesearch.service.db import session_scope

log = logging.getLogger(__name__)

# Heal steps on a small model take milliseconds: one write a second is plenty for a client polling the status.
PROGRESS_INTERVAL_S = 1.0


class ExportTakenOver(RuntimeError):
    """A later attempt owns the export (this worker was taken for dead): this attempt stops."""


class ExportProgress:
    """Writes the progress of attempt `attempt` of export `export_id`; each write also renews its lease."""

    def __init__(self, url: str, export_id: str, attempt: int, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._url, self._export_id, self._attempt, self._interval = url, export_id, attempt, interval_s
        self.current: dict[str, Any] = {}
        self._written_at = -math.inf

    def phase(self, name: str, **fields: Any) -> None:
        """Enter phase `name`; fields given replace the step fields, others stay (the heal's last step shows
        while archiving)."""
        self.current = {**(fields or self.current), "phase": name}
        self._write()

    def heal_step(self, progress: HealProgress) -> None:
        """The heal's progress callback: throttled, except the last step, which is always written."""
        last = progress.step >= progress.total_steps
        if not last and time.monotonic() - self._written_at < self._interval:
            return
        loss = progress.loss if math.isfinite(progress.loss) else None
        self.current = {
            "phase": "healing",
            "step": progress.step,
            "total": progress.total_steps,
            "loss": None if loss is None else round(loss, 6),
            "tokens_per_s": round(progress.tokens_per_second, 1),
        }
        self._write()

    def _write(self) -> None:
        """Store `current`; raise `ExportTakenOver` when a later attempt owns the row. A database error is only
        logged: progress is advisory, and the heartbeat keeps the lease."""
        self._written_at = time.monotonic()
        try:
            with session_scope(self._url) as session:
                ours = crud.record_export_progress(
                    session, export_id=self._export_id, attempt=self._attempt, progress=self.current
                )
        except Exception:
            log.warning("export %s: progress not recorded", self._export_id, exc_info=True)
            return
        if not ours:
            raise ExportTakenOver(f"export {self._export_id}: attempt {self._attempt} was taken over")
