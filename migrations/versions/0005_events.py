"""Job events for `GET /v1/jobs/{id}/events` (Server-Sent Events): `ps_events` holds them, numbered per job by
`ps_jobs.events_seq`; exports record when their latest attempt started (`started_at`, for export durations).

Revision ID: 0005_events
Revises: 0004_auth
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_events"
down_revision = "0004_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ps_jobs") as batch:
        batch.add_column(sa.Column("events_seq", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("ps_exports") as batch:
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True)))
    op.create_table(
        "ps_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("ps_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "seq"),
    )
    op.create_index("ix_ps_events_created_at", "ps_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_ps_events_created_at", table_name="ps_events")
    op.drop_table("ps_events")
    with op.batch_alter_table("ps_exports") as batch:
        batch.drop_column("started_at")
    with op.batch_alter_table("ps_jobs") as batch:
        batch.drop_column("events_seq")
