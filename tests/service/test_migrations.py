"""Migrations up and down on SQLite and PostgreSQL, with their own version table next to Optuna's."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa

from prunesearch import migrations

HEAD = "0007_worker_lease"
OURS = {
    "ps_jobs",
    "ps_pareto_snapshots",
    "ps_exports",
    "ps_datasets",
    "ps_tokens",
    "ps_events",
    "ps_evaluations",
    migrations.VERSION_TABLE,
}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _up_down(url: str) -> None:
    migrations.upgrade(url)
    assert _tables(url) >= OURS
    assert migrations.current(url) == HEAD
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


def test_exports_created_before_their_lease_column_survive_the_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrations.upgrade(url, "0001")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            now = "2026-11-24 00:00:00"
            _insert_finished_job(conn, now)
            conn.execute(
                sa.text(
                    "INSERT INTO ps_exports (id, job_id, trial, dtype, status, created_at)"
                    " VALUES ('e', 'j', 0, 'fp32', 'queued', :now)"
                ),
                {"now": now},
            )
        migrations.upgrade(url)
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status, heartbeat_at FROM ps_exports WHERE id = 'e'")).one()
        assert tuple(row) == ("queued", None)
    finally:
        engine.dispose()


def test_db_command(tmp_path, capsys):
    from prunesearch.cli import main

    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert HEAD in capsys.readouterr().out
    assert main(["db", "downgrade", "--database-url", url]) == 0
    assert "none" in capsys.readouterr().out


def test_worker_refuses_an_unmigrated_database(tmp_path, capsys):
    from prunesearch.cli import main

    assert main(["worker", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}", "--max-idle", "0"]) == 2
    assert "db upgrade" in capsys.readouterr().err


def test_the_service_passes_its_tables_and_they_match_the_migrations(tmp_path):
    """The service hands its metadata to the migrations (which import nothing from it); autogenerate then finds
    no difference between the tables the service declares and the schema the migrations build."""
    from alembic import command
    from alembic.util import CommandError

    from prunesearch.service.db import upgrade_schema
    from prunesearch.service.models import Base

    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 's.db'}"  # the service creates a SQLite file's directory
    upgrade_schema(url)
    assert migrations.current(url) == HEAD
    command.check(migrations.alembic_config(url, Base.metadata))  # raises if a model and a migration differ
    with pytest.raises(CommandError, match="MetaData"):
        command.check(migrations.alembic_config(url))  # without the service's metadata there is nothing to compare


def test_0003_adds_the_heal_and_progress_of_exports_and_takes_them_away(tmp_path):
    url = f"sqlite:///{tmp_path / 'heal.db'}"
    migrations.upgrade(url, "0002")
    engine = sa.create_engine(url)

    def export_columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns("ps_exports")}

    try:
        assert not {"heal", "progress"} & export_columns()
        with engine.begin() as conn:
            now = "2026-11-24 00:00:00"
            _insert_finished_job(conn, now)
            conn.execute(
                sa.text(
                    "INSERT INTO ps_exports (id, job_id, trial, dtype, status, created_at, attempts)"
                    " VALUES ('e', 'j', 0, 'fp32', 'queued', :now, 0)"
                ),
                {"now": now},
            )
        migrations.upgrade(url)
        assert {"heal", "progress"} <= export_columns()
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT status, heal, progress FROM ps_exports WHERE id = 'e'")).one()
        assert tuple(row) == ("queued", None, None)  # an export from before 0003 is a plain one
        migrations.downgrade(url, "0002")
        assert not {"heal", "progress"} & export_columns()
        assert migrations.current(url) == "0002"
    finally:
        engine.dispose()


def test_downgrading_below_0003_fails_the_healed_exports_not_yet_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'heal-down.db'}"
    migrations.upgrade(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            now = "2026-11-24 00:00:00"
            _insert_finished_job(conn, now)
            rows = [
                ("queued-healed", "queued", '{"steps": 3}'),
                ("running-healed", "running", '{"steps": 3}'),
                ("done-healed", "succeeded", '{"steps": 3}'),
                ("queued-plain-json-null", "queued", "null"),
                ("queued-plain-sql-null", "queued", None),
            ]
            for export_id, status, heal in rows:
                conn.execute(
                    sa.text(
                        "INSERT INTO ps_exports (id, job_id, trial, dtype, status, created_at, attempts, heal)"
                        " VALUES (:id, 'j', 0, 'fp32', :status, :now, 0, :heal)"
                    ),
                    {"id": export_id, "status": status, "now": now, "heal": heal},
                )
        migrations.downgrade(url, "0002")
        with engine.connect() as conn:
            found = dict(conn.execute(sa.text("SELECT id, status FROM ps_exports")).all())
            error = conn.execute(sa.text("SELECT error FROM ps_exports WHERE id = 'running-healed'")).scalar_one()
        assert found == {
            "queued-healed": "failed",
            "running-healed": "failed",
            "done-healed": "succeeded",
            "queued-plain-json-null": "queued",
            "queued-plain-sql-null": "queued",
        }
        assert "downgraded below 0003" in error
    finally:
        engine.dispose()


def test_0004_numbers_the_leases_and_workers_of_jobs_and_takes_them_away(tmp_path):
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    migrations.upgrade(url, "0003")
    engine = sa.create_engine(url)

    def job_columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns("ps_jobs")}

    try:
        assert not {"lease_epoch", "joins"} & job_columns()
        with engine.begin() as conn:
            _insert_finished_job(conn, "2026-11-24 00:00:00")
        migrations.upgrade(url)
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT lease_epoch, joins FROM ps_jobs WHERE id = 'j'")).one()
        assert tuple(row) == (0, 0)  # a job from before 0004 is in its first epoch
        migrations.downgrade(url, "0003")
        assert not {"lease_epoch", "joins"} & job_columns()
    finally:
        engine.dispose()


def _insert_finished_job(conn, now: str) -> None:
    """Job 'j', succeeded, as a row written by the schema of revision 0001 (the columns every revision has)."""
    conn.execute(
        sa.text(
            "INSERT INTO ps_jobs (id, spec, status, n_trials, parallelism, trials_claimed, trials_done,"
            " front_size, active_workers, cancel_requested, created_at)"
            " VALUES ('j', '{}', 'succeeded', 1, 1, 1, 1, 0, 0, 0, :now)"
        ),
        {"now": now},
    )
