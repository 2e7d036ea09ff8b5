"""Jobs number their leases and their workers: `lease_epoch` grows each time a job is taken over from workers
whose lease expired, so a worker of an older epoch (taken for dead, yet still running) claims no more trials and
leaves the job alone; `joins` counts the workers that joined it, from which each derives its own sampler seed.

Revision ID: 0007_worker_lease
Revises: 0006_evaluations
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_worker_lease"
down_revision = "0006_evaluations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ps_jobs") as batch:
        batch.add_column(sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("joins", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("ps_jobs") as batch:
        batch.drop_column("joins")
        batch.drop_column("lease_epoch")
