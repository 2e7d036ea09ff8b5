"""Database engines and the one session context manager every database call goes through."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_hooks(engine: Engine) -> None:
    """WAL and a busy timeout; we issue BEGIN ourselves so claims can take `BEGIN IMMEDIATE` (write lock)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """One engine per URL per process (SQLite files get their parent directory created)."""
    if url not in _ENGINES:
        _ENGINES[url] = _create(url)
    return _ENGINES[url]


def make_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file."""
    database = make_url(url).database
    if is_sqlite(url) and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _create(url: str) -> Engine:
    if is_sqlite(url):
        make_sqlite_dir(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_hooks(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def _sessionmaker(url: str, immediate: bool) -> sessionmaker[Session]:
    engine = get_engine(url)
    if immediate:
        engine = engine.execution_options(sqlite_immediate=True)
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str, *, immediate: bool = False) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    `immediate=True` starts SQLite transactions with `BEGIN IMMEDIATE` (take the write lock first), which
    makes a read-then-update claim atomic there; PostgreSQL claims use `FOR UPDATE SKIP LOCKED` instead.
    """
    session = _sessionmaker(url, immediate)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Close pooled connections and forget engines (tests that drop a database, forked children)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _sessionmaker.cache_clear()


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Migrate the service's tables to `revision` (the service's side of `prunesearch.migrations.upgrade`, which
    needs the directory of a SQLite file to exist and takes the tables' metadata from here), and create Optuna's
    tables, once, here: workers that start together on a fresh database then have none to race to create."""
    from prunesearch import migrations
    from prunesearch.search.storage import create_optuna_schema

    from .models import Base

    make_sqlite_dir(url)
    migrations.upgrade(url, revision, target_metadata=Base.metadata)
    create_optuna_schema(url)
