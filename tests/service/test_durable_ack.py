"""Issue 12: a 201/202 means the object is stored. Through a live server, a GET right after each POST finds
what it acknowledged, on SQLite and on PostgreSQL: 200 jobs, and every 4th round an export and an upload (read
by naming the upload as a job's calibration). Before the fix the session committed after the response was sent:
on SQLite, 126 of 200 jobs and 67 of 200 exports were not found (AMD EPYC, 2 cores, loaded)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from prunesearch.service import crud
from prunesearch.service.api.main import create_app
from prunesearch.service.db import session_scope

from ..fake_backend import FakeBackend
from .conftest import job_body
from .livehttp import live_server

ROUNDS = 200
EVERY = 4  # exports and uploads: each 4th round


def _job_with_a_trial(settings, backend: FakeBackend) -> str:
    """A queued job whose trial 0 is claimed and complete, so exports of it are accepted."""
    with session_scope(settings.db_url) as session:
        job = crud.create_job(session, spec=job_body(), parallelism=1, owner=None, idempotency_key=None)
        job.trials_claimed = 1
        backend.add_trial(job.study_name)
        return job.id


def _missing_on_immediate_read(settings) -> Counter:
    backend = FakeBackend()
    job_id, missing = _job_with_a_trial(settings, backend), Counter()
    with live_server(create_app(settings, backend=backend)) as url, httpx.Client(base_url=url) as http:
        for i in range(ROUNDS):
            job = http.post("/v1/jobs", json=job_body())
            assert job.status_code == 202, job.text
            missing["jobs"] += http.get(f"/v1/jobs/{job.json()['id']}").status_code != 200
            if i % EVERY:
                continue
            export = http.post(f"/v1/jobs/{job_id}/exports", json={"trial": 0})
            assert export.status_code == 202, export.text
            missing["exports"] += http.get(f"/v1/exports/{export.json()['id']}").status_code != 200
            upload = http.post("/v1/datasets", files={"file": (f"c{i}.txt", b"some text to calibrate on\n" * 8)})
            assert upload.status_code == 201, upload.text
            used = http.post("/v1/jobs", json=job_body(calibration=upload.json()["id"]))
            missing["datasets"] += used.status_code != 202
    return missing


@pytest.mark.parametrize("database", ["settings", "pg_settings"], ids=["sqlite", "postgresql"])
def test_every_acknowledged_object_is_readable_at_once(database, request):
    settings = request.getfixturevalue(database)
    missing = _missing_on_immediate_read(settings)
    assert +missing == Counter(), f"acknowledged but not found right after ({ROUNDS} rounds): {dict(missing)}"
