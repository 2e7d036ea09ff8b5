"""`POST /v1/datasets`: upload a calibration file (`.txt` or `.jsonl`) and get an id to use in jobs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, UploadFile

from prunesearch.choices import TextFormat, values
from prunesearch.service import crud
from prunesearch.service.api.auth import UNAUTHORIZED
from prunesearch.service.api.deps import CurrentOwner, SessionDep, SettingsDep, current_owner
from prunesearch.service.models import new_id
from prunesearch.service.schemas import DatasetPublic

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(current_owner)], responses=UNAUTHORIZED
)
EXTENSIONS = tuple(values(TextFormat))
CHUNK = 1 << 20


@router.post("", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    file: UploadFile, session: SessionDep, settings: SettingsDep, principal: CurrentOwner
) -> DatasetPublic:
    """Store the upload under the data directory; the id is what the caller's jobs name as `calibration`."""
    name = Path(file.filename or "").name
    if Path(name).suffix.lower() not in EXTENSIONS:
        raise HTTPException(422, f"calibration uploads must be {' or '.join(EXTENSIONS)} files, got {name!r}")
    dataset_id = new_id()
    directory = settings.datasets_dir / dataset_id
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    try:
        size, digest = _copy(file, target, settings.max_upload_bytes)
    except ValueError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise HTTPException(413, str(exc)) from None
    dataset = crud.create_dataset(
        session,
        dataset_id=dataset_id,
        filename=name,
        path=str(target),
        size=size,
        sha256=digest,
        owner=principal.owner,
    )
    return DatasetPublic.of(dataset)


def _copy(file: UploadFile, target: Path, limit: int) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := file.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"upload larger than the {limit}-byte limit")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()
