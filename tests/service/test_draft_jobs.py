"""Draft jobs (`objectives.speculative`) through the API: accepted and shown as drafts, bad draft settings
refused with 422 and a message, the draft fields of their trials on the trials and Pareto endpoints and in the
`prunesearch pareto` table. A finished draft job is seeded (its study written through Optuna's public API, its
snapshot as the workers record it), so these need no search; `test_e2e_drafts.py` runs one in a worker."""

from __future__ import annotations

import pytest

from prunesearch.choices import JobStatus
from prunesearch.search.backend import OptunaBackend
from prunesearch.service import crud
from prunesearch.service.auth import create_token
from prunesearch.service.client_cli import format_front
from prunesearch.service.db import session_scope
from prunesearch.service.models import utcnow
from prunesearch.service.schemas import JobCreate
from prunesearch.service.settings import Settings

from ..draft_trials import DRAFT_METRICS, add_draft_trial, create_draft_study, draft_plan, draft_spec_dict
from .conftest import job_body

DRAFT_FIELDS = ("acceptance", "lookahead", "speedup", "draft_ms", "target_ms", "coverage")


def test_a_draft_job_is_accepted_and_its_view_says_it_is_a_draft(api):
    created = api.post("/v1/jobs", json=draft_spec_dict(lookahead=3, temperature=0.5, max_draft_mib=64.0))
    assert created.status_code == 202, created.text
    job = api.get(created.headers["Location"]).json()
    assert job["draft"] == {
        "target": job["spec"]["model"],
        "lookahead": 3,
        "temperature": 0.5,
        "goal": "speedup",
        "max_draft_mib": 64.0,
    }
    assert job["spec"]["objectives"]["speculative"]["lookahead"] == 3
    listed = api.get("/v1/jobs").json()["items"]
    assert [j["draft"]["lookahead"] for j in listed] == [3]
    plain = api.post("/v1/jobs", json=job_body()).json()
    assert "draft" not in plain and "speculative" not in plain["spec"]["objectives"]


@pytest.mark.parametrize(
    ("speculative", "message"),
    [
        ({"lookahead": 9}, "lookahead must be 1-8 or 'search'"),
        ({"lookahead": 0}, "lookahead must be 1-8 or 'search'"),
        ({"lookahead": "4"}, "Input should be 'search'"),
        ({"temperature": -1.0}, "greater than or equal to 0"),
        ({"goal": "fast"}, "'speedup' or 'pareto'"),
        ({"max_draft_mib": 0.0}, "greater than 0"),
        ({"gamma": 4}, "Extra inputs are not permitted"),
    ],
)
def test_bad_draft_settings_are_a_422_with_a_message(api, speculative, message):
    response = api.post("/v1/jobs", json=draft_spec_dict(**speculative))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(message in error["msg"] for error in errors), errors
    assert any("speculative" in error["loc"] for error in errors)
    assert api.get("/v1/jobs").json()["total"] == 0


def seed_finished_draft_job(settings: Settings, owner: str | None = None) -> tuple[str, list[int]]:
    """A succeeded draft job with three draft trials (the last dominated) and its snapshot; (id, trial numbers)."""
    with session_scope(settings.db_url) as session:
        job = crud.create_job(
            session, spec=_stored(draft_spec_dict()), parallelism=1, owner=owner, idempotency_key=None
        )
        job_id, study_name = job.id, job.study_name
    backend = OptunaBackend(settings.db_url)
    study = create_draft_study(backend.storage, study_name)
    faster = DRAFT_METRICS | {"acceptance": 0.41, "speedup": 1.52, "draft_ms": 0.22, "lookahead": 2}
    numbers = [
        add_draft_trial(study, draft_plan(kept_layers=2), kl=0.6),
        add_draft_trial(study, draft_plan(kept_layers=1), faster, kl=0.9),
        add_draft_trial(study, draft_plan(kept_layers=3), kl=1.5),  # slower and worse than the first: dominated
    ]
    front = backend.front(study_name)
    with session_scope(settings.db_url) as session:
        crud.add_snapshot(session, job_id=job_id, trials_done=3, hypervolume=0.5, front=front)
        job = crud.get_job(session, job_id=job_id)
        job.status, job.trials_done, job.trials_claimed, job.front_size = JobStatus.SUCCEEDED.value, 3, 3, len(front)
        job.started_at = job.finished_at = utcnow()
    return job_id, numbers


def _stored(spec: dict) -> dict:
    return JobCreate(**spec).search_spec()


def test_trials_and_the_pareto_front_of_a_draft_job_carry_the_draft_fields(api, settings):
    job_id, numbers = seed_finished_draft_job(settings)
    trials = api.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert [t["trial"] for t in trials] == numbers
    assert {k: trials[0]["metrics"][k] for k in DRAFT_FIELDS} == DRAFT_METRICS
    assert (trials[1]["metrics"]["acceptance"], trials[1]["metrics"]["speedup"]) == (0.41, 1.52)
    pareto = api.get(f"/v1/jobs/{job_id}/pareto").json()
    assert [p["trial"] for p in pareto["front"]] == numbers[1::-1]  # fastest first; the third is dominated
    assert all(set(DRAFT_FIELDS) <= set(p["metrics"]) for p in pareto["front"])
    table = format_front(pareto["front"]).splitlines()
    header = table[0].split()
    assert {"acceptance", "speedup", "lookahead", "draft_ms", "coverage"} <= set(header)
    row = dict(zip(header, table[1].split(), strict=False))  # trial 0: plans print after the metrics
    assert (row["trial"], row["acceptance"], row["speedup"], row["lookahead"]) == ("0", "0.62", "1.87", "4")


def test_a_draft_jobs_view_hides_the_server_path_of_its_target_from_non_admins(api, settings):
    job_id, _ = seed_finished_draft_job(settings, owner="alice")
    with session_scope(settings.db_url) as session:
        token = create_token(session, name="alice", admin=False)[1]
    admin_view = api.get(f"/v1/jobs/{job_id}").json()
    assert admin_view["draft"]["target"].startswith("/")
    view = api.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).json()
    assert view["draft"]["target"] == view["spec"]["model"] and not view["draft"]["target"].startswith("/")
    assert view["draft"]["lookahead"] == "search"
