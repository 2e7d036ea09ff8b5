"""Alembic migrations for the service's tables, configured in code so they run from an installed package.

They keep their own version table (`prunesearch_alembic_version`): Optuna stamps the default `alembic_version`
in the same database. They import nothing from the service: the service passes its tables' `MetaData` in
(`target_metadata`, for autogenerate and comparisons) and creates a SQLite file's directory itself
(`service.db.upgrade_schema`).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData

VERSION_TABLE = "prunesearch_alembic_version"
HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str, target_metadata: MetaData | None = None) -> Config:
    """An Alembic config pointing at this package's scripts and `database_url`; `env.py` reads both attributes."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = database_url
    config.attributes["target_metadata"] = target_metadata
    return config


def upgrade(database_url: str, revision: str = "head", *, target_metadata: MetaData | None = None) -> None:
    """Apply migrations up to `revision` (a SQLite file's directory must exist)."""
    command.upgrade(alembic_config(database_url, target_metadata), revision)


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
