"""Exports may heal the checkpoint: `heal` holds the settings asked for, `progress` where the worker is (phase,
and while healing step, total, loss and tokens/s).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ps_exports") as batch:
        batch.add_column(sa.Column("heal", sa.JSON))
        batch.add_column(sa.Column("progress", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("ps_exports") as batch:
        batch.drop_column("progress")
        batch.drop_column("heal")
