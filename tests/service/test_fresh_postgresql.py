"""A fresh PostgreSQL database, `prunesearch db upgrade`, then three workers started at once on one job: none
races to create Optuna's tables (the upgrade made them), none fails, and the job ends at exactly n_trials."""

from __future__ import annotations

from collections.abc import Iterator

import optuna
import pytest

from prunesearch.cli import main
from prunesearch.search.results import counts_as_done
from prunesearch.service import crud
from prunesearch.service.db import session_scope
from prunesearch.service.settings import Settings

from .conftest import fresh_pg_database, job_body, wait_for

pytestmark = pytest.mark.slow
WORKERS, N_TRIALS = 3, 9


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    with fresh_pg_database("prunesearch_fresh") as url:
        yield url


def test_three_workers_on_a_fresh_database_finish_the_job(fresh_pg_url, tmp_path, processes):
    assert main(["db", "upgrade", "--database-url", fresh_pg_url]) == 0
    settings = Settings(data_dir=tmp_path / "data", database_url=fresh_pg_url)
    with session_scope(fresh_pg_url) as session:
        spec = job_body(n_trials=N_TRIALS)
        job_id = crud.create_job(session, spec=spec, parallelism=WORKERS, owner=None, idempotency_key=None).id
    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    workers = [processes.worker(settings, "--max-idle", "30", log=log) for log in logs]

    def finished():
        with session_scope(fresh_pg_url) as session:
            job = crud.get_job(session, job_id=job_id)
            return job.status in ("succeeded", "failed", "cancelled") and job

    job = wait_for(finished, timeout=240)
    assert (job.status, job.trials_done, job.error) == ("succeeded", N_TRIALS, None)
    assert all(w.poll() in (None, 0) for w in workers)  # none crashed
    text = "".join(log.read_text() for log in logs)
    assert "Traceback" not in text, text[-3000:]
    trials = optuna.load_study(study_name=f"job-{job_id}", storage=fresh_pg_url).get_trials(deepcopy=False)
    assert sum(counts_as_done(t) for t in trials) == N_TRIALS
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
