"""Exports get a lease: `heartbeat_at`, renewed while a worker writes the checkpoint, so an export whose worker
died is taken up again instead of staying `running`; `attempts` numbers the workers' tries, so only the latest
may finish it, and caps them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ps_exports") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("ps_exports") as batch:
        batch.drop_column("attempts")
        batch.drop_column("heartbeat_at")
