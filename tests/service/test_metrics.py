"""`/metrics`: requests (prometheus-fastapi-instrumentator) and the work every worker records in the database
(jobs by state, queue depth, trials, export and heal durations), in the Prometheus text format."""

from __future__ import annotations

import socket
from datetime import timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families

from prunesearch.choices import ExportStatus
from prunesearch.search.results import SearchProgress
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import Export
from prunesearch.service.worker.claims import claim_export, claim_job
from prunesearch.service.worker.loop import Worker
from prunesearch.service.worker.metrics import serve_metrics
from prunesearch.service.worker.runner import record

from ..fake_backend import FakeBackend
from .conftest import job_body


def _samples(api) -> dict[tuple[str, tuple], float]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _job(url: str, n_trials: int = 2) -> str:
    with session_scope(url, immediate=True) as session:
        return crud.create_job(session, spec={"n_trials": n_trials}, parallelism=1, owner=None, idempotency_key=None).id


def test_metrics_count_jobs_trials_queue_and_durations(api, settings):
    url = settings.db_url
    running, _queued = _job(url), _job(url)
    assert claim_job(url, lease_s=60).job_id == running
    for done in (1, 2):
        record(url, running, SearchProgress(trials_done=done, n_trials=2, hypervolume=0.1, front=(), last_trial=done))
    with session_scope(url, immediate=True) as session:
        export_id = crud.create_export(session, job_id=running, trial=0, dtype="fp32").id
        crud.create_export(session, job_id=running, trial=1, dtype="fp32")  # stays queued
    assert claim_export(url, lease_s=60).export_id == export_id
    with session_scope(url) as session:
        summary = {"heal": {"wall_seconds": 42.0}}
        crud.finish_export(session, export_id=export_id, attempt=1, status=ExportStatus.SUCCEEDED, summary=summary)
        export = session.get(Export, export_id)
        export.started_at = export.finished_at - timedelta(seconds=90)  # a 90 s export

    api.get("/healthz")
    metrics = _samples(api)
    assert metrics[("prunesearch_jobs", (("status", "running"),))] == 1
    assert metrics[("prunesearch_jobs", (("status", "queued"),))] == 1
    assert metrics[("prunesearch_jobs", (("status", "failed"),))] == 0
    assert metrics[("prunesearch_queue_depth", (("kind", "job"),))] == 1
    assert metrics[("prunesearch_queue_depth", (("kind", "export"),))] == 1
    assert metrics[("prunesearch_exports", (("status", "succeeded"),))] == 1
    assert metrics[("prunesearch_active_workers", ())] == 1
    assert metrics[("prunesearch_trials_finished_total", ())] == 2
    assert metrics[("prunesearch_trials_per_second", ())] == 2 / 60
    assert metrics[("prunesearch_export_duration_seconds_count", ())] == 1
    assert metrics[("prunesearch_export_duration_seconds_bucket", (("le", "60.0"),))] == 0
    assert metrics[("prunesearch_export_duration_seconds_bucket", (("le", "300.0"),))] == 1
    assert abs(metrics[("prunesearch_export_duration_seconds_sum", ())] - 90) < 1
    assert metrics[("prunesearch_heal_duration_seconds_sum", ())] == 42
    assert metrics[("prunesearch_database_up", ())] == 1
    requests = {labels: v for (name, labels), v in metrics.items() if name == "http_requests_total"}
    assert requests[(("handler", "/healthz"), ("method", "GET"), ("status", "2xx"))] == 1


def test_metrics_say_when_the_database_cannot_be_read(settings, tmp_path):
    from fastapi.testclient import TestClient

    from prunesearch.service.api.main import create_app

    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/no-schema.db"})
    with TestClient(create_app(broken)) as api:
        metrics = _samples(api)
    assert metrics[("prunesearch_database_up", ())] == 0


def _worker_samples(port: int) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_workers_endpoint_counts_its_trials_and_exports(settings, api):
    """`worker --metrics-port`: the worker's own registry, served over HTTP while it runs a job and an export."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server, thread = serve_metrics(port)
    try:
        before = _worker_samples(port)
        job_id = api.post("/v1/jobs", json=job_body(n_trials=3)).json()["id"]
        fake = FakeBackend()
        Worker(settings, max_idle_s=0.0, backend=fake).run()
        with session_scope(settings.db_url, immediate=True) as session:
            crud.create_export(session, job_id=job_id, trial=1, dtype="fp32")
        Worker(settings, max_idle_s=0.0, backend=fake).run()
        after = _worker_samples(port)
    finally:
        server.shutdown()
        thread.join(timeout=10)

    def grew(name: str, labels: tuple = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("prunesearch_worker_trials_total") == 3
    assert grew("prunesearch_worker_trial_seconds_count") == 3
    assert grew("prunesearch_worker_exports_total", (("status", "succeeded"),)) == 1
    assert grew("prunesearch_worker_export_seconds_count") == 1
    assert after[("prunesearch_worker_busy", (("work", "job"),))] == 0
    assert after[("process_resident_memory_bytes", ())] > 0


def test_a_worker_refuses_a_metrics_port_it_cannot_serve(settings, capsys, restore_logging):
    from prunesearch.cli import main

    base = ["worker", "--database-url", settings.db_url, "--max-idle", "0", "--log-level", "warning"]
    assert main([*base, "--metrics-port", "0"]) == 2
    assert "--metrics-port must be 1 to 65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main([*base, "--metrics-port", str(taken.getsockname()[1])]) == 2
    assert "cannot serve worker metrics on 127.0.0.1" in capsys.readouterr().err
