"""API behaviour without workers: validation (422), unknown ids (404), state conflicts (409), idempotency,
pagination, uploads, hardware and health."""

from __future__ import annotations

import pytest

from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.worker.claims import claim_job

from .conftest import job_body


def _fields(response) -> list[str]:
    return [".".join(str(p) for p in d["loc"]) for d in response.json()["detail"]]


def test_submit_returns_202_with_location_and_queued_job(api):
    response = api.post("/v1/jobs", json=job_body())
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["status"], job["trials_done"], job["n_trials"], job["eta_s"]) == ("queued", 0, 4, None)
    assert api.get(response.headers["location"]).json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_trials": 0}, "body.n_trials"),
        ({"sampler": "grid"}, "body.sampler"),
        ({"surprise": 1}, "body.surprise"),
        ({"space": {"heads": False, "ffn": False, "depth": "none"}}, "body.space"),
        ({"calibration_settings": {"tokens": 1}}, "body.calibration_settings.tokens"),
        ({"parallelism": 0}, "body.parallelism"),
        ({"hardware": "tpu-v9"}, "body.hardware"),
        ({"hardware": "/etc/passwd.json"}, "body.hardware"),
        ({"workload": {"generate_tokens": 0}}, "body.workload.generate_tokens"),
        ({"workload": {"batch": 0}}, "body.workload.batch"),
        ({"workload": {"dtype": "int8"}}, "body.workload.dtype"),
        ({"workload": {"prompt": 64}}, "body.workload.prompt"),
        ({"workload": {"engine": "warp"}}, "body.workload.engine"),
        ({"hardware": "local", "workload": {"engine": "graphs"}}, "body.hardware"),
    ],
)
def test_invalid_specs_get_422_with_the_field(api, change, field):
    response = api.post("/v1/jobs", json=job_body(**change))
    assert response.status_code == 422, response.text
    assert any(f.startswith(field) for f in _fields(response)), response.json()


def test_a_workload_without_generated_tokens_is_refused_before_any_job_exists(api):
    """Issue 14: `generate_tokens=0` used to be accepted, then failed in the worker after the model loaded."""
    response = api.post("/v1/jobs", json=job_body(workload={"prompt_tokens": 64, "generate_tokens": 0}))
    assert response.status_code == 422, response.text
    assert _fields(response) == ["body.workload.generate_tokens"]
    assert api.get("/v1/jobs").json()["total"] == 0
    workload = {"batch": 1, "prompt_tokens": 64, "generate_tokens": 1}
    accepted = api.post("/v1/jobs", json=job_body(workload=workload))
    assert accepted.status_code == 202
    assert accepted.json()["spec"]["workload"] == {**workload, "dtype": "bf16"}


def test_the_engine_flows_into_the_stored_spec(api):
    workload = {"batch": 8, "prompt_tokens": 64, "generate_tokens": 4, "engine": "eager"}
    accepted = api.post("/v1/jobs", json=job_body(workload=workload, hardware="h100-sxm"))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["spec"]["workload"] == {**workload, "dtype": "bf16"}


def test_missing_body_and_bad_json_get_422(api):
    assert api.post("/v1/jobs", json={}).status_code == 422
    bad = api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "/etc"}, "body.model"),
        ({"model": "../../../../etc"}, "body.model"),
        ({"model": "someone/some-model"}, "body.model"),  # hub ids are off by default
        ({"calibration": "/etc/passwd"}, "body.calibration"),
        ({"calibration": "../../../etc/hosts"}, "body.calibration"),
    ],
)
def test_paths_outside_the_roots_are_rejected(api, change, field):
    response = api.post("/v1/jobs", json=job_body(**change))
    assert response.status_code == 422
    assert _fields(response) == [field]
    assert "allowed" in response.json()["detail"][0]["msg"] or "not found" in response.json()["detail"][0]["msg"]


def test_relative_paths_resolve_under_the_roots(api):
    job = api.post("/v1/jobs", json=job_body(model="tiny-llama", calibration="tiny-llama/calib.txt")).json()
    assert job["spec"]["calibration"].endswith("tiny-llama/calib.txt")


def test_unknown_ids_get_404(api):
    for method, path in [
        ("GET", "/v1/jobs/nope"),
        ("GET", "/v1/jobs/nope/pareto"),
        ("GET", "/v1/jobs/nope/trials"),
        ("POST", "/v1/jobs/nope/cancel"),
        ("DELETE", "/v1/jobs/nope"),
        ("GET", "/v1/exports/nope"),
        ("GET", "/v1/exports/nope/download"),
    ]:
        assert api.request(method, path).status_code == 404, path
    assert api.post("/v1/jobs/nope/exports", json={"trial": 0}).status_code == 404


def test_state_conflicts_get_409(api, settings):
    job = api.post("/v1/jobs", json=job_body()).json()
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 409  # queued: cancel first
    assert api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 0}).status_code == 409  # no trial yet
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (202, "cancelled")
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    with session_scope(settings.db_url) as session:
        export = crud.create_export(session, job_id=job["id"], trial=0, dtype="fp32")
    assert api.get(f"/v1/exports/{export.id}/download").status_code == 409  # not finished
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_bad_export_requests_get_422(api):
    job = api.post("/v1/jobs", json=job_body()).json()
    assert api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": -1}).status_code == 422
    assert api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 0, "dtype": "int3"}).status_code == 422


def test_idempotency_key_returns_the_first_job(api):
    first = api.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k1"}).json()
    again = api.post("/v1/jobs", json=job_body(n_trials=9), headers={"Idempotency-Key": "k1"}).json()
    other = api.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k2"}).json()
    assert first["id"] == again["id"] != other["id"]
    assert api.get("/v1/jobs").json()["total"] == 2


def test_list_paginates_and_filters(api):
    ids = [api.post("/v1/jobs", json=job_body()).json()["id"] for _ in range(5)]
    api.post(f"/v1/jobs/{ids[0]}/cancel")
    page = api.get("/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], len(page["items"]), page["offset"]) == (5, 2, 1)
    assert [j["id"] for j in api.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]] == [ids[0]]
    assert api.get("/v1/jobs", params={"status": "weird"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_empty_pareto_and_trials_before_the_first_trial(api, settings):
    job = api.post("/v1/jobs", json=job_body()).json()
    assert api.get(f"/v1/jobs/{job['id']}/pareto").json()["front"] == []
    assert api.get(f"/v1/jobs/{job['id']}/trials").json()["items"] == []
    claim_job(settings.db_url, lease_s=60)  # a worker took it but has not created its study yet
    page = api.get(f"/v1/jobs/{job['id']}/trials")
    assert page.status_code == 200 and (page.json()["items"], page.json()["total"]) == ([], 0)


def test_dataset_upload_is_usable_as_calibration(api):
    text = (b"Some calibration text about Python.\n\n" * 40, "text/plain")
    dataset = api.post("/v1/datasets", files={"file": ("notes.txt", *text)})
    assert dataset.status_code == 201
    body = dataset.json()
    job = api.post("/v1/jobs", json=job_body(calibration=body["id"])).json()
    assert job["spec"]["calibration"].endswith(f"{body['id']}/notes.txt")
    assert api.post("/v1/datasets", files={"file": ("evil.sh", b"rm -rf /")}).status_code == 422
    assert api.post("/v1/datasets", files={"file": ("../../x.txt", b"hello")}).json()["filename"] == "x.txt"


def test_hardware_health_and_readiness(api):
    names = {p["name"] for p in api.get("/v1/hardware").json()["profiles"]}
    assert {"h100-sxm", "a100-80g"} <= names
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("value", ["a\x00b", "x" * 5000, "/" + "y" * 300 + "/z"])
def test_odd_paths_get_422_not_500(api, value):
    for field in ("model", "calibration"):
        response = api.post("/v1/jobs", json=job_body(**{field: value}))
        assert response.status_code == 422, (field, response.text)
        assert _fields(response) == [f"body.{field}"]


def test_odd_input_on_postgresql_gets_422(pg_settings):
    from fastapi.testclient import TestClient

    from prunesearch.service.api.main import create_app

    with TestClient(create_app(pg_settings)) as api:
        assert api.post("/v1/jobs", json=job_body(calibration="a\x00b")).status_code == 422
        assert api.get("/v1/jobs/" + "z" * 300).status_code == 404
        assert api.get("/v1/jobs/a%00b").status_code == 404
        assert api.get("/v1/jobs/a%00b/pareto").status_code == 404
        assert api.get("/v1/exports/a%00b").status_code == 404
        assert api.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "pg-1"}).status_code == 202
