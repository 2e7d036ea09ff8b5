"""Alembic environment: online migrations only, against the URL given in the config's attributes.

The caller (the service) passes its tables' metadata as `config.attributes["target_metadata"]`, so the migrations
import nothing from the service."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from prunesearch.migrations import VERSION_TABLE


def run_migrations_online() -> None:
    url = context.config.attributes["database_url"]
    target_metadata = context.config.attributes.get("target_metadata")

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        """Autogenerate compares the service's tables only: Optuna's share the database (`db upgrade` makes them)."""
        return type_ != "table" or target_metadata is None or name in target_metadata.tables

    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            render_as_batch=connection.dialect.name == "sqlite",
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
