"""Alembic migrations for the service's tables, configured in code so they run from an installed package.

They keep their own version table (`prunesearch_alembic_version`): Optuna stamps the default `alembic_version`
in the same database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

VERSION_TABLE = "prunesearch_alembic_version"
HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at this package's scripts and `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    from prunesearch.service.db import make_sqlite_dir

    make_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert migrations down to `revision`."""
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    """The applied revision, or None on an empty database."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()
