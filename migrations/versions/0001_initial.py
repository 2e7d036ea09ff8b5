"""Jobs, Pareto snapshots, exports and datasets.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ps_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200)),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("parallelism", sa.Integer, nullable=False),
        sa.Column("trials_claimed", sa.Integer, nullable=False),
        sa.Column("trials_done", sa.Integer, nullable=False),
        sa.Column("front_size", sa.Integer, nullable=False),
        sa.Column("hypervolume", sa.Float),
        sa.Column("active_workers", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("heartbeat_at", _TS),
    )
    op.create_table(
        "ps_pareto_snapshots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("ps_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trials_done", sa.Integer, nullable=False),
        sa.Column("hypervolume", sa.Float),
        sa.Column("front", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_ps_pareto_snapshots_job_id", "ps_pareto_snapshots", ["job_id"])
    op.create_table(
        "ps_exports",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("ps_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trial", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("path", sa.Text),
        sa.Column("size", sa.Integer),
        sa.Column("sha256", sa.String(64)),
        sa.Column("summary", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("finished_at", _TS),
    )
    op.create_index("ix_ps_exports_job_id", "ps_exports", ["job_id"])
    op.create_table(
        "ps_datasets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ps_datasets")
    op.drop_index("ix_ps_exports_job_id", "ps_exports")
    op.drop_table("ps_exports")
    op.drop_index("ix_ps_pareto_snapshots_job_id", "ps_pareto_snapshots")
    op.drop_table("ps_pareto_snapshots")
    op.drop_table("ps_jobs")
