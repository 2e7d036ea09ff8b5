"""Service fixtures: settings on a temporary data dir, a migrated SQLite database, a fresh PostgreSQL database
per test session, the API through TestClient, and worker processes that every test stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from prunesearch.service.api.main import create_app
from prunesearch.service.db import dispose_all, session_scope, upgrade_schema
from prunesearch.service.models import Job
from prunesearch.service.settings import BUNDLED_EXAMPLES, Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def job_body(**overrides) -> dict:
    """A tiny, fast job on the bundled model: 512 calibration tokens of 64, few trials."""
    body = {
        "model": str(BUNDLED_EXAMPLES),
        "calibration": str(BUNDLED_EXAMPLES / "calib.txt"),
        "n_trials": 4,
        "sampler": "random",
        "hardware": "h100-sxm",
        "calibration_settings": {"tokens": 512, "seq_len": 64},
    }
    return {**body, **overrides}


@pytest.fixture
def settings(tmp_path) -> Iterator[Settings]:
    s = Settings(data_dir=tmp_path / "data", heartbeat_s=1.0, poll_s=0.2)
    upgrade_schema(s.db_url)
    yield s
    dispose_all()


@pytest.fixture
def api(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _pg_admin():
    import psycopg

    return psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True, connect_timeout=3)


@contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """The URL of a PostgreSQL database of its own (named `prefix_<random>`), dropped on exit; skips the test
    where PostgreSQL is unreachable."""
    try:
        conn = _pg_admin()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        dispose_all()
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_pg_database("prunesearch_test") as url:
        yield url


@pytest.fixture
def pg_settings(pg_url, tmp_path) -> Iterator[Settings]:
    """Settings on the session's PostgreSQL database, schema at head; unfinished jobs cancelled after the test."""
    s = Settings(data_dir=tmp_path / "data", database_url=pg_url, heartbeat_s=1.0, poll_s=0.2)
    upgrade_schema(pg_url)
    yield s
    # The database outlives the test: leave no job a later test's workers could pick up.
    with session_scope(pg_url) as session:
        session.execute(update(Job).where(Job.status.in_(["queued", "running"])).values(status="cancelled"))
    dispose_all()


class Processes:
    """Processes a test starts; all stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def worker(
        self, settings: Settings, *extra: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        defaults = {
            **os.environ,
            "PRUNESEARCH_DATABASE_URL": settings.db_url,
            "PRUNESEARCH_DATA_DIR": str(settings.data_dir),
            "PRUNESEARCH_HEARTBEAT_S": "1",
            "PRUNESEARCH_POLL_S": "0.2",
        }
        cmd = [sys.executable, "-m", "prunesearch.cli", "worker", *extra]
        return self.start(cmd, env=defaults | (env or {}), log=log)

    def start(self, cmd: list[str], *, env: dict, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop_all()


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.3):
    """Poll until `predicate()` is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {predicate}")
