"""One Optuna storage per database URL per process, and trial ids through Optuna's public storage API.

A new `RDBStorage` builds a new SQLAlchemy engine (and checks the schema version); the API built one per request
before. Sharing one is safe: the engine is thread-safe and `RDBStorage` keeps a session per thread. Each
`optuna.load_study`/`create_study` still wraps it in its own per-study cache, as with a URL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
from sqlalchemy import Engine, create_engine, event, exc, inspect
from sqlalchemy.engine import make_url

_STORAGES: dict[str, optuna.storages.RDBStorage] = {}
_LOCK = threading.Lock()
# Processes that meet a fresh database at the same moment all create Optuna's tables; the losers get a duplicate
# table or a unique violation on Optuna's version row. By then the tables exist, so building again succeeds. The
# service never races: `prunesearch db upgrade` creates the tables, and a storage on a database that has them
# creates nothing (the retry is for lone searches from the CLI started side by side on a fresh database).
SCHEMA_RACE_ATTEMPTS = 4
# Optuna's tables: `version_info` is written last when Optuna creates its schema.
OPTUNA_TABLES = ("studies", "trials", "version_info")
_SCHEMA_RACE_ERRORS = (exc.ProgrammingError, exc.IntegrityError, exc.OperationalError)


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The process's storage for `url` (built on first use; the lock keeps two threads from building two)."""
    with _LOCK:
        storage = _STORAGES.get(url)
        if storage is None:
            storage = _STORAGES[url] = build_storage(url)
        return storage


def build_storage(url: str) -> optuna.storages.RDBStorage:
    """A new `RDBStorage` for `url` (on SQLite, tuned: `tune_sqlite`)."""
    storage = _new_storage(url)
    if storage.engine.dialect.name == "sqlite":
        tune_sqlite(storage.engine)
    return storage


def _new_storage(url: str) -> optuna.storages.RDBStorage:
    """On a database that has Optuna's tables it creates none (so it cannot race); on one without, it creates
    them, and builds again when another process was creating them meanwhile."""
    if has_optuna_schema(url):
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url)
        except _SCHEMA_RACE_ERRORS:
            time.sleep(0.1 * attempt)
    return optuna.storages.RDBStorage(url)  # the last attempt's error is the caller's


def tune_sqlite(engine: Engine) -> None:
    """Write-ahead logging with `synchronous=NORMAL` on every connection of an SQLite engine.

    Optuna commits every `suggest_*`, attribute and constraint of a trial on its own (about 50 a trial here); in
    SQLite's default rollback journal each commit waits for the disk twice, which cost a third of a short search's
    time on this machine (docs/benchmarks.md). In WAL mode with `synchronous=NORMAL` a commit is an append to the
    log, made durable at checkpoints: a crash of the process loses nothing committed, and a power cut can lose
    only the last commits, never the database's consistency (sqlite.org/wal.html, "Performance Considerations").
    The service's own engine uses WAL already (`service/db.py`)."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    engine.dispose()  # connections opened while the storage was built reconnect with the pragmas


def create_optuna_schema(url: str) -> None:
    """Create Optuna's tables in the database at `url` if they are missing (`prunesearch db upgrade`)."""
    build_storage(url).engine.dispose()


def has_optuna_schema(url: str) -> bool:
    """Whether the database at `url` holds Optuna's tables (a missing SQLite file holds none, and stays missing)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or not Path(database).is_file():
            return False
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
        return all(table in names for table in OPTUNA_TABLES)
    finally:
        engine.dispose()


def resolve(storage: str | optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """A URL becomes the process's shared storage for it; a storage object is used as it is."""
    return rdb_storage(storage) if isinstance(storage, str) else storage


def forget_storages() -> None:
    """Drop the cached storages and close their connections (tests, and processes that are done with them)."""
    with _LOCK:
        storages = list(_STORAGES.values())
        _STORAGES.clear()
    for storage in storages:
        storage.engine.dispose()


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of `study_name`, which `optuna.Trial` needs to reopen the trial."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)
