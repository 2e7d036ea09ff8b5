"""Bad input gets a 4xx with a message, never a 500: non-finite numbers, huge bodies (refused before parsing, never
echoed back), odd paths, odd upload names, a full disk (507). Responses match the declared schema: timestamps
carry their offset, every error status a route returns is in the OpenAPI schema."""

from __future__ import annotations

import errno
import json
import math
import typing
from datetime import datetime

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from prunesearch.service.api.errors import ErrorBody
from prunesearch.service.api.main import create_app
from prunesearch.service.api.routes import datasets
from prunesearch.service.schemas import ExportCreate, JobCreate
from prunesearch.service.settings import Settings

from ..fake_backend import FakeBackend
from .conftest import job_body

JSON = {"content-type": "application/json"}


def _post_raw(api, body: str, url: str = "/v1/jobs"):
    return api.post(url, content=body.encode(), headers=JSON)


@pytest.mark.parametrize(
    "fragment",
    [
        '"constraints": {"latency_budget_ms": Infinity}',
        '"constraints": {"latency_budget_fraction": NaN}',
        '"timeout_s": -Infinity',
        '"timeout_s": 1e999',
        '"model": NaN',  # a non-finite value in a field that fails for another reason: echoed as text
        '"n_trials": NaN',
        '"heal": {"lr": Infinity}',
        '"budgets": [0.5, NaN]',
    ],
)
def test_non_finite_numbers_get_a_422_that_encodes(api, fragment):
    body = json.dumps(job_body())[:-1] + ", " + fragment + "}"
    response = _post_raw(api, body)
    assert response.status_code == 422, response.text
    ErrorBody.model_validate(response.json())
    assert "NaN" not in response.text and "Infinity" not in response.text


def test_non_finite_numbers_in_an_export_request_get_a_422(api):
    job = api.post("/v1/jobs", json=job_body()).json()
    response = _post_raw(api, '{"trial": 0, "heal": {"temperature": NaN}}', f"/v1/jobs/{job['id']}/exports")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "heal", "temperature"]


def test_a_huge_invalid_value_is_not_echoed(api):
    response = api.post("/v1/jobs", json=job_body(n_trials="9" * 500_000, seed=["x" * 1000] * 200))
    assert response.status_code == 422
    assert len(response.content) < 5_000
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {("body", "n_trials"), ("body", "seed")}


@pytest.fixture
def small_api(tmp_path):
    from prunesearch.service.db import dispose_all, upgrade_schema

    settings = Settings(data_dir=tmp_path / "data", max_body_bytes=10_000, max_upload_bytes=50_000)
    upgrade_schema(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    dispose_all()


def test_bodies_over_the_limit_get_413_before_parsing(small_api):
    response = small_api.post("/v1/jobs", json=job_body(model="x" * 20_000))
    assert response.status_code == 413
    assert "10000-byte limit" in response.json()["detail"]
    assert small_api.post("/v1/jobs", json=job_body()).status_code == 202


def test_streamed_bodies_are_counted(small_api):
    """No Content-Length: the middleware counts what arrives."""
    chunks = [b'{"model": "', b"y" * 8_000, b"y" * 8_000, b'"}']
    response = small_api.post("/v1/jobs", content=iter(chunks), headers=JSON)
    assert response.status_code == 413, response.text


def test_uploads_have_their_own_limit(small_api):
    """Multipart bodies may be as large as an upload (not the JSON limit); beyond it, 413 and no file kept."""
    ok = small_api.post("/v1/datasets", files={"file": ("a.txt", b"z" * 30_000)})
    assert ok.status_code == 201, ok.text
    for size in (55_000, 200_000):  # over the upload limit, then over the body limit as well
        response = small_api.post("/v1/datasets", files={"file": ("b.txt", b"z" * size)})
        assert response.status_code == 413


@pytest.mark.parametrize("value", ["~nosuchuser/model", "~nosuchuser", "/" + "d" * 255 + "x/y", "a/" * 3000])
def test_odd_paths_get_422(api, value):
    for field in ("model", "calibration"):
        response = api.post("/v1/jobs", json=job_body(**{field: value}))
        assert response.status_code == 422, (field, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", field]


def _with_a_trial(api, settings) -> str:
    """A job whose first trial is claimed and, where the app's searches are a `FakeBackend`, complete: exports of
    trial 0 pass the state check."""
    from prunesearch.service.db import session_scope
    from prunesearch.service.models import Job

    job_id = api.post("/v1/jobs", json=job_body()).json()["id"]
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        job.trials_claimed = 1
        if isinstance(api.app.state.backend, FakeBackend):
            api.app.state.backend.add_trial(job.study_name)
    return job_id


@pytest.mark.parametrize("value", ["~nosuchuser/x.txt", "x" * 300 + ".txt", "a\x00b"])
def test_odd_heal_paths_get_422(api, settings, value):
    job_id = _with_a_trial(api, settings)
    for heal in ({"steps": 2, "data": value}, {"steps": 2, "eval": [value]}):
        response = api.post(f"/v1/jobs/{job_id}/exports", json={"trial": 0, "heal": heal})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:2] == ["body", "heal.data" if "data" in heal else "heal.eval.0"]


@pytest.mark.parametrize("name", ["n" * 252 + ".txt", "é" * 126 + ".txt"])
def test_upload_names_too_long_get_422(api, settings, name):
    response = api.post("/v1/datasets", files={"file": (name, b"hello")})
    assert response.status_code == 422, response.text
    assert not settings.datasets_dir.exists() or list(settings.datasets_dir.iterdir()) == []
    assert api.post("/v1/datasets", files={"file": ("n" * 251 + ".txt", b"hello")}).status_code == 201  # 255 bytes


@pytest.mark.parametrize("name", ["a\x00b.txt", "a\udc80.txt", "x.bin", ""])
def test_odd_upload_names_are_refused(name):
    with pytest.raises(HTTPException) as info:
        datasets._checked_name(name)
    assert info.value.status_code == 422


def test_an_upload_onto_a_full_disk_gets_507_and_leaves_nothing(api, settings, monkeypatch):
    def fill_then_fail(file, target, limit):
        target.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets, "_copy", fill_then_fail)
    response = api.post("/v1/datasets", files={"file": ("a.txt", b"hello")})
    assert response.status_code == 507
    assert "insufficient storage" in response.json()["detail"]
    assert list(settings.datasets_dir.iterdir()) == []
    monkeypatch.undo()
    assert api.post("/v1/datasets", files={"file": ("a.txt", b"hello")}).status_code == 201


def test_too_little_free_space_refuses_uploads_and_exports_with_507(tmp_path):
    from prunesearch.service.db import dispose_all, upgrade_schema

    settings = Settings(data_dir=tmp_path / "data", min_free_bytes=2**62)
    upgrade_schema(settings.db_url)
    with TestClient(create_app(settings, backend=FakeBackend())) as api:
        assert api.post("/v1/datasets", files={"file": ("a.txt", b"hello")}).status_code == 507
        response = api.post(f"/v1/jobs/{_with_a_trial(api, settings)}/exports", json={"trial": 0})
        assert response.status_code == 507
        ErrorBody.model_validate(response.json())
    dispose_all()


def test_timestamps_carry_their_offset(api):
    job = api.post("/v1/jobs", json=job_body()).json()
    for view in (job, api.get(f"/v1/jobs/{job['id']}").json(), api.get("/v1/jobs").json()["items"][0]):
        assert datetime.fromisoformat(view["created_at"]).utcoffset() is not None
    dataset = api.post("/v1/datasets", files={"file": ("a.txt", b"hello")}).json()
    assert datetime.fromisoformat(dataset["created_at"]).utcoffset() is not None


def test_the_schema_declares_every_error_status(api):
    paths = api.get("/openapi.json").json()["paths"]
    expected = {
        ("/v1/jobs", "post"): {"202", "400", "413", "422"},
        ("/v1/jobs/{job_id}", "get"): {"200", "404"},
        ("/v1/jobs/{job_id}", "delete"): {"204", "404", "409"},
        ("/v1/jobs/{job_id}/exports", "post"): {"202", "400", "404", "409", "413", "422", "507"},
        ("/v1/exports/{export_id}/download", "get"): {"200", "404", "409", "410"},
        ("/v1/datasets", "post"): {"201", "400", "413", "422", "507"},
        ("/readyz", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, method, set(responses))
        for status in statuses - {"200", "201", "202", "204"}:
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


# --- every float a request may carry refuses NaN and infinities ----------------------------------------------


def _models(root: type) -> list[type]:
    """`root` and every pydantic model or pydantic dataclass reachable through its fields' annotations."""
    seen: list[type] = []

    def visit(tp) -> None:
        for arg in typing.get_args(tp):
            visit(arg)
        if isinstance(tp, type) and tp not in seen and hasattr(tp, "__pydantic_fields__"):
            seen.append(tp)
            for field in tp.__pydantic_fields__.values():
                visit(field.annotation)

    visit(root)
    return seen


def _is_float(annotation) -> bool:
    """`float`, also inside `X | None` and `Annotated[float, ...]` (`StrictFloat`)."""
    return annotation is float or any(_is_float(arg) for arg in typing.get_args(annotation))


def _is_list(annotation) -> bool:
    """A list field (also `list[...] | None`): it takes the float inside a list."""
    return typing.get_origin(annotation) is list or any(_is_list(arg) for arg in typing.get_args(annotation))


def _float_fields() -> list[tuple[type, str]]:
    models = {m for root in (JobCreate, ExportCreate) for m in _models(root)}
    return sorted(
        ((m, name) for m in models for name, f in m.__pydantic_fields__.items() if _is_float(f.annotation)),
        key=lambda pair: (pair[0].__name__, pair[1]),
    )


def test_the_walk_finds_the_float_fields():
    names = {f"{m.__name__}.{name}" for m, name in _float_fields()}
    assert {"Constraints.latency_budget_ms", "JobCreate.timeout_s", "HealOptions.lr", "MinKeep.heads"} <= names


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_no_request_float_accepts_non_finite_values(value):
    for model, name in _float_fields():
        adapter = model if issubclass(model, BaseModel) else TypeAdapter(model)
        validate = adapter.model_validate if issubclass(model, BaseModel) else adapter.validate_python
        listed = _is_list(model.__pydantic_fields__[name].annotation)
        with pytest.raises(ValidationError) as info:
            validate({name: [value] if listed else value})
        loc = (name, 0) if listed else (name,)
        types = {e["type"] for e in info.value.errors() if e["loc"] == loc}
        assert types == {"finite_number"}, (model.__name__, name, types)


@pytest.mark.parametrize(
    "change",
    [{"n_trials": True}, {"n_trials": "5"}, {"timeout_s": "1.5"}, {"baselines": 1}, {"workload": {"batch": False}}],
)
def test_numbers_and_booleans_are_not_coerced(api, change):
    """JSON has types: `true` is not 1 and "5" is not 5 (the schema says integer; schemathesis checks it)."""
    response = api.post("/v1/jobs", json=job_body(**change))
    assert response.status_code == 422, response.text
    assert ExportCreate.model_json_schema()["properties"]["trial"]["type"] == "integer"
    with pytest.raises(ValidationError):
        ExportCreate.model_validate({"trial": False})


def test_a_405_lists_every_method_on_the_path(api):
    assert api.options("/v1/jobs").headers["allow"] == "GET, HEAD, POST"
    assert api.put("/v1/jobs/abc").headers["allow"] == "DELETE, GET, HEAD"
    assert api.get("/v1/jobs/abc/cancel").headers["allow"] == "POST"


def test_non_finite_numbers_on_postgresql_get_422(pg_settings):
    """PostgreSQL's JSON columns store no NaN: these used to reach the database and come back as a 500."""
    with TestClient(create_app(pg_settings)) as api:
        for fragment in ('"timeout_s": Infinity', '"constraints": {"latency_budget_ms": Infinity}'):
            body = json.dumps(job_body())[:-1] + ", " + fragment + "}"
            assert _post_raw(api, body).status_code == 422
        assert api.post("/v1/jobs", json=job_body(timeout_s=5.0)).status_code == 202


@pytest.mark.parametrize(("budgets", "loc"), [([0.5, 1.5], ["body", "budgets", 1]), ([0.1] * 17, ["body", "budgets"])])
def test_fill_budgets_out_of_range_get_a_422_naming_the_field(api, budgets, loc):
    response = api.post("/v1/jobs", json=job_body() | {"budgets": budgets})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_fill_budgets_are_kept_with_the_job(api):
    job = api.post("/v1/jobs", json=job_body() | {"budgets": [0.5, 0.7]})
    assert job.status_code == 202, job.text
    assert api.get(f"/v1/jobs/{job.json()['id']}").json()["spec"]["budgets"] == [0.5, 0.7]


def test_an_unknown_repair_gets_a_422_naming_the_field(api):
    response = api.post("/v1/jobs", json=job_body() | {"repair": "retrain"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "repair"]


def test_repair_on_a_draft_search_gets_a_422_that_says_why(api):
    body = job_body() | {"repair": "refit", "objectives": {"speculative": {}}}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert "repair" in response.text and "draft" in response.text


def test_repair_is_kept_with_the_job(api):
    job = api.post("/v1/jobs", json=job_body() | {"repair": "refit"})
    assert job.status_code == 202, job.text
    assert api.get(f"/v1/jobs/{job.json()['id']}").json()["spec"]["repair"] == "refit"
