"""Exports fail cleanly: written to a staging folder and renamed into place, a failure (a full disk above all)
leaves 0 bytes behind and says why, the next export succeeds once there is room, and DELETE removes the files of
every attempt, dead ones included. The full disk is real where a small tmpfs can be mounted (root), simulated
(ENOSPC raised by the writer) everywhere."""

from __future__ import annotations

import errno
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prunesearch.service.api.main import create_app
from prunesearch.service.db import dispose_all, upgrade_schema
from prunesearch.service.exportfiles import ExportFiles
from prunesearch.service.settings import Settings
from prunesearch.service.worker import exporter
from prunesearch.service.worker.loop import Worker

from ..fake_backend import FakeBackend
from .conftest import job_body


class WritesBlobs(FakeBackend):
    """Trials export as a `blob_bytes`-byte file (and the plan), like a checkpoint of that size."""

    blob_bytes = 1000

    def export_trial(self, study_name: str, trial: int, out_dir: Path, *, dtype: str = "fp32") -> dict:
        summary = super().export_trial(study_name, trial, out_dir, dtype=dtype)
        (Path(out_dir) / "model.safetensors").write_bytes(os.urandom(self.blob_bytes))
        return summary | {"out": str(out_dir)}


def _service(settings: Settings, backend: FakeBackend):
    return TestClient(create_app(settings, backend=backend))


def _export(api, settings, backend, job_id: str, trial: int = 0) -> dict:
    export = api.post(f"/v1/jobs/{job_id}/exports", json={"trial": trial})
    assert export.status_code == 202, export.text
    Worker(settings, max_idle_s=0.0, backend=backend).run()
    return api.get(f"/v1/exports/{export.json()['id']}").json()


def _job(api, settings, backend) -> str:
    job = api.post("/v1/jobs", json=job_body(n_trials=2)).json()
    Worker(settings, max_idle_s=0.0, backend=backend).run()
    return job["id"]


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.mark.parametrize("where", ["checkpoint", "archive"])
def test_a_disk_full_export_fails_clearly_leaves_nothing_and_the_next_succeeds(settings, monkeypatch, where):
    backend = WritesBlobs()
    with _service(settings, backend) as api:
        job_id = _job(api, settings, backend)
        real_archive = exporter.write_archive

        def full(directory: Path, archive: Path):
            archive.write_bytes(b"half an archive")  # what a writer leaves when the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")

        if where == "archive":
            monkeypatch.setattr(exporter, "write_archive", full)
        else:
            monkeypatch.setattr(WritesBlobs, "blob_bytes", property(lambda _: _raise_enospc()))
        failed = _export(api, settings, backend, job_id)
        assert failed["status"] == "failed"
        assert failed["error"].startswith("insufficient storage (507)")
        assert _bytes_under(settings.export_root) == 0 and _names(settings.export_root) == set()
        monkeypatch.setattr(exporter, "write_archive", real_archive)
        monkeypatch.setattr(WritesBlobs, "blob_bytes", 1000)
        done = _export(api, settings, backend, job_id)
        assert done["status"] == "succeeded", done
        assert _names(settings.export_root) == {f"{done['id']}-1", f"{done['id']}-1.tar"}
        with tarfile.open(settings.export_root / f"{done['id']}-1.tar") as tar:
            assert sorted(tar.getnames()) == ["model.safetensors", "plan.json"]
        assert done["summary"]["out"] == str(settings.export_root.resolve() / f"{done['id']}-1")


def _raise_enospc():
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def small_volume(tmp_path):
    """A 1 MiB tmpfs (skipped where mounting is not permitted); unmounted at the end."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, timeout=10
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def test_a_really_full_volume(small_volume, tmp_path):
    """On a 1 MiB volume 700 KB full, a 200 KB export fits as a checkpoint but not with its archive: it fails,
    leaves 0 bytes, and once the filler is gone the same export succeeds."""
    settings = Settings(data_dir=tmp_path / "data", exports_dir=small_volume, min_free_bytes=0, heartbeat_s=1.0)
    upgrade_schema(settings.db_url)
    filler = small_volume / "filler"
    filler.write_bytes(b"\0" * 700_000)
    backend = WritesBlobs()
    backend.blob_bytes = 200_000
    try:
        with _service(settings, backend) as api:
            job_id = _job(api, settings, backend)
            failed = _export(api, settings, backend, job_id)
            assert failed["status"] == "failed", failed
            assert "insufficient storage" in failed["error"]
            assert _names(small_volume) == {"filler"}
            filler.unlink()  # space is back
            done = _export(api, settings, backend, job_id)
            assert done["status"] == "succeeded", done
            assert api.get(f"/v1/exports/{done['id']}/download").content[:5] != b""
            assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
            assert _names(small_volume) == set()
    finally:
        dispose_all()


def test_delete_removes_every_attempts_files(settings):
    """Files of dead attempts (whatever the attempt count says) and staging folders go with the job."""
    backend = WritesBlobs()
    with _service(settings, backend) as api:
        job_id = _job(api, settings, backend)
        done = _export(api, settings, backend, job_id)
        root = settings.export_root
        for attempt in (2, 7):  # dead attempts: their checkpoints, archives, staging folders
            files = ExportFiles(root, done["id"], attempt)
            files.staged_dir.mkdir(parents=True)
            files.out_dir.mkdir()
            files.archive.write_bytes(b"x")
        (root / f"{done['id']}.student").mkdir()
        other = ExportFiles(root, "0" * 8 + "-0000-0000-0000-" + "0" * 12, 1)
        other.out_dir.mkdir()
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert _names(root) == {other.out_dir.name}
