"""Accounts: API tokens (`ps_tokens`, SHA-256 of each token only), an owner on every job, export and dataset
(rows from before get the local owner, `local`; an export its job's), and idempotency keys per owner.

Revision ID: 0004_auth
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_auth"
down_revision = "0003"
branch_labels = None
depends_on = None

LOCAL_OWNER = "local"
PER_OWNER_KEY = "uq_ps_jobs_owner_idempotency_key"
# SQLite reflects 0001's unique constraint on idempotency_key without a name; batch mode names it by this.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
GLOBAL_KEY_SQLITE = "uq_ps_jobs_idempotency_key"
GLOBAL_KEY_POSTGRESQL = "ps_jobs_idempotency_key_key"  # PostgreSQL's name for 0001's constraint


def upgrade() -> None:
    op.create_table(
        "ps_tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_ps_tokens_name", "ps_tokens", ["name"])
    # A row written without an owner (by a component from before this revision) is the local owner's.
    for table in ("ps_exports", "ps_datasets"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner", sa.String(200), nullable=False, server_default=LOCAL_OWNER))
    op.execute(sa.text("UPDATE ps_jobs SET owner = :owner WHERE owner IS NULL").bindparams(owner=LOCAL_OWNER))
    op.execute("UPDATE ps_exports SET owner = (SELECT owner FROM ps_jobs WHERE ps_jobs.id = ps_exports.job_id)")
    with op.batch_alter_table("ps_jobs", naming_convention=NAMING) as batch:
        batch.drop_constraint(_global_key_name(), type_="unique")
        batch.alter_column("owner", existing_type=sa.String(200), nullable=False, server_default=LOCAL_OWNER)
        batch.create_unique_constraint(PER_OWNER_KEY, ["owner", "idempotency_key"])


def downgrade() -> None:
    # One key in one namespace again: of jobs that share a key (different owners), the oldest keeps it.
    op.execute(
        "UPDATE ps_jobs SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND id NOT IN"
        " (SELECT id FROM (SELECT MIN(id) AS id FROM ps_jobs WHERE idempotency_key IS NOT NULL"
        " GROUP BY idempotency_key) AS firsts)"
    )
    with op.batch_alter_table("ps_jobs") as batch:
        batch.drop_constraint(PER_OWNER_KEY, type_="unique")
        batch.alter_column("owner", existing_type=sa.String(200), nullable=True, server_default=None)
        batch.create_unique_constraint(_global_key_default(), ["idempotency_key"])
    for table in ("ps_datasets", "ps_exports"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
    op.drop_index("ix_ps_tokens_name", "ps_tokens")
    op.drop_table("ps_tokens")


def _global_key_name() -> str:
    """The name of the unique constraint on `idempotency_key` alone (SQLite's unnamed one as batch names it)."""
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("ps_jobs"):
        if constraint["column_names"] == ["idempotency_key"] and constraint["name"]:
            return constraint["name"]
    return _global_key_default()


def _global_key_default() -> str:
    return GLOBAL_KEY_POSTGRESQL if op.get_bind().dialect.name == "postgresql" else GLOBAL_KEY_SQLITE
