"""Materialise one trial as a checkpoint directory and a tar archive with its size and sha256."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from pathlib import Path

from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.engine import search_engine
from prunesearch.service.settings import Settings

from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


def run_export(export_id: str, settings: Settings) -> None:
    """Write `<exports>/<id>/` and `<exports>/<id>.tar`; record the outcome (an error message on failure)."""
    url = settings.db_url
    with session_scope(url) as session:
        export = crud.get_export(session, export_id=export_id)
        job = crud.get_job(session, job_id=export.job_id)
        study, trial, dtype = job.study_name, export.trial, export.dtype
    out_dir = settings.export_root / export_id
    try:
        with Heartbeat.for_export(url, export_id, settings.heartbeat_s):
            shutil.rmtree(out_dir, ignore_errors=True)  # a dead worker's partial output, if any
            summary = search_engine().export_trial(url, study, trial, out_dir, dtype=dtype)
            archive = out_dir.with_suffix(".tar")
            size, digest = write_archive(out_dir, archive)
        fields = dict(status="succeeded", path=str(archive), size=size, sha256=digest, summary=_jsonable(summary))
    except Exception as exc:
        log.exception("export %s failed", export_id)
        fields = dict(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
    with session_scope(url) as session:
        crud.finish_export(session, export_id=export_id, **fields)


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
