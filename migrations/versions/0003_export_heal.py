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


# What a healed export waiting or running at a downgrade becomes: without its heal column a worker would write
# it unhealed, which is not what was asked for.
DOWNGRADE_ERROR = "the database was downgraded below 0003 (healed exports) before this export ran"


def downgrade() -> None:
    # A JSON column holds Python None as JSON null (text 'null'), a plain export's heal, or as SQL NULL.
    op.execute(
        sa.text(
            "UPDATE ps_exports SET status = 'failed', error = :error, finished_at = CURRENT_TIMESTAMP"
            " WHERE heal IS NOT NULL AND CAST(heal AS TEXT) <> 'null' AND status IN ('queued', 'running')"
        ).bindparams(error=DOWNGRADE_ERROR)
    )
    with op.batch_alter_table("ps_exports") as batch:
        batch.drop_column("progress")
        batch.drop_column("heal")
