"""Alembic environment: online migrations only, against the URL given in the config's attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from prunesearch.migrations import VERSION_TABLE
from prunesearch.service.models import Base


def run_migrations_online() -> None:
    url = context.config.attributes["database_url"]
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
