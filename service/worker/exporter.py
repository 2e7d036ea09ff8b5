"""Materialise one trial as a checkpoint directory and a tar archive with its size and sha256."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from pathlib import Path

from prunesearch.choices import ExportStatus
from prunesearch.search.backend import SearchBackend
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.settings import Settings

from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


def run_export(export_id: str, settings: Settings, *, backend: SearchBackend, attempt: int = 1) -> None:
    """Write `<exports>/<id>-<attempt>/` and its `.tar`; record the outcome (an error message on failure).

    Each attempt writes its own files, and only the export's latest attempt may record them: a worker that lost
    its lease (taken for dead) and finishes late changes nothing, and removes what it wrote."""
    url = settings.db_url
    with session_scope(url) as session:
        export = crud.get_export(session, export_id=export_id)
        job = crud.get_job(session, job_id=export.job_id)
        study, trial, dtype = job.study_name, export.trial, export.dtype
    out_dir = settings.export_root / f"{export_id}-{attempt}"
    archive = out_dir.with_suffix(".tar")
    try:
        with Heartbeat.for_export(url, export_id, attempt, settings.heartbeat_s):
            shutil.rmtree(out_dir, ignore_errors=True)
            summary = backend.export_trial(study, trial, out_dir, dtype=dtype)
            size, digest = write_archive(out_dir, archive)
        outcome = dict(path=str(archive), size=size, sha256=digest, summary=_jsonable(summary))
        fields = dict(status=ExportStatus.SUCCEEDED, **outcome)
    except Exception as exc:
        log.exception("export %s failed", export_id)
        fields = dict(status=ExportStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
    with session_scope(url) as session:
        recorded = crud.finish_export(session, export_id=export_id, attempt=attempt, **fields)
    if not recorded:
        log.warning("export %s: attempt %d was taken over by a later one; its output is dropped", export_id, attempt)
        shutil.rmtree(out_dir, ignore_errors=True)
        archive.unlink(missing_ok=True)


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
    value = json.loads(json.dumps(data, default=str))
    return value if isinstance(value, dict) else {"summary": value}
