"""Materialise one trial as a checkpoint directory and a tar archive with its size and sha256; when the export
asks for a heal, the trial's checkpoint is healed by distillation from the job's dense model first."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunesearch.choices import ExportStatus
from prunesearch.search.backend import SearchBackend
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.diskspace import check_free_space
from prunesearch.service.exportfiles import ExportFiles
from prunesearch.service.schemas import HealOptions
from prunesearch.service.settings import Settings

from . import metrics
from .exportprogress import ExportProgress, ExportTakenOver
from .heartbeat import Heartbeat

log = logging.getLogger(__name__)

# A heal saves its state about this many times over its run, so an attempt that takes over from a dead worker
# redoes at most this fraction of it (1/20), at the price of that many writes of the trainable state.
HEAL_CHECKPOINTS = 20


@dataclass(frozen=True)
class ExportTask:
    """What one export writes, read from its row and its job's."""

    study: str
    trial: int
    dtype: str
    teacher: str  # the job's dense model: the heal's teacher
    heal: dict[str, Any] | None  # `HealOptions` with paths resolved; None: no heal


def run_export(export_id: str, settings: Settings, *, backend: SearchBackend, attempt: int = 1) -> None:
    """Write `<exports>/<id>-<attempt>/` and its `.tar`; record the outcome (an error message on failure).

    Each attempt writes its own files, and only the export's latest attempt may record them: a worker that lost
    its lease (taken for dead) and finishes late changes nothing, and removes what it wrote. A failed export
    leaves no files; a worker that dies leaves the heal's saved state for the next attempt."""
    url, started = settings.db_url, time.monotonic()
    task = _read_task(url, export_id)
    files = ExportFiles(settings.export_root, export_id, attempt)
    progress = ExportProgress(url, export_id, attempt)
    try:
        with Heartbeat.for_export(url, export_id, attempt, settings.heartbeat_s):
            for earlier in range(1, attempt + 1):  # what workers that died on this export left (not the heal state)
                ExportFiles(settings.export_root, export_id, earlier).remove_attempt()
            check_free_space(files.root, settings.min_free_bytes)
            summary = _write_checkpoint(task, files, backend, progress)
            progress.phase("archiving")
            size, digest = write_archive(files.staged_dir, files.staged_archive)
            files.publish()
        outcome = dict(path=str(files.archive), size=size, sha256=digest, summary=_jsonable(summary))
        fields = dict(status=ExportStatus.SUCCEEDED, **outcome)
    except ExportTakenOver:  # seen while writing progress: stop now rather than heal on for nothing
        fields = None
    except Exception as exc:
        log.exception("export %s failed", export_id, extra={"export_id": export_id, "trial": task.trial})
        fields = dict(status=ExportStatus.FAILED, error=failure_message(exc))
    recorded = fields is not None and _finish(url, export_id, attempt, fields)
    if not recorded:
        ids = {"export_id": export_id, "trial": task.trial}
        log.warning("export %s: attempt %d lost the export; its output is dropped", export_id, attempt, extra=ids)
        files.remove_attempt()
        if not _running(url, export_id):  # deleted, or failed for good: no later attempt needs the heal's state
            files.remove_shared()
        return
    log.info("export %s %s", export_id, fields["status"], extra={"export_id": export_id, "trial": task.trial})
    metrics.export_done(fields["status"], time.monotonic() - started, _heal_seconds(fields.get("summary")))
    if fields["status"] == ExportStatus.FAILED:
        files.remove_attempt()
    files.remove_shared()


def _heal_seconds(summary: dict[str, Any] | None) -> float | None:
    heal = (summary or {}).get("heal")
    return heal.get("wall_seconds") if isinstance(heal, dict) else None


def failure_message(exc: Exception) -> str:
    """What the export's `error` says: a full disk plainly (the export can be asked for again once there is
    room), anything else as the exception's type and message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            "insufficient storage (507): the server's export volume is full; nothing was kept. Request the export "
            "again once space has been freed"
        )
    return f"{type(exc).__name__}: {exc}"[:2000]


def _read_task(url: str, export_id: str) -> ExportTask:
    with session_scope(url) as session:
        export = crud.get_export(session, export_id=export_id)
        job = crud.get_job(session, job_id=export.job_id)
        return ExportTask(job.study_name, export.trial, export.dtype, job.spec["model"], export.heal)


def _running(url: str, export_id: str) -> bool:
    """Whether the export still exists and runs (then a later attempt owns it, with the files attempts share)."""
    with session_scope(url) as session:
        export = crud.get_export(session, export_id=export_id)
        return export is not None and export.status == ExportStatus.RUNNING


def _finish(url: str, export_id: str, attempt: int, fields: dict[str, Any]) -> bool:
    with session_scope(url) as session:
        return crud.finish_export(session, export_id=export_id, attempt=attempt, **fields)


def _write_checkpoint(task: ExportTask, files: ExportFiles, backend: SearchBackend, progress: ExportProgress) -> dict:
    """The trial's checkpoint in `files.staged_dir` (healed when the task says so); the summary to store."""
    progress.phase("exporting")
    files.staging.mkdir(parents=True)
    if task.heal is None:
        summary = backend.export_trial(task.study, task.trial, files.staged_dir, dtype=task.dtype)
        return summary | ({"out": str(files.out_dir)} if "out" in summary else {})  # where it lies once published
    # The student trains in fp32; the heal writes the healed checkpoint in the export's dtype.
    shutil.rmtree(files.student, ignore_errors=True)  # a dead attempt's, perhaps half written
    summary = backend.export_trial(task.study, task.trial, files.student, dtype="fp32")
    result = _heal(task, files, progress)
    os.replace(files.healed, files.staged_dir)
    return summary | {"out": str(files.out_dir), "dtype": task.dtype, "heal": result | {"out_dir": str(files.out_dir)}}


def _heal(task: ExportTask, files: ExportFiles, progress: ExportProgress) -> dict[str, Any]:
    """Heal the attempt's unhealed trial into `files.healed` (resuming a dead attempt's saved state)."""
    from prunesearch.pruning.export import default_device  # torch: only where a heal runs
    from prunesearch.pruning.heal import heal

    options = HealOptions.model_validate(task.heal)
    total = options.settings().total_steps
    settings = options.settings(
        dtype=task.dtype,
        device=default_device(),
        checkpoint_every=max(1, math.ceil(total / HEAL_CHECKPOINTS)),
    )
    progress.phase("healing", step=0, total=total)
    result = heal(
        files.student,
        task.teacher,
        options.data,
        files.healed,
        settings,
        eval_files=options.eval or (),
        progress=progress.heal_step,
    )
    return result.to_dict()


def write_archive(directory: Path, archive: Path) -> tuple[int, str]:
    """Tar the directory's files (paths relative to it) and return the archive's size and sha256."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return archive.stat().st_size, file_sha256(archive)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(data: object) -> dict:
    value = finite(json.loads(json.dumps(data, default=str)))
    return value if isinstance(value, dict) else {"summary": value}


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON columns (PostgreSQL's above all) store no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
