"""Evaluations: lm-evaluation-harness runs on an export's checkpoint (`POST /v1/exports/{id}/evaluations`), claimed
by workers with the same lease as exports (`heartbeat_at`, `attempts`).

Revision ID: 0006_evaluations
Revises: 0005_events
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_evaluations"
down_revision = "0005_events"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ps_evaluations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("export_id", sa.String(36), sa.ForeignKey("ps_exports.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("results", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("heartbeat_at", _TS),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_ps_evaluations_export_id", "ps_evaluations", ["export_id"])
    op.create_index("ix_ps_evaluations_status", "ps_evaluations", ["status"])


def downgrade() -> None:
    op.drop_index("ix_ps_evaluations_status", "ps_evaluations")
    op.drop_index("ix_ps_evaluations_export_id", "ps_evaluations")
    op.drop_table("ps_evaluations")
