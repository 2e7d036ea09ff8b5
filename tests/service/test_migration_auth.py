"""Migration 0004_auth on SQLite and PostgreSQL: rows from before get the local owner (an export its job's),
idempotency keys become per owner, and a downgrade puts one namespace back (the oldest job keeps a shared key)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from prunesearch import migrations

from .conftest import fresh_pg_database
from .test_migrations import HEAD

NOW = "2026-11-24 00:00:00"


def _job(conn, job_id: str, key: str | None, owner: str | None = None) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO ps_jobs (id, owner, idempotency_key, spec, status, n_trials, parallelism, trials_claimed,"
            " trials_done, front_size, active_workers, cancel_requested, created_at)"
            " VALUES (:id, :owner, :key, '{}', 'succeeded', 1, 1, 1, 1, 0, 0, false, :now)"
        ),
        {"id": job_id, "owner": owner, "key": key, "now": NOW},
    )


def _up_and_down(url: str) -> None:
    migrations.upgrade(url, "0003")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _job(conn, "j1", "k1")
            _job(conn, "j2", None, owner="team-a")  # 0001's free-form owner label stays
            conn.execute(
                sa.text(
                    "INSERT INTO ps_exports (id, job_id, trial, dtype, status, created_at, attempts)"
                    " VALUES ('e2', 'j2', 0, 'fp32', 'queued', :now, 0)"
                ),
                {"now": NOW},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO ps_datasets (id, filename, path, size, sha256, created_at)"
                    " VALUES ('d', 'a.txt', '/x/a.txt', 1, 'h', :now)"
                ),
                {"now": NOW},
            )
        migrations.upgrade(url)
        with engine.begin() as conn:
            owners = dict(conn.execute(sa.text("SELECT id, owner FROM ps_jobs")).all())
            assert owners == {"j1": "local", "j2": "team-a"}
            assert conn.execute(sa.text("SELECT owner FROM ps_exports")).scalar_one() == "team-a"
            assert conn.execute(sa.text("SELECT owner FROM ps_datasets")).scalar_one() == "local"
            _job(conn, "j3", "k1", owner="alice")  # the same key, another owner: allowed now
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            _job(conn, "j4", "k1", owner="alice")
        migrations.downgrade(url, "0003")
        with engine.connect() as conn:
            keys = dict(conn.execute(sa.text("SELECT id, idempotency_key FROM ps_jobs")).all())
        assert keys == {"j1": "k1", "j2": None, "j3": None}
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            _job(conn, "j5", "k1")  # one namespace again
        assert not {"ps_tokens"} & set(sa.inspect(engine).get_table_names())
        migrations.upgrade(url)
        assert migrations.current(url) == HEAD
    finally:
        engine.dispose()


def test_0004_on_sqlite(tmp_path):
    _up_and_down(f"sqlite:///{tmp_path / 'auth.db'}")


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own (the session's may hold other tests' rows), dropped after."""
    with fresh_pg_database("prunesearch_auth") as url:
        yield url


def test_0004_on_postgresql(empty_pg_url):
    _up_and_down(empty_pg_url)
