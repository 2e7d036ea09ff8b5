"""Exports: request a checkpoint of one trial, follow it, download it as a tar archive."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import FileResponse

from prunesearch.choices import ExportStatus
from prunesearch.service import crud
from prunesearch.service.api.deps import BackendDep, ExportDep, JobDep, SessionDep, SettingsDep
from prunesearch.service.exports import export_conflict, heal_record
from prunesearch.service.schemas import ExportCreate, ExportPublic

router = APIRouter(tags=["exports"])


@router.post("/v1/jobs/{job_id}/exports", status_code=202, response_model=ExportPublic)
def create_export(
    job: JobDep,
    body: ExportCreate,
    session: SessionDep,
    settings: SettingsDep,
    backend: BackendDep,
    response: Response,
) -> ExportPublic:
    """Queue an export of trial `body.trial` (409 unless it is complete and feasible); a worker writes the
    checkpoint (healed first when `body.heal` says so) and its archive."""
    if conflict := export_conflict(backend, job, body.trial):
        raise HTTPException(409, conflict)
    heal = heal_record(body.heal, job, settings, session)
    export = crud.create_export(session, job_id=job.id, trial=body.trial, dtype=body.dtype, heal=heal)
    response.headers["Location"] = f"/v1/exports/{export.id}"
    return ExportPublic.of(export)


@router.get("/v1/exports/{export_id}", response_model=ExportPublic)
def get_export(export: ExportDep) -> ExportPublic:
    return ExportPublic.of(export)


@router.get("/v1/exports/{export_id}/download", response_class=FileResponse)
def download_export(export: ExportDep) -> FileResponse:
    """Stream the checkpoint's tar archive; `X-Checksum-SHA256` and `Content-Length` let clients verify it."""
    if export.status != ExportStatus.SUCCEEDED or not export.path:
        raise HTTPException(409, f"export {export.id} is {export.status}; download it once it has succeeded")
    archive = Path(export.path)
    if not archive.is_file():
        raise HTTPException(410, f"export {export.id}: the archive is no longer on the server")
    headers = {"X-Checksum-SHA256": export.sha256 or "", "X-Archive-Size": str(export.size)}
    return FileResponse(archive, media_type="application/x-tar", filename=archive.name, headers=headers)
