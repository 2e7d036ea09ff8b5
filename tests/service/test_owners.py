"""Issue 12, alice and bob: two non-admin accounts try every route of the API on each other's objects. Not one
cross-owner read or write gets through (404 as for an unknown id, lists hold only one's own), neither sees a
server path, and an admin sees everything. Every route of the app must be classified below, so a new route
fails this test until it is."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from prunesearch.choices import ExportStatus, JobStatus
from prunesearch.service import crud
from prunesearch.service.api.main import create_app
from prunesearch.service.auth import create_token
from prunesearch.service.db import session_scope
from prunesearch.service.models import Evaluation, Export, Job
from prunesearch.service.settings import EXAMPLES_DIR

from ..fake_backend import FakeBackend
from .conftest import job_body


@dataclass
class Objects:
    """What one account owns: a running job with a trial, a finished job, a finished export, an upload."""

    job: str
    finished: str
    export: str
    dataset: str
    evaluation: str


Call = Callable[[TestClient, Objects], object]

# Routes on one owner's object: the other non-admin gets 404 and changes nothing.
OWNED: dict[tuple[str, str], Call] = {
    ("GET", "/v1/jobs/{job_id}"): lambda c, o: c.get(f"/v1/jobs/{o.job}"),
    ("GET", "/v1/jobs/{job_id}/trials"): lambda c, o: c.get(f"/v1/jobs/{o.job}/trials"),
    ("GET", "/v1/jobs/{job_id}/pareto"): lambda c, o: c.get(f"/v1/jobs/{o.job}/pareto"),
    # a finished job's stream ends after its history (a running job's would not)
    ("GET", "/v1/jobs/{job_id}/events"): lambda c, o: c.get(f"/v1/jobs/{o.finished}/events"),
    ("POST", "/v1/jobs/{job_id}/exports"): lambda c, o: c.post(f"/v1/jobs/{o.job}/exports", json={"trial": 0}),
    ("GET", "/v1/exports/{export_id}"): lambda c, o: c.get(f"/v1/exports/{o.export}"),
    ("GET", "/v1/exports/{export_id}/download"): lambda c, o: c.get(f"/v1/exports/{o.export}/download"),
    ("POST", "/v1/jobs/{job_id}/cancel"): lambda c, o: c.post(f"/v1/jobs/{o.job}/cancel"),
    ("DELETE", "/v1/jobs/{job_id}"): lambda c, o: c.delete(f"/v1/jobs/{o.finished}"),
    ("POST", "/v1/exports/{export_id}/evaluations"): lambda c, o: c.post(
        f"/v1/exports/{o.export}/evaluations", json={"data": [o.dataset]}
    ),
    ("GET", "/v1/exports/{export_id}/evaluations/{evaluation_id}"): lambda c, o: c.get(
        f"/v1/exports/{o.export}/evaluations/{o.evaluation}"
    ),
}
# Routes on the caller's own collection: checked by `test_collections_hold_only_ones_own`.
COLLECTIONS = {("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("POST", "/v1/datasets")}
# The same for every account (a token is still needed where the server requires one).
SHARED = {("GET", "/v1/hardware")}
# Open without a token: health probes and the API's own description.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/metrics"),  # Prometheus scrapes without a token: counts and durations, no ids or paths
    ("GET", "/"),  # the web page: static, no data (it reads the /v1 routes with the token it is given)
}


def _routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route, those of included routers too (FastAPI includes routers lazily, so
    `app.routes` holds the routers, not their routes)."""
    return {(m, r.path) for r in iter_route_contexts(app.routes) for m in (r.methods or ()) if m != "HEAD"}


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def clients(settings, fake) -> Iterator[dict[str, TestClient]]:
    """TestClients of alice, bob (non-admins), root (an admin) and anonymous, on one app."""
    with session_scope(settings.db_url) as session:
        tokens = {name: create_token(session, name=name, admin=name == "root")[1] for name in ("alice", "bob", "root")}
    app = create_app(settings, backend=fake)
    with ExitStack() as stack:
        made = {
            n: stack.enter_context(TestClient(app, headers={"Authorization": f"Bearer {t}"})) for n, t in tokens.items()
        }
        made["anonymous"] = stack.enter_context(TestClient(app))
        yield made


def _seed(client: TestClient, settings, fake: FakeBackend) -> Objects:
    """Through the API as `client`, then into the states the routes need (a worker would get them there)."""
    dataset = client.post("/v1/datasets", files={"file": ("mine.txt", b"calibration text of mine\n" * 20)})
    assert dataset.status_code == 201, dataset.text
    job = client.post("/v1/jobs", json=job_body(calibration=dataset.json()["id"])).json()["id"]
    finished = client.post("/v1/jobs", json=job_body(model="tiny-llama")).json()["id"]
    now = datetime.now(UTC)
    with session_scope(settings.db_url) as session:
        running = session.get(Job, job)
        running.status, running.started_at, running.trials_claimed, running.trials_done = "running", now, 1, 1
        fake.add_trial(running.study_name)
        front = [{"trial": 0, "plan": {}, "metrics": {"kl": 0.1, "latency_ms": 1.0}, "baseline": None}]
        crud.add_snapshot(session, job_id=job, trials_done=1, hypervolume=0.5, front=front)
        done = session.get(Job, finished)
        done.status, done.finished_at = JobStatus.FAILED, now
        done.error = f"OSError: cannot read {settings.data_dir}/models/x/weights.bin nor /opt/elsewhere/secret.bin"
    heal = {"tokens": 2048, "seq_len": 64, "method": "lora"}
    export = client.post(f"/v1/jobs/{job}/exports", json={"trial": 0, "heal": heal})
    assert export.status_code == 202, export.text
    archive = settings.export_root / f"{export.json()['id']}-1.tar"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"a tar archive")
    with session_scope(settings.db_url) as session:
        row = session.get(Export, export.json()["id"])
        row.status, row.path, row.size = ExportStatus.SUCCEEDED, str(archive), archive.stat().st_size
        row.sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
        row.summary = {"heal": {"eval": {f"{EXAMPLES_DIR}/tiny-llama/calib.txt": {"before": 9.0, "after": 8.0}}}}
    evaluation = client.post(f"/v1/exports/{export.json()['id']}/evaluations", json={"data": [dataset.json()["id"]]})
    assert evaluation.status_code == 202, evaluation.text
    ids = {"export": export.json()["id"], "dataset": dataset.json()["id"], "evaluation": evaluation.json()["id"]}
    return Objects(job=job, finished=finished, **ids)


def _state(settings, objects: Objects) -> tuple:
    """All that a write by someone else could change of `objects`."""
    with session_scope(settings.db_url) as session:
        job, finished = session.get(Job, objects.job), session.get(Job, objects.finished)
        exports = sorted(e.id for e in crud.list_exports(session, job_id=objects.job))
        evaluations = session.scalar(select(func.count()).select_from(Evaluation))
        return job.status, job.cancel_requested, finished is not None, exports, evaluations


def _no_server_paths(text: str, settings) -> None:
    for path in (str(settings.data_dir), str(EXAMPLES_DIR), str(settings.data_dir.resolve()), "/opt/elsewhere"):
        assert path not in text, f"{path} in a non-admin's response: {text[:500]}"
    # No absolute path at all, other than the API's own (/v1/...).
    assert not re.search(r"(?<![\w:/.])/(?!v1/)[\w.-]+/[\w.-]+", text.replace("\\/", "/")), text[:500]


def test_every_route_is_classified(settings):
    routes = _routes(create_app(settings, backend=FakeBackend()))
    known = set(OWNED) | COLLECTIONS | SHARED | PUBLIC
    assert routes - known == set(), "classify these routes in tests/service/test_owners.py"
    assert known - routes == set(), "these classified routes no longer exist"


def test_no_cross_owner_read_or_write_on_any_route(settings, fake, clients):
    alice, bob = _seed(clients["alice"], settings, fake), _seed(clients["bob"], settings, fake)
    for intruder, owner, theirs in [(clients["bob"], clients["alice"], alice), (clients["alice"], clients["bob"], bob)]:
        before = _state(settings, theirs)
        for route, call in OWNED.items():
            response = call(intruder, theirs)
            assert response.status_code == 404, (route, response.status_code, response.text)
            assert "not found" in response.json()["detail"]
        assert _state(settings, theirs) == before  # no cancel, delete or export went through
        # Each route works for the owner (the 404 above is not a broken route), and shows no server path.
        for route, call in OWNED.items():
            response = call(owner, theirs)
            assert response.status_code in (200, 202, 204), (route, response.status_code, response.text)
            if response.headers.get("content-type") == "application/json":
                _no_server_paths(response.text, settings)


def test_collections_hold_only_ones_own(settings, fake, clients):
    alice, bob = _seed(clients["alice"], settings, fake), _seed(clients["bob"], settings, fake)
    for client, mine, theirs in [(clients["alice"], alice, bob), (clients["bob"], bob, alice)]:
        listed = client.get("/v1/jobs")
        assert {j["id"] for j in listed.json()["items"]} == {mine.job, mine.finished} and listed.json()["total"] == 2
        _no_server_paths(listed.text, settings)
        # Another owner's upload is not there to name, by id or by its path under the uploads directory.
        for calibration in (theirs.dataset, f"{theirs.dataset}/mine.txt"):
            refused = client.post("/v1/jobs", json=job_body(calibration=calibration))
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["body", "calibration"]
        heal = {"tokens": 2048, "seq_len": 64, "data": theirs.dataset}
        assert client.post(f"/v1/jobs/{mine.job}/exports", json={"trial": 0, "heal": heal}).status_code == 422
        upload = client.post("/v1/datasets", files={"file": ("more.txt", b"more text\n" * 20)})
        assert upload.json()["owner"] == listed.json()["items"][0]["owner"]
        assert client.post("/v1/jobs", json=job_body(owner="someone-else")).status_code == 403
        odd = client.post("/v1/jobs", json=job_body(model="y" * 300))  # the filesystem error names a full path
        assert odd.status_code == 422 and "too long" in odd.text
        _no_server_paths(odd.text, settings)
    # Idempotency keys are per owner: the same key is two jobs, and a retry returns one's own.
    first = {
        n: clients[n].post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k"}).json()
        for n in ("alice", "bob")
    }
    assert first["alice"]["id"] != first["bob"]["id"]
    assert (first["alice"]["owner"], first["bob"]["owner"]) == ("alice", "bob")
    again = clients["bob"].post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k"}).json()
    assert again["id"] == first["bob"]["id"]


def test_an_admin_sees_and_manages_everyone(settings, fake, clients):
    alice, bob = _seed(clients["alice"], settings, fake), _seed(clients["bob"], settings, fake)
    root = clients["root"]
    listed = {j["id"]: j["owner"] for j in root.get("/v1/jobs").json()["items"]}
    assert listed == {alice.job: "alice", alice.finished: "alice", bob.job: "bob", bob.finished: "bob"}
    for objects in (alice, bob):
        for route, call in OWNED.items():
            response = call(root, objects)
            assert response.status_code in (200, 202, 204), (route, response.text)
    job = root.get(f"/v1/jobs/{alice.job}").json()
    assert job["spec"]["calibration"].startswith(str(settings.datasets_dir))  # an admin sees the server's paths
    # An admin may submit for an account; the job is then that account's.
    made = root.post("/v1/jobs", json=job_body(owner="alice")).json()
    assert made["owner"] == "alice" and clients["alice"].get(f"/v1/jobs/{made['id']}").status_code == 200


def test_an_owner_reads_paths_relative_to_the_servers_roots(settings, fake, clients):
    alice = _seed(clients["alice"], settings, fake)
    spec = clients["alice"].get(f"/v1/jobs/{alice.job}").json()["spec"]
    assert (spec["model"], spec["calibration"]) == ("tiny-llama", f"{alice.dataset}/mine.txt")
    error = clients["alice"].get("/v1/jobs", params={"status": "failed"}).json()["items"][0]["error"]
    assert error == "OSError: cannot read x/weights.bin nor secret.bin"  # models/ is a model root
    export = clients["alice"].get(f"/v1/exports/{alice.export}").json()
    assert export["heal"]["data"] == f"{alice.dataset}/mine.txt"
    assert list(export["summary"]["heal"]["eval"]) == ["tiny-llama/calib.txt"]
    assert export["download_url"] == f"/v1/exports/{alice.export}/download"
    assert json.loads(clients["anonymous"].get(f"/v1/exports/{alice.export}").text)["heal"]["data"].startswith("/")
