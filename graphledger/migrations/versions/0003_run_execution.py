"""Run execution: admission order, worker leases, secrets kept out of the log, the checkpointer's schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("queue_position", sa.BigInteger, sa.Identity(always=False), nullable=False))
    op.add_column("runs", sa.Column("lease_owner", sa.Text, nullable=True))
    op.add_column("runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("runs_pending_idx", "runs", ["queue_position"], postgresql_where=sa.text("status = 'pending'"))
    op.create_index(
        "runs_active_idx", "runs", ["thread_id", "queue_position"], postgresql_where=sa.text("status IN ('pending', 'running')")
    )
    op.create_index("runs_lease_idx", "runs", ["lease_expires_at"], postgresql_where=sa.text("status = 'running'"))
    op.create_table(
        "run_secrets",
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("secrets", postgresql.JSONB, nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "run_id", name="run_secrets_pkey"),
        sa.ForeignKeyConstraint(["thread_id", "run_id"], ["runs.thread_id", "runs.run_id"], name="run_secrets_run_fkey"),
    )
    # LangGraph's checkpointer keeps its own tables (and migrations) here,
    # apart from the ledger's: see graphledger/runs/checkpoint.py.
    op.execute("CREATE SCHEMA IF NOT EXISTS langgraph")


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS langgraph CASCADE")
    op.drop_table("run_secrets")
    op.drop_index("runs_lease_idx", table_name="runs")
    op.drop_index("runs_active_idx", table_name="runs")
    op.drop_index("runs_pending_idx", table_name="runs")
    op.drop_column("runs", "lease_expires_at")
    op.drop_column("runs", "lease_owner")
    op.drop_column("runs", "queue_position")
