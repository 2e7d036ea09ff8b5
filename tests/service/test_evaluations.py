"""`POST /v1/exports/{id}/evaluations`: admission (files resolved and checked, 4xx with a message otherwise), a
worker that runs lm-evaluation-harness on the export's checkpoint and records the results, leases taken over from
dead workers, and an API process that never imports torch or lm-eval."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from prunesearch.choices import ExportStatus, JobStatus
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import Evaluation, Job, utcnow
from prunesearch.service.settings import BUNDLED_EXAMPLES
from prunesearch.service.worker.evaluation import claim_evaluation, run_evaluation
from prunesearch.service.worker.loop import Worker

from .conftest import job_body

CALIB = BUNDLED_EXAMPLES / "calib.txt"


def _export(api, settings, status: ExportStatus = ExportStatus.SUCCEEDED) -> str:
    """An export of trial 0 (of a finished job) in `status`; a succeeded one has the bundled model as its checkpoint
    folder."""
    job = api.post("/v1/jobs", json=job_body()).json()
    with session_scope(settings.db_url) as session:
        row = session.get(Job, job["id"])
        row.trials_claimed, row.status = 1, JobStatus.SUCCEEDED
        export = crud.create_export(session, job_id=job["id"], trial=0, dtype="fp32")
        export.status, export.attempts = status, 1
        if status == ExportStatus.SUCCEEDED:
            folder = settings.export_root / f"{export.id}-1"
            shutil.copytree(BUNDLED_EXAMPLES, folder)
            export.path = str(folder.with_suffix(".tar"))
        return export.id


@pytest.fixture
def export_id(api, settings) -> str:
    return _export(api, settings)


def _text(settings, name: str = "eval.txt") -> str:
    """A text file under an allowed calibration root."""
    path = settings.data_dir / "calibration" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CALIB.read_text()[:2000])
    return str(path)


def test_an_evaluation_is_queued_and_a_worker_records_its_results(api, settings, export_id):
    dataset = api.post("/v1/datasets", files={"file": ("eval.txt", CALIB.read_bytes()[:1500])}).json()
    body = {"data": [dataset["id"], _text(settings)], "max_length": 64}
    response = api.post(f"/v1/exports/{export_id}/evaluations", json=body)
    assert response.status_code == 202, response.text
    evaluation = response.json()
    assert evaluation["status"] == "queued" and evaluation["results"] is None
    assert evaluation["request"]["data"][0].endswith(f"{dataset['id']}/eval.txt")
    location = response.headers["Location"]
    assert location == f"/v1/exports/{export_id}/evaluations/{evaluation['id']}"

    assert Worker(settings, max_idle_s=0.5).run() == 0  # no job to run: the worker takes the evaluation
    done = api.get(location).json()
    assert done["status"] == "succeeded", done["error"]
    results = done["results"]["results"]
    assert set(results) == {"ppl_eval", "ppl_eval_2"}  # two files named eval.txt: numbered task names
    for metrics in results.values():
        assert 0 < metrics["bits_per_byte"] < 8 and metrics["byte_perplexity"] > 1
    assert done["results"]["max_length"] == 64 and done["finished_at"] is not None
    assert not Worker(settings).run_one_evaluation()  # nothing left


def test_a_failed_evaluation_records_its_error(api, settings, export_id):
    evaluation = api.post(f"/v1/exports/{export_id}/evaluations", json={"data": [_text(settings)]}).json()
    with session_scope(settings.db_url) as session:
        shutil.rmtree(crud.get_export(session, export_id=export_id).path.removesuffix(".tar"))
    assert Worker(settings).run_one_evaluation()
    failed = api.get(f"/v1/exports/{export_id}/evaluations/{evaluation['id']}").json()
    assert failed["status"] == "failed" and "no longer on the server" in failed["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 422, "nothing to evaluate"),
        ({"data": ["/etc/passwd"]}, 422, "outside the allowed calibration roots"),
        (
            {"data": ["00000000-0000-4000-8000-000000000000"]},
            422,
            "00000000-0000-4000-8000-000000000000' is neither a dataset id",
        ),
        ({"tasks": ["my_tasks.yaml"]}, 422, "YAML"),
        ({"tasks": ["no spaces allowed"]}, 422, "neither a dataset id"),
        ({"tasks": ["BAD_MC"]}, 422, "'answer' must be the index"),
        ({"data": ["EMPTY"]}, 422, "empty"),
        ({"data": ["x"] * 9}, 422, "at most 8"),
        ({"data": ["EMPTY"], "batch_size": 0}, 422, "greater than or equal to 1"),
        ({"data": ["EMPTY"], "surprise": 1}, 422, "Extra inputs"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(api, settings, export_id, body, status, message):
    files = {"BAD_MC": "bad.jsonl", "EMPTY": "empty.txt"}
    root = settings.data_dir / "calibration"
    root.mkdir(parents=True, exist_ok=True)
    (root / "bad.jsonl").write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    (root / "empty.txt").write_text("\n")
    body = {key: [files.get(v, v) for v in value] if isinstance(value, list) else value for key, value in body.items()}
    response = api.post(f"/v1/exports/{export_id}/evaluations", json=body)
    assert response.status_code == status and message in response.text, response.text


def test_unknown_and_unfinished_exports(api, settings, export_id):
    body = {"data": [_text(settings)]}
    missing = "00000000-0000-4000-8000-000000000000"
    assert api.post(f"/v1/exports/{missing}/evaluations", json=body).status_code == 404
    queued = _export(api, settings, ExportStatus.QUEUED)
    response = api.post(f"/v1/exports/{queued}/evaluations", json=body)
    assert response.status_code == 409 and "once it has succeeded" in response.text
    evaluation = api.post(f"/v1/exports/{export_id}/evaluations", json=body).json()
    assert api.get(f"/v1/exports/{export_id}/evaluations/{missing}").status_code == 404
    assert api.get(f"/v1/exports/{export_id}/evaluations/not-an-id").status_code == 404
    assert api.get(f"/v1/exports/{queued}/evaluations/{evaluation['id']}").status_code == 404  # another export's


def test_openapi_declares_the_statuses(api):
    paths = api.get("/openapi.json").json()["paths"]
    post = paths["/v1/exports/{export_id}/evaluations"]["post"]["responses"]
    get = paths["/v1/exports/{export_id}/evaluations/{evaluation_id}"]["get"]["responses"]
    assert {"202", "404", "409", "422"} <= set(post) and {"200", "404"} <= set(get)


def test_a_dead_workers_evaluation_is_taken_over_and_its_late_result_dropped(api, settings, export_id):
    evaluation = api.post(f"/v1/exports/{export_id}/evaluations", json={"data": [_text(settings)]}).json()
    first = claim_evaluation(settings.db_url, lease_s=60)
    assert first is not None and first.attempt == 1
    assert claim_evaluation(settings.db_url, lease_s=60) is None  # its lease is fresh
    with session_scope(settings.db_url) as session:  # the worker died: its lease ran out
        stale = utcnow() - timedelta(seconds=120)
        session.execute(update(Evaluation).where(Evaluation.id == evaluation["id"]).values(heartbeat_at=stale))
    second = claim_evaluation(settings.db_url, lease_s=60)
    assert second == (evaluation["id"], 2)
    run_evaluation(first, settings)  # the dead worker wakes up and finishes late: dropped
    assert api.get(f"/v1/exports/{export_id}/evaluations/{evaluation['id']}").json()["status"] == "running"
    run_evaluation(second, settings)
    assert api.get(f"/v1/exports/{export_id}/evaluations/{evaluation['id']}").json()["status"] == "succeeded"


def test_evaluations_fail_for_good_after_three_dead_workers(api, settings, export_id):
    evaluation = api.post(f"/v1/exports/{export_id}/evaluations", json={"data": [_text(settings)]}).json()
    for attempt in (1, 2, 3):
        assert claim_evaluation(settings.db_url, lease_s=0.01).attempt == attempt
        time.sleep(0.02)
    assert claim_evaluation(settings.db_url, lease_s=0.01) is None
    failed = api.get(f"/v1/exports/{export_id}/evaluations/{evaluation['id']}").json()
    assert failed["status"] == "failed" and "stopped 3 times" in failed["error"]


def test_deleting_the_job_deletes_its_evaluations(api, settings, export_id):
    evaluation = api.post(f"/v1/exports/{export_id}/evaluations", json={"data": [_text(settings)]}).json()
    with session_scope(settings.db_url) as session:
        job_id = crud.get_export(session, export_id=export_id).job_id
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
    with session_scope(settings.db_url) as session:
        assert crud.get_evaluation(session, evaluation_id=evaluation["id"]) is None


def test_the_api_imports_neither_torch_nor_lm_eval(tmp_path):
    """Admission checks the files with the pure task builders; only the worker imports the harness."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from prunesearch.service.api.main import create_app
from prunesearch.service.db import upgrade_schema
from prunesearch.service.settings import Settings
settings = Settings(data_dir=r"{tmp_path / "data"}")
upgrade_schema(settings.db_url)
with TestClient(create_app(settings)) as api:
    response = api.post("/v1/exports/00000000-0000-4000-8000-000000000000/evaluations", json={{"data": ["x.txt"]}})
    assert response.status_code == 404, response.text
loaded = {{"torch", "transformers", "lm_eval", "datasets"}} & set(sys.modules)
assert not loaded, loaded
"""
    env = {**os.environ, "PRUNESEARCH_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_claims_on_postgresql(pg_settings):
    """`FOR UPDATE SKIP LOCKED` claims: one worker per evaluation; nothing left queued for later tests."""
    url = pg_settings.db_url
    with session_scope(url) as session:
        job = crud.create_job(session, spec=job_body(), parallelism=1, owner=None, idempotency_key=None)
        job.status = JobStatus.SUCCEEDED
        export = crud.create_export(session, job_id=job.id, trial=0, dtype="fp32")
        export.status = ExportStatus.SUCCEEDED
        evaluation = crud.create_evaluation(session, export_id=export.id, request={"data": [str(CALIB)]})
    claim = claim_evaluation(url, lease_s=60)
    assert claim == (evaluation.id, 1)
    assert claim_evaluation(url, lease_s=60) is None
    with session_scope(url) as session:
        assert crud.finish_evaluation(session, evaluation_id=evaluation.id, attempt=1, status="failed", error="test")
        assert not crud.finish_evaluation(session, evaluation_id=evaluation.id, attempt=1, status="succeeded")
