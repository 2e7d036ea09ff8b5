"""`GET /v1/jobs/{id}/events`: a live server (uvicorn on loopback) streams what the worker's own code paths write
to the database, within a second, resumable with `Last-Event-ID`, ending once the job is done."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvicorn

from prunesearch.choices import EventKind, ExportStatus, JobStatus
from prunesearch.search.results import SearchProgress
from prunesearch.service import crud
from prunesearch.service.api.main import create_app
from prunesearch.service.api.routes import events as events_route
from prunesearch.service.client import Client, JobEvent, ServiceError
from prunesearch.service.client_cli import watch
from prunesearch.service.db import session_scope
from prunesearch.service.events import emit, events_after
from prunesearch.service.worker.claims import claim_export, claim_job, claim_trial
from prunesearch.service.worker.runner import record, record_heal

from ..fake_backend import FakeBackend

# The target: a client sees a trial within 1 s of the worker recording it (the API polls every 0.2 s).
FIRST_EVENT_S = 1.0


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(settings, fake) -> Iterator[str]:
    """The API on a free loopback port, in a thread; stopped after the test. Its searches are `fake`'s."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings, backend=fake), log_level="warning", timeout_graceful_shutdown=2)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=15)
    sock.close()
    assert not thread.is_alive(), "the server did not stop"


class Listener:
    """Reads a job's stream in a thread: each event with the time it arrived; `done` once the stream ends."""

    def __init__(self, url: str, job_id: str, last_event_id: int | None = None) -> None:
        self.events: queue.Queue[tuple[float, JobEvent]] = queue.Queue()
        self.error: Exception | None = None
        self.done = threading.Event()
        self._args = (job_id, last_event_id)
        self._client = Client(url, timeout=10)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self._client.events(*self._args):
                self.events.put((time.monotonic(), event))
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def next(self, timeout: float = 10.0) -> tuple[float, JobEvent]:
        return self.events.get(timeout=timeout)

    def rest(self, timeout: float = 10.0) -> list[JobEvent]:
        """The events still to come, once the stream has ended."""
        assert self.done.wait(timeout), "the stream did not end"
        assert self.error is None, self.error
        items = []
        while not self.events.empty():
            items.append(self.events.get_nowait()[1])
        return items


def _new_job(url: str, n_trials: int = 3) -> str:
    with session_scope(url, immediate=True) as session:
        return crud.create_job(session, spec={"n_trials": n_trials}, parallelism=1, owner=None, idempotency_key=None).id


def _progress(done: int, front_trials: list[int], trial: int) -> SearchProgress:
    front = tuple({"trial": t, "metrics": {"kl": 0.1 * t, "latency_ms": 1.0 + t}} for t in front_trials)
    return SearchProgress(trials_done=done, n_trials=3, hypervolume=0.5 * done, front=front, last_trial=trial)


def _leave(url: str, job_id: str) -> None:
    with session_scope(url, immediate=True) as session:
        crud.leave_job(session, job_id=job_id)


def test_a_trial_reaches_the_client_within_a_second_and_a_resume_skips_what_was_seen(settings, server):
    url = settings.db_url
    job_id = _new_job(url)
    listener = Listener(server, job_id)
    _, first = listener.next()
    assert (first.id, first.kind, first.data["status"]) == (1, EventKind.STATUS, JobStatus.QUEUED)

    assert claim_job(url, lease_s=60).job_id == job_id  # the worker's claim: the job runs
    _, running = listener.next()
    assert (running.kind, running.data["status"]) == (EventKind.STATUS, JobStatus.RUNNING)

    record(url, job_id, _progress(1, [0], trial=0))  # the worker's own write after a trial
    recorded = time.monotonic()
    arrived, trial = listener.next()
    assert (trial.kind, trial.data["trial"], trial.data["trials_done"]) == (EventKind.TRIAL, 0, 1)
    assert arrived - recorded < FIRST_EVENT_S, f"the trial took {arrived - recorded:.3f} s to arrive"
    _, front = listener.next()
    assert front.kind == EventKind.FRONT and [row["trial"] for row in front.data["front"]] == [0]

    record(url, job_id, _progress(2, [0], trial=1))  # the front stays: a trial event only
    record(url, job_id, _progress(2, [0], trial=1))  # the same count again (the end-of-run record): nothing
    record(url, job_id, _progress(3, [0, 2], trial=2))
    _leave(url, job_id)
    events = [first, running, trial, front, *listener.rest()]
    kinds = [e.kind for e in events]
    assert kinds == ["status", "status", "trial", "front", "trial", "trial", "front", "status"]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].data["status"] == JobStatus.SUCCEEDED  # sent, then the stream ended

    resumed = Listener(server, job_id, last_event_id=4).rest()
    assert [e.id for e in resumed] == [5, 6, 7, 8]
    assert resumed == events[4:]


def test_the_stream_stays_open_while_an_export_of_a_finished_job_runs(settings, server, monkeypatch):
    monkeypatch.setattr(events_route, "PING_S", 0.1)  # keep-alive comments between the events: clients skip them
    url = settings.db_url
    job_id = _new_job(url, n_trials=1)
    claim_job(url, lease_s=60)
    record(url, job_id, _progress(1, [0], trial=0))
    _leave(url, job_id)
    with session_scope(url, immediate=True) as session:
        export_id = crud.create_export(session, job_id=job_id, trial=0, dtype="fp32").id
    listener = Listener(server, job_id)
    assert claim_export(url, lease_s=60) is not None  # running, attempt 1
    with session_scope(url) as session:
        progress = {"phase": "healing", "step": 3, "total": 10, "loss": 0.5}
        assert crud.record_export_progress(session, export_id=export_id, attempt=1, progress=progress)
    time.sleep(0.6)
    assert not listener.done.is_set(), "the stream ended while an export of the job was running"
    with session_scope(url) as session:
        crud.finish_export(session, export_id=export_id, attempt=1, status=ExportStatus.SUCCEEDED)
    exports = [e.data for e in listener.rest() if e.kind == EventKind.EXPORT]
    assert [(d["status"], (d["progress"] or {}).get("step")) for d in exports] == [
        ("queued", None),
        ("running", None),
        ("running", 3),
        ("succeeded", 3),
    ]
    assert {d["export_id"] for d in exports} == {export_id}


def test_watch_follows_the_stream_and_falls_back_to_polling(settings, server):
    url = settings.db_url
    job_id = _new_job(url, n_trials=1)
    claim_job(url, lease_s=60)
    client = Client(server)
    start = client.job(job_id)
    threading.Timer(0.5, lambda: (record(url, job_id, _progress(1, [0], trial=0)), _leave(url, job_id))).start()
    job = watch(client, start, interval=30)  # an interval this long: only the stream can end it in time
    assert (job["status"], job["trials_done"]) == (JobStatus.SUCCEEDED, 1)

    class NoStream(Client):
        polled = 0

        def events(self, job_id, last_event_id=None):
            raise ServiceError("404: Not Found", 404)

        def job(self, job_id):
            NoStream.polled += 1
            return super().job(job_id)

    assert watch(NoStream(server), start, interval=0.01)["status"] == JobStatus.SUCCEEDED
    assert NoStream.polled >= 1


def test_heal_stage_progress_is_an_event_and_a_final_jobs_stream_ends(api, settings):
    url = settings.db_url
    job_id = _new_job(url)
    record_heal(url, job_id, {"trial": 4, "step": 2, "total_steps": 8, "loss": 0.25})
    with session_scope(url, immediate=True) as session:
        crud.request_cancel(session, job=crud.get_job(session, job_id=job_id))  # queued: cancelled at once
    response = api.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "1"})  # ends: the job is final
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [block for block in response.text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    assert blocks[0].splitlines()[:2] == ["id: 2", "event: heal"]
    assert '"step": 2' in blocks[0]
    assert blocks[1].splitlines()[:2] == ["id: 3", "event: status"] and '"cancelled"' in blocks[1]
    assert len(blocks) == 2


def test_unknown_jobs_and_bad_event_ids_are_refused(api, settings):
    job_id = _new_job(settings.db_url)
    assert api.get("/v1/jobs/00000000-0000-4000-8000-000000000000/events").status_code == 404
    assert api.get("/v1/jobs/not-an-id/events").status_code == 404
    response = api.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "seven"})
    assert response.status_code == 422


def test_the_route_is_declared_as_an_event_stream(api):
    operation = api.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert any(p["name"].lower() == "last-event-id" for p in operation["parameters"])


def test_concurrent_writers_number_a_jobs_events_without_gaps_on_postgresql(pg_settings):
    """Two writers at once: the job row's counter serialises them, so numbers are 1..N in commit order."""
    url = pg_settings.db_url
    job_id = _new_job(url)

    def write(n: int) -> None:
        for i in range(n):
            with session_scope(url) as session:
                emit(session, job_id=job_id, kind=EventKind.TRIAL, data={"i": i})

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, [25, 25]))
    with session_scope(url) as session:
        seqs = [e.seq for e in events_after(session, job_id=job_id, after=0)]
        crud.request_cancel(session, job=crud.get_job(session, job_id=job_id))
    assert seqs == list(range(1, 52))  # the job's own `queued` event, then the 50 written


def test_what_a_request_writes_is_committed_before_its_response(settings, server, fake):
    """A client that acts on a 202 at once (`export --wait` opens the job's stream) must find the export there."""
    url = settings.db_url
    job_id = _new_job(url, n_trials=1)
    with session_scope(url) as session:
        fake.add_trial(crud.get_job(session, job_id=job_id).study_name)  # trial 0, complete: exportable
    claim_job(url, lease_s=60)
    assert claim_trial(url, job_id)
    record(url, job_id, _progress(1, [0], trial=0))
    _leave(url, job_id)
    client = Client(server)
    for _ in range(5):
        export = client.export(job_id, 0, "fp32")
        with session_scope(url) as session:
            assert crud.get_export(session, export_id=export["id"]) is not None
