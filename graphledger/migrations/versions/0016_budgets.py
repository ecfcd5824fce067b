"""Budgets: their definitions and every change to them, the runs each charges, and the admissions they refused.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29

``budget_changes`` and ``budget_refusals`` are append-only (the trigger
function of 0009).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

APPEND_ONLY = [
    statement
    for table in ("budget_changes", "budget_refusals")
    for statement in (
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION graphledger_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION graphledger_append_only()",
    )
]


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("definition", postgresql.JSONB, nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("set_by", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", name="budgets_pkey"),
    )
    op.create_table(
        "budget_changes",
        sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("definition", postgresql.JSONB, nullable=True),
        sa.Column("by", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("position", name="budget_changes_pkey"),
        sa.CheckConstraint("action IN ('set', 'remove')", name="budget_changes_action_check"),
    )
    op.create_table(
        "budget_runs",
        sa.Column("budget", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("budget", "key", "thread_id", "run_id", name="budget_runs_pkey"),
    )
    op.create_index("budget_runs_ended_idx", "budget_runs", ["budget", "key", "ended_at"])
    op.create_table(
        "budget_refusals",
        sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("budget", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("identity", sa.Text, nullable=True),
        sa.Column("data", postgresql.JSONB, nullable=False),
        sa.PrimaryKeyConstraint("position", name="budget_refusals_pkey"),
    )
    op.create_index("budget_refusals_ts_idx", "budget_refusals", ["ts"])
    for statement in APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("budget_refusals")
    op.drop_table("budget_runs")
    op.drop_table("budget_changes")
    op.drop_table("budgets")
