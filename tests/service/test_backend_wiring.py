"""The service on a fake search backend, in one process: the API reads and deletes through it, the worker runs
jobs and exports through it and stores the front the search computed."""

from __future__ import annotations

import argparse
import tarfile
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from prunesearch.service import client_cli, crud
from prunesearch.service.api.main import create_app
from prunesearch.service.client import Client
from prunesearch.service.db import session_scope
from prunesearch.service.worker.loop import Worker

from ..fake_backend import FakeBackend
from .conftest import job_body


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def fake_api(settings, fake):
    with TestClient(create_app(settings, backend=fake)) as client:
        yield client


def _run_worker(settings, fake: FakeBackend) -> Worker:
    worker = Worker(settings, max_idle_s=0.0, backend=fake)
    worker.run()
    return worker


def _study(settings, job_id: str) -> str:
    with session_scope(settings.db_url) as session:
        return crud.get_job(session, job_id=job_id).study_name


def test_a_worker_runs_a_job_through_the_backend_and_stores_its_front(settings, fake, fake_api):
    job = fake_api.post("/v1/jobs", json=job_body(n_trials=5)).json()
    _run_worker(settings, fake)
    done = fake_api.get(f"/v1/jobs/{job['id']}").json()
    study = _study(settings, job["id"])
    assert (done["status"], done["trials_done"]) == ("succeeded", 5)
    front = fake.front(study)
    assert done["front_size"] == len(front) >= 2
    pareto = fake_api.get(f"/v1/jobs/{job['id']}/pareto").json()
    assert pareto["front"] == front and pareto["trials_done"] == 5
    # the trials page is the backend's
    page = fake_api.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 2, "offset": 1}).json()
    assert [t["trial"] for t in page["items"]] == [1, 2] and page["total"] == 5


def test_a_cancelled_job_stops_between_trials(settings, fake_api):
    job = fake_api.post("/v1/jobs", json=job_body(n_trials=50)).json()

    class CancelsAfterTwo(FakeBackend):
        def run(self, spec, study_name, callbacks, **options):
            def on_trial(progress):
                callbacks.on_trial(progress)
                if progress.trials_done == 2:
                    assert fake_api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202

            return super().run(spec, study_name, replace(callbacks, on_trial=on_trial), **options)

    _run_worker(settings, CancelsAfterTwo())
    done = fake_api.get(f"/v1/jobs/{job['id']}").json()
    assert (done["status"], done["trials_done"]) == ("cancelled", 2)


def test_exports_run_through_the_backend(settings, fake, fake_api):
    job = fake_api.post("/v1/jobs", json=job_body(n_trials=3)).json()
    _run_worker(settings, fake)
    export = fake_api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 1, "dtype": "bf16"}).json()
    _run_worker(settings, fake)
    done = fake_api.get(f"/v1/exports/{export['id']}").json()
    assert done["status"] == "succeeded", done
    assert done["summary"] == {"trial": 1, "study": _study(settings, job["id"]), "dtype": "bf16"}
    with tarfile.open(fake_api.app.state.settings.export_root / f"{export['id']}-1.tar") as tar:
        assert tar.getnames() == ["plan.json"]


def test_deleting_a_job_deletes_its_study(settings, fake, fake_api):
    job = fake_api.post("/v1/jobs", json=job_body(n_trials=2)).json()
    _run_worker(settings, fake)
    study = _study(settings, job["id"])
    assert study in fake.studies
    assert fake_api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert study not in fake.studies


def test_a_queued_job_has_no_trials_yet(fake_api):
    job = fake_api.post("/v1/jobs", json=job_body()).json()
    assert fake_api.get(f"/v1/jobs/{job['id']}/trials").json() == {"items": [], "total": 0, "offset": 0, "limit": 50}


def test_a_healing_job_shows_its_heal_stage_and_healed_front(settings, fake_api, capsys):
    heal = {"top_k": 2, "tokens": 4096, "seq_len": 32, "batch": 2}
    job = fake_api.post("/v1/jobs", json=job_body(n_trials=5, heal=heal)).json()
    assert job["spec"]["heal"]["top_k"] == 2

    class Heals(FakeBackend):
        """Heals the two fastest front members after its trials (as the search's heal stage would)."""

        def run(self, spec, study_name, callbacks, **options):
            progress = super().run(spec, study_name, callbacks, **options)
            for i, record in enumerate(self.front(study_name)[: spec.heal.top_k]):
                self.add_heal(study_name, record["trial"], healed_kl=0.01 * (i + 1))
            return progress

    backend = Heals()
    with TestClient(create_app(settings, backend=backend)) as api:
        _run_worker(settings, backend)
        done = api.get(f"/v1/jobs/{job['id']}").json()
        study = _study(settings, job["id"])
        assert done["status"] == "succeeded"
        assert done["heal"] == backend.heal_status(study) and len(done["heal"]["healed"]) == 2
        pareto = api.get(f"/v1/jobs/{job['id']}/pareto").json()
        assert pareto["healed_front"] == backend.healed_front(study) and pareto["healed_front"]
        plain = api.post("/v1/jobs", json=job_body(n_trials=2)).json()
        _run_worker(settings, backend)
        assert "heal" not in api.get(f"/v1/jobs/{plain['id']}").json()
        assert api.get(f"/v1/jobs/{plain['id']}/pareto").json()["healed_front"] == []
        client = Client("http://testserver")
        client.http = api
        client_cli._pareto(client, argparse.Namespace(job_id=job["id"]))
    table = capsys.readouterr().out
    assert "healed front" in table and "healed_kl" in table
