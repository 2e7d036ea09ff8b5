"""Heal options on `POST /v1/jobs/{id}/exports`: stored with their text files resolved, shown on the export, and
refused with a 422 and a message when out of range or pointing outside the roots."""

from __future__ import annotations

import typing

import optuna
import pytest
from optuna.trial import create_trial

from prunesearch.service.client_cli import HEAL_FLAGS, format_number
from prunesearch.service.db import session_scope
from prunesearch.service.models import Job
from prunesearch.service.schemas import MAX_HEAL_TOKENS, HealOptions

from .conftest import job_body


@pytest.fixture
def job(api, settings) -> dict:
    """A job whose trial 0 is complete and feasible, so it may be exported."""
    job = api.post("/v1/jobs", json=job_body()).json()
    with session_scope(settings.db_url) as session:
        study_name = session.get(Job, job["id"]).study_name
    study = optuna.create_study(storage=settings.db_url, study_name=study_name, directions=["minimize"] * 2)
    study.add_trial(create_trial(values=[0.1, 1.0], user_attrs={"plan": {}, "metrics": {}, "feasible": True}))
    return job


def _export(api, job: dict, heal: dict):
    return api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 0, "heal": heal})


def test_heal_options_are_stored_and_default_to_the_jobs_text(api, job):
    response = _export(api, job, {"tokens": 4096, "method": "lora", "seq_len": 64})
    assert response.status_code == 202, response.text
    export = response.json()
    calibration = job["spec"]["calibration"]
    heal = export["heal"]
    assert (heal["tokens"], heal["method"], heal["seq_len"], heal["steps"]) == (4096, "lora", 64, None)
    assert (heal["data"], heal["eval"]) == (calibration, [calibration])
    assert export["progress"] is None and export["status"] == "queued"
    assert api.get(f"/v1/exports/{export['id']}").json()["heal"] == heal
    plain = api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 0}).json()
    assert plain["heal"] is None


def test_heal_data_and_eval_name_datasets_or_allowed_files(api, job):
    dataset = api.post("/v1/datasets", files={"file": ("heal.txt", b"some text to heal on\n" * 50)}).json()
    heal = _export(api, job, {"steps": 3, "data": dataset["id"], "eval": ["tiny-llama/calib.txt"]}).json()["heal"]
    assert heal["data"].endswith(f"{dataset['id']}/heal.txt")
    assert heal["eval"] == [job["spec"]["calibration"]]
    assert _export(api, job, {"steps": 3, "eval": []}).json()["heal"]["eval"] == []


@pytest.mark.parametrize(
    ("heal", "message"),
    [
        ({"tokens": 0}, "tokens must be positive"),
        ({"steps": -3}, "steps must be positive"),
        ({"tokens": 100, "steps": 3}, "either tokens or steps"),
        ({"lr": 0}, "lr must be positive"),
        ({"lr": "-Infinity"}, "valid number"),  # a string is no number (non-finite numbers: test_bad_input.py)
        ({"lr": "NaN"}, "valid number"),
        ({"ce_weight": 1.5}, "ce_weight must lie in [0, 1]"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"batch": 0, "lora_rank": 0}, "batch must be positive; lora_rank must be positive"),
        ({"method": "qlora"}, "'full' or 'lora'"),
        ({"tokens": MAX_HEAL_TOKENS + 1}, "less than or equal to"),
        ({"steps": 1_000_000, "batch": 4096}, "at most 1,000,000,000 tokens"),
        ({"seq_len": 32_768, "batch": 4096}, "at most 1,048,576 tokens (batch x seq_len), not 134,217,728"),
        ({"dropout": 0.1}, "Extra inputs are not permitted"),
        ({"eval": ["a.txt"] * 5}, "at most 4 items"),
    ],
)
def test_bad_heal_options_get_422_with_a_message(api, job, heal, message):
    response = _export(api, job, heal)
    assert response.status_code == 422
    messages = " ".join(d["msg"] for d in response.json()["detail"])
    assert message in messages, messages
    assert all(d["loc"][:2] == ["body", "heal"] for d in response.json()["detail"])


@pytest.mark.parametrize(
    ("heal", "message"),
    [
        ({"top_k": 64, "tokens": 100_000_000}, "heal stage (top_k x tokens) may train on at most 1,000,000,000"),
        ({"seq_len": 32_768, "batch": 64, "tokens": 2_097_152}, "at most 1,048,576 tokens (batch x seq_len)"),
    ],
)
def test_a_jobs_heal_stage_beyond_the_bounds_gets_422(api, heal, message):
    response = api.post("/v1/jobs", json=job_body(heal=heal))
    assert response.status_code == 422
    assert message in " ".join(d["msg"] for d in response.json()["detail"])


def test_a_jobs_heal_stage_within_the_bounds_is_queued(api):
    response = api.post("/v1/jobs", json=job_body(heal={"top_k": 10, "tokens": 100_000_000}))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("heal", "field"),
    [
        ({"data": "/etc/passwd"}, "heal.data"),
        ({"data": "00000000-0000-0000-0000-000000000000"}, "heal.data"),
        ({"eval": ["tiny-llama/calib.txt", "../../../etc/hosts"]}, "heal.eval.1"),
    ],
)
def test_heal_text_outside_the_roots_gets_422(api, job, heal, field):
    response = _export(api, job, heal)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", field]
    assert "allowed" in detail["msg"] and detail["msg"].startswith(field)


def test_the_clients_heal_flags_are_the_heal_options():
    """`--heal-NAME` for every option (`method` and `eval` have flags of their own), of the option's type."""
    assert {*HEAL_FLAGS, "method", "eval"} == set(HealOptions.model_fields)
    for name, kind in HEAL_FLAGS.items():
        annotation = HealOptions.model_fields[name].annotation
        types = {_unannotated(t) for t in (annotation, *typing.get_args(annotation))}  # StrictInt: Annotated[int]
        assert kind in types, (name, kind, annotation)


def _unannotated(tp):
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def test_a_loss_of_zero_is_shown_as_a_number():
    assert (format_number(0.0), format_number(None), format_number(1.23456, ".2f")) == ("0", "-", "1.23")
