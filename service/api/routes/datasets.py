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
from prunesearch.service.api.errors import is_disk_full, responses
from prunesearch.service.diskspace import check_free_space
from prunesearch.service.models import new_id
from prunesearch.service.schemas import DatasetPublic

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(current_owner)], responses=UNAUTHORIZED
)
EXTENSIONS = tuple(values(TextFormat))
CHUNK = 1 << 20
MAX_NAME_BYTES = 255  # the longest file name most filesystems take (and the column's width)


@router.post("", status_code=201, response_model=DatasetPublic, responses=responses(400, 413, 422, 507))
def upload_dataset(
    file: UploadFile, session: SessionDep, settings: SettingsDep, principal: CurrentOwner
) -> DatasetPublic:
    """Store the upload under the data directory; the id is what the caller's jobs name as `calibration`. A
    failed upload (too large, disk full) leaves no file behind."""
    name = _checked_name(file.filename)
    dataset_id = new_id()
    directory = settings.datasets_dir / dataset_id
    target = directory / name
    try:
        check_free_space(settings.datasets_dir, settings.min_free_bytes)
        directory.mkdir(parents=True, exist_ok=True)
        size, digest = _copy(file, target, settings.max_upload_bytes)
    except BaseException as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(exc, UploadTooLarge):
            raise HTTPException(413, str(exc)) from None
        if is_disk_full(exc):
            raise HTTPException(507, "insufficient storage: no room for the upload on the server") from None
        raise
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


def _checked_name(filename: str | None) -> str:
    """The upload's base name, if it is one a file may have here (422 otherwise)."""
    name = Path(filename or "").name
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        size = None
    if size is None or size > MAX_NAME_BYTES or "\x00" in name:
        raise HTTPException(422, f"upload file names must be UTF-8, without NUL, at most {MAX_NAME_BYTES} bytes")
    if Path(name).suffix.lower() not in EXTENSIONS:
        raise HTTPException(422, f"calibration uploads must be {' or '.join(EXTENSIONS)} files, got {name[:100]!r}")
    return name


class UploadTooLarge(ValueError):
    pass


def _copy(file: UploadFile, target: Path, limit: int) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := file.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"upload larger than the {limit}-byte limit")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()
