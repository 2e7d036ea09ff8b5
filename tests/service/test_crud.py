"""The job state machine in the database: trial quota, leaving, requeue on shutdown, lease recovery."""

from __future__ import annotations

from datetime import timedelta

from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import utcnow
from prunesearch.service.worker.claims import claim_export, claim_job, claim_trial

from .conftest import job_body


def _job(settings, **kw) -> str:
    with session_scope(settings.db_url) as s:
        spec = job_body(**kw)
        return crud.create_job(s, spec=spec, parallelism=kw.get("parallelism", 1), owner=None, idempotency_key=None).id


def _get(settings, job_id):
    with session_scope(settings.db_url) as s:
        return crud.get_job(s, job_id=job_id)


def test_trial_claims_stop_at_n_trials(settings):
    job_id = _job(settings, n_trials=3)
    assert not claim_trial(settings.db_url, job_id)  # queued: nothing to claim yet
    assert claim_job(settings.db_url, lease_s=60)[:2] == (job_id, True)
    assert [claim_trial(settings.db_url, job_id) for _ in range(5)] == [True] * 3 + [False] * 2
    assert _get(settings, job_id).trials_claimed == 3


def test_parallelism_bounds_how_many_workers_join(settings):
    job_id = _job(settings, parallelism=2)
    assert claim_job(settings.db_url, lease_s=60)[:2] == (job_id, True)
    assert claim_job(settings.db_url, lease_s=60)[:2] == (job_id, False)  # the first worker is on it too
    assert claim_job(settings.db_url, lease_s=60) is None
    assert _get(settings, job_id).active_workers == 2


def test_last_worker_out_settles_the_status(settings):
    job_id = _job(settings, n_trials=2, parallelism=2)
    claim_job(settings.db_url, lease_s=60), claim_job(settings.db_url, lease_s=60)
    with session_scope(settings.db_url) as s:
        crud.record_progress(s, job_id=job_id, trials_done=1, front_size=1, hypervolume=0.1)
        assert crud.leave_job(s, job_id=job_id).status == "running"  # the other worker is still on it
    with session_scope(settings.db_url) as s:
        crud.record_progress(s, job_id=job_id, trials_done=0, front_size=0, hypervolume=None)  # stale report
        crud.record_progress(s, job_id=job_id, trials_done=2, front_size=2, hypervolume=0.2)
        job = crud.leave_job(s, job_id=job_id)
    assert (job.status, job.trials_done, job.active_workers) == ("succeeded", 2, 0)


def test_pending_heal_keeps_the_job_running_until_the_last_worker_leaves(settings):
    """Trials all done but heal candidates left: a worker leaving does not settle the job while another is on
    it; shutting down requeues it (for its heal stage); the last worker out with nothing pending settles it."""
    job_id = _job(settings, n_trials=2, parallelism=2)
    claim_job(settings.db_url, lease_s=60), claim_job(settings.db_url, lease_s=60)
    with session_scope(settings.db_url) as s:
        crud.record_progress(s, job_id=job_id, trials_done=2, front_size=2, hypervolume=0.2)
        assert crud.leave_job(s, job_id=job_id, pending=True).status == "running"
    with session_scope(settings.db_url) as s:
        job = crud.leave_job(s, job_id=job_id, pending=True, requeue=True)
    assert (job.status, job.active_workers, job.finished_at) == ("queued", 0, None)
    assert claim_job(settings.db_url, lease_s=60)[:2] == (job_id, True)
    with session_scope(settings.db_url) as s:
        job = crud.leave_job(s, job_id=job_id, pending=True)  # the last out, candidates still unhealed
    assert (job.status, job.active_workers, job.finished_at) == ("queued", 0, None)
    assert claim_job(settings.db_url, lease_s=60)[:2] == (job_id, True)
    with session_scope(settings.db_url) as s:
        job = crud.leave_job(s, job_id=job_id, pending=False)
    assert (job.status, job.trials_done) == ("succeeded", 2)
    cancelled = _job(settings, n_trials=2)
    assert claim_job(settings.db_url, lease_s=60)[:2] == (cancelled, True)
    with session_scope(settings.db_url) as s:
        crud.request_cancel(s, job=crud.get_job(s, job_id=cancelled))
    with session_scope(settings.db_url) as s:
        assert crud.leave_job(s, job_id=cancelled, pending=True).status == "cancelled"  # cancel wins


def test_shutdown_requeues_and_errors_fail(settings):
    job_id = _job(settings, n_trials=5)
    claim_job(settings.db_url, lease_s=60)
    claim_trial(settings.db_url, job_id)
    with session_scope(settings.db_url) as s:
        job = crud.leave_job(s, job_id=job_id, requeue=True)
    assert (job.status, job.trials_claimed, job.finished_at) == ("queued", 0, None)
    claim_job(settings.db_url, lease_s=60)
    with session_scope(settings.db_url) as s:
        job = crud.leave_job(s, job_id=job_id, error="ValueError: model is broken")
    assert (job.status, job.error) == ("failed", "ValueError: model is broken")


def test_an_expired_lease_is_recovered_by_another_worker(settings):
    job_id = _job(settings, n_trials=5)
    claim_job(settings.db_url, lease_s=60)
    claim_trial(settings.db_url, job_id), claim_trial(settings.db_url, job_id)
    with session_scope(settings.db_url) as s:
        crud.record_progress(s, job_id=job_id, trials_done=1, front_size=1, hypervolume=None)
        crud.get_job(s, job_id=job_id).heartbeat_at = utcnow() - timedelta(seconds=600)
    assert claim_job(settings.db_url, lease_s=60)[:2] == (job_id, True)  # its only worker died: alone again
    job = _get(settings, job_id)
    assert (job.status, job.active_workers, job.trials_claimed) == ("running", 1, 1)


def test_cancel_of_a_running_job_waits_for_its_workers(settings):
    job_id = _job(settings)
    claim_job(settings.db_url, lease_s=60)
    with session_scope(settings.db_url) as s:
        crud.request_cancel(s, job=crud.get_job(s, job_id=job_id))
    assert _get(settings, job_id).status == "running"
    assert not claim_trial(settings.db_url, job_id)
    with session_scope(settings.db_url) as s:
        assert crud.leave_job(s, job_id=job_id).status == "cancelled"


def _expire_export(settings, export_id) -> None:
    with session_scope(settings.db_url) as s:
        crud.get_export(s, export_id=export_id).heartbeat_at = utcnow() - timedelta(seconds=600)


def test_an_export_whose_worker_died_is_taken_up_again_and_only_the_latest_attempt_finishes(settings):
    job_id = _job(settings)
    with session_scope(settings.db_url) as s:
        export_id = crud.create_export(s, job_id=job_id, trial=0, dtype="fp32").id
    assert claim_export(settings.db_url, lease_s=60) == (export_id, 1)
    assert claim_export(settings.db_url, lease_s=60) is None  # running, its lease fresh
    _expire_export(settings, export_id)
    assert claim_export(settings.db_url, lease_s=60) == (export_id, 2)  # its worker stopped renewing the lease
    with session_scope(settings.db_url) as s:
        crud.export_heartbeat(s, export_id=export_id, attempt=1)  # the first worker was only stalled
        assert not crud.finish_export(s, export_id=export_id, attempt=1, status="succeeded")
        assert crud.finish_export(s, export_id=export_id, attempt=2, status="succeeded")
        export = crud.get_export(s, export_id=export_id)
        assert (export.status, export.attempts) == ("succeeded", 2)


def test_an_export_that_keeps_killing_its_workers_fails(settings):
    job_id = _job(settings)
    with session_scope(settings.db_url) as s:
        export_id = crud.create_export(s, job_id=job_id, trial=0, dtype="fp32").id
    for attempt in range(1, crud.MAX_EXPORT_ATTEMPTS + 1):
        assert claim_export(settings.db_url, lease_s=60) == (export_id, attempt)
        _expire_export(settings, export_id)
    assert claim_export(settings.db_url, lease_s=60) is None
    with session_scope(settings.db_url) as s:
        export = crud.get_export(s, export_id=export_id)
        assert export.status == "failed" and "stopped 3 times" in export.error


def test_eta_is_unknown_before_the_first_trial_and_after_the_last():
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from prunesearch.choices import JobStatus
    from prunesearch.service.schemas import eta_seconds

    started = datetime.now(UTC) - timedelta(seconds=100)
    job = SimpleNamespace(status=JobStatus.RUNNING, started_at=started, n_trials=10, trials_done=4)
    assert 140 < eta_seconds(job) < 160  # 25 s a trial, 6 left
    assert eta_seconds(SimpleNamespace(**{**vars(job), "trials_done": 0})) is None
    assert eta_seconds(SimpleNamespace(**{**vars(job), "trials_done": 10})) is None  # healing: see job.heal
