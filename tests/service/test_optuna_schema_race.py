"""Workers that meet a fresh PostgreSQL database at once all build Optuna's storage, and none fails."""

from __future__ import annotations

import threading
import uuid

import pytest

from prunesearch.search.storage import build_storage

WORKERS = 6


def _admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True)
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")


def _race(url: str) -> list[BaseException]:
    start, errors, storages = threading.Barrier(WORKERS), [], []

    def build() -> None:
        start.wait()
        try:
            storages.append(build_storage(url))
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for storage in storages:
        storage.engine.dispose()
    return errors


def test_workers_racing_on_a_fresh_database_all_get_a_storage():
    admin = _admin()
    name = f"prunesearch_race_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        errors = _race(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    assert errors == []
