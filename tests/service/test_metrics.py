"""`/metrics`: requests (prometheus-fastapi-instrumentator) and the work every worker records in the database
(jobs by state, queue depth, trials, export and heal durations), in the Prometheus text format."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from prunesearch.choices import ExportStatus
from prunesearch.search.results import SearchProgress
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import Export
from prunesearch.service.worker.claims import claim_export, claim_job
from prunesearch.service.worker.runner import record


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
