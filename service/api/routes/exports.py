"""Exports: request a checkpoint of one trial, follow it, download it as a tar archive."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import FileResponse

from prunesearch.choices import ExportStatus
from prunesearch.service import crud
from prunesearch.service.api.auth import UNAUTHORIZED, for_caller
from prunesearch.service.api.deps import (
    BackendDep,
    CurrentOwner,
    ExportDep,
    JobDep,
    SessionDep,
    SettingsDep,
    current_owner,
)
from prunesearch.service.api.errors import responses
from prunesearch.service.diskspace import check_free_space
from prunesearch.service.exports import export_conflict, heal_record
from prunesearch.service.schemas import ExportCreate, ExportPublic

router = APIRouter(tags=["exports"], dependencies=[Depends(current_owner)], responses=UNAUTHORIZED)


@router.post(
    "/v1/jobs/{job_id}/exports",
    status_code=202,
    response_model=ExportPublic,
    responses=responses(400, 404, 409, 413, 422, 507),
)
def create_export(
    job: JobDep,
    body: ExportCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentOwner,
    backend: BackendDep,
    response: Response,
) -> ExportPublic:
    """Queue an export of trial `body.trial` (409 unless it is complete and feasible); a worker writes the
    checkpoint (healed first when `body.heal` says so) and its archive."""
    heal = heal_record(body.heal, job, settings, session, principal)  # bad options: 422 first
    if conflict := export_conflict(backend, job, body.trial):
        raise HTTPException(409, conflict)
    check_free_space(settings.export_root, settings.min_free_bytes)  # a 507 now, not a failed export later
    export = crud.create_export(session, job_id=job.id, trial=body.trial, dtype=body.dtype, heal=heal, owner=job.owner)
    response.headers["Location"] = f"/v1/exports/{export.id}"
    return for_caller(ExportPublic.of(export), principal, settings)


@router.get("/v1/exports/{export_id}", response_model=ExportPublic, responses=responses(404))
def get_export(export: ExportDep, settings: SettingsDep, principal: CurrentOwner) -> ExportPublic:
    return for_caller(ExportPublic.of(export), principal, settings)


@router.get(
    "/v1/exports/{export_id}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/x-tar": {}}}} | responses(404, 409, 410),
)
def download_export(export: ExportDep) -> FileResponse:
    """Stream the checkpoint's tar archive; `X-Checksum-SHA256` and `Content-Length` let clients verify it."""
    if export.status != ExportStatus.SUCCEEDED or not export.path:
        raise HTTPException(409, f"export {export.id} is {export.status}; download it once it has succeeded")
    archive = Path(export.path)
    if not archive.is_file():
        raise HTTPException(410, f"export {export.id}: the archive is no longer on the server")
    headers = {"X-Checksum-SHA256": export.sha256 or "", "X-Archive-Size": str(export.size)}
    return FileResponse(archive, media_type="application/x-tar", filename=archive.name, headers=headers)
