"""Migrations up and down on SQLite and PostgreSQL, with their own version table next to Optuna's."""

from __future__ import annotations

import optuna
import sqlalchemy as sa

from prunesearch import migrations

OURS = {"ps_jobs", "ps_pareto_snapshots", "ps_exports", "ps_datasets", migrations.VERSION_TABLE}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _up_down(url: str) -> None:
    migrations.upgrade(url)
    assert _tables(url) >= OURS
    assert migrations.current(url) == "0001"
    optuna.create_study(storage=url, study_name="neighbour")  # Optuna stamps its own alembic_version
    migrations.downgrade(url)
    left = _tables(url)
    assert not (OURS - {migrations.VERSION_TABLE}) & left
    assert {"studies", "alembic_version"} <= left  # Optuna's tables are untouched
    assert migrations.current(url) is None
    migrations.upgrade(url)
    assert _tables(url) >= OURS


def test_up_and_down_on_sqlite(tmp_path):
    _up_down(f"sqlite:///{tmp_path / 'm.db'}")


def test_up_and_down_on_postgresql(pg_url):
    _up_down(pg_url)
    optuna.delete_study(study_name="neighbour", storage=pg_url)


def test_db_command(tmp_path, capsys):
    from prunesearch.cli import main

    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert "0001" in capsys.readouterr().out
    assert main(["db", "downgrade", "--database-url", url]) == 0
    assert "none" in capsys.readouterr().out


def test_worker_refuses_an_unmigrated_database(tmp_path, capsys):
    from prunesearch.cli import main

    assert main(["worker", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}", "--max-idle", "0"]) == 2
    assert "db upgrade" in capsys.readouterr().err
