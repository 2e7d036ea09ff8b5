"""Workers stay in their lane: a worker whose lease was taken over claims no more trials, renews no lease and
leaves the job to its successors; each worker on a job seeds its sampler differently (the first with the job's
seed); `db upgrade` creates Optuna's tables, so workers never create them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from prunesearch.cli import main
from prunesearch.search.backend import SearchCallbacks, SearchProgress
from prunesearch.search.seeds import worker_seed
from prunesearch.search.storage import OPTUNA_TABLES, build_storage, has_optuna_schema
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.models import utcnow
from prunesearch.service.worker.claims import claim_job, claim_trial
from prunesearch.service.worker.loop import Worker
from prunesearch.service.worker.runner import _stopped, run_job

from ..fake_backend import FakeBackend
from .conftest import job_body


def _job(settings, **kw) -> str:
    with session_scope(settings.db_url) as s:
        spec = job_body(**kw)
        return crud.create_job(s, spec=spec, parallelism=kw.get("parallelism", 1), owner=None, idempotency_key=None).id


def _expire(settings, job_id: str) -> None:
    with session_scope(settings.db_url) as s:
        crud.get_job(s, job_id=job_id).heartbeat_at = utcnow() - timedelta(seconds=600)


def test_a_worker_whose_lease_was_taken_over_stays_out(settings):
    url, job_id = settings.db_url, _job(settings, n_trials=10)
    old = claim_job(url, lease_s=60)
    assert (old.epoch, old.slot) == (0, 0) and claim_trial(url, job_id, old.epoch)
    _expire(settings, job_id)  # the old worker looks dead (it is only paused, say)
    new = claim_job(url, lease_s=60)
    assert (new.job_id, new.alone, new.epoch, new.slot) == (job_id, True, 1, 1)
    assert not claim_trial(url, job_id, old.epoch)  # the stale worker gets no more trials...
    assert _stopped(url, job_id, old.epoch) and not _stopped(url, job_id, new.epoch)  # ...and is told to stop
    assert claim_trial(url, job_id, new.epoch)
    with session_scope(url) as s:
        assert not crud.heartbeat(s, job_id=job_id, epoch=old.epoch)  # renews nothing of its successor's
        assert crud.heartbeat(s, job_id=job_id, epoch=new.epoch)
    with session_scope(url) as s:  # and leaving changes nothing: the job is the new worker's
        job = crud.leave_job(s, job_id=job_id, error="RuntimeError: late failure", epoch=old.epoch)
        assert (job.status, job.active_workers, job.error) == ("running", 1, None)
    with session_scope(url) as s:
        job = crud.get_job(s, job_id=job_id)
        assert (job.trials_claimed, job.lease_epoch, job.joins) == (1, 1, 2)


class TakenOverMidSearch(FakeBackend):
    """Another worker takes the job over (its lease looked expired) once `after` trials are done."""

    def __init__(self, settings, after: int) -> None:
        super().__init__()
        self.settings, self.after = settings, after

    def run(self, spec, study_name, callbacks: SearchCallbacks, **options) -> SearchProgress:
        def on_trial(progress: SearchProgress) -> None:
            callbacks.on_trial(progress)
            if progress.trials_done == self.after:
                job_id = study_name.removeprefix("job-")
                _expire(self.settings, job_id)
                assert claim_job(self.settings.db_url, lease_s=60).epoch == 1

        return super().run(spec, study_name, SearchCallbacks(callbacks.claim, callbacks.should_stop, on_trial))


def test_a_running_search_stops_taking_trials_once_its_lease_is_lost(settings):
    import threading

    job_id = _job(settings, n_trials=10)
    claim = claim_job(settings.db_url, lease_s=60)
    backend = TakenOverMidSearch(settings, after=3)
    run_job(job_id, settings, threading.Event(), lambda: None, backend=backend, epoch=claim.epoch, slot=claim.slot)
    assert len(backend.studies[f"job-{job_id}"]) == 3  # no trial after the takeover
    with session_scope(settings.db_url) as s:
        job = crud.get_job(s, job_id=job_id)
        assert (job.status, job.active_workers, job.lease_epoch) == ("running", 1, 1)  # left to its successor


def test_each_worker_on_a_job_gets_its_own_sampler_seed(settings):
    job_id = _job(settings, n_trials=6, parallelism=3, seed=7)
    slots = [claim_job(settings.db_url, lease_s=60).slot for _ in range(3)]
    assert slots == [0, 1, 2]
    seeds = [worker_seed(7, slot) for slot in slots]
    assert seeds[0] == 7 and len(set(seeds)) == 3 and all(0 <= s < 2**32 for s in seeds)
    assert seeds == [worker_seed(7, slot) for slot in slots]  # deterministic
    assert len({worker_seed(7, k) for k in range(1000)}) == 1000 and worker_seed(None, 3) is None
    with session_scope(settings.db_url) as s:
        assert crud.get_job(s, job_id=job_id).joins == 3


def test_a_lone_worker_searches_with_the_jobs_own_seed(settings):
    fake = FakeBackend()
    _job(settings, n_trials=3, seed=11)
    Worker(settings, max_idle_s=0.0, backend=fake).run()
    assert fake.sampler_seeds == [11]


def test_workers_on_one_study_propose_different_plans():
    """Three samplers with the seeds of three workers on one job propose different points; with one seed
    (as before) they proposed the same."""
    import optuna

    def proposals(seeds: list[int]) -> list[tuple[float, ...]]:
        points = []
        for seed in seeds:
            study = optuna.create_study(sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=20))
            for _ in range(5):
                trial = study.ask()
                points.append((trial.suggest_float("a", 0, 1), trial.suggest_int("b", 0, 10)))
        return points

    assert len(set(proposals([7, 7, 7]))) == 5  # one seed: the same five plans thrice
    assert len(set(proposals([worker_seed(7, k) for k in range(3)]))) == 15


def test_db_upgrade_creates_optunas_tables_and_workers_need_them(tmp_path, capsys):
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert not has_optuna_schema(fresh) and not (tmp_path / "fresh.db").exists()  # the check creates no file
    assert main(["db", "upgrade", "--database-url", fresh]) == 0
    assert has_optuna_schema(fresh)
    engine = sa.create_engine(fresh)
    try:
        assert set(OPTUNA_TABLES) <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    build_storage(fresh).engine.dispose()  # builds on the tables there: creates nothing, races with no one
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    from prunesearch import migrations

    migrations.upgrade(bare)  # the service's tables alone, as an older `db upgrade` left them
    assert main(["worker", "--database-url", bare, "--max-idle", "0"]) == 2
    assert "no Optuna tables: run `prunesearch db upgrade`" in capsys.readouterr().err


@pytest.mark.parametrize("state", ["running", "fail", "infeasible", "missing"])
def test_an_export_of_a_trial_that_cannot_be_exported_gets_409_at_once(api, settings, state):
    import optuna
    from optuna.trial import TrialState, create_trial

    job = api.post("/v1/jobs", json=job_body()).json()
    study = optuna.create_study(storage=settings.db_url, study_name=f"job-{job['id']}", directions=["minimize"] * 2)
    attrs = {"plan": {}, "metrics": {}, "feasible": True}
    study.add_trial(create_trial(values=[0.1, 1.0], user_attrs=attrs))  # 0: exportable
    if state == "running":
        study.ask()
    elif state == "fail":
        study.add_trial(create_trial(state=TrialState.FAIL))
    elif state == "infeasible":
        study.add_trial(create_trial(values=[0.1, 1.0], user_attrs=attrs | {"feasible": False}))
    response = api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 1})
    assert response.status_code == 409
    expected = {"running": "is still running", "fail": "is failed", "infeasible": "infeasible", "missing": "no trial 1"}
    assert expected[state] in response.json()["detail"]
    assert api.post(f"/v1/jobs/{job['id']}/exports", json={"trial": 0}).status_code == 202
