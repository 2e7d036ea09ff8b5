"""The search's SQLite storage runs in WAL mode with synchronous=NORMAL, and still keeps what it committed."""

from __future__ import annotations

import optuna

from prunesearch.search.storage import build_storage


def test_sqlite_storage_is_tuned_on_every_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = build_storage(url)
    try:
        with storage.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        study = optuna.create_study(storage=storage, study_name="s")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    finally:
        storage.engine.dispose()
    # a storage built afresh (another process) reads every committed trial back
    again = build_storage(url)
    try:
        trials = optuna.load_study(study_name="s", storage=again).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    finally:
        again.engine.dispose()
