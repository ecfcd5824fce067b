"""Projection tables: run status, LLM calls, messages. A thread's status is derived from its runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Never maintained: a thread's status is computed from its runs' statuses.
    op.drop_column("threads", "status")
    op.create_table(
        "run_status",
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("status_seq", sa.Integer, nullable=False),
        sa.Column("assistant_id", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.Text, nullable=True),
        sa.Column("error_type", sa.Text, nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("thread_id", "run_id", name="run_status_pkey"),
    )
    op.create_table(
        "llm_calls",
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("caller", sa.Text, nullable=True),
        sa.Column("usage_known", sa.Boolean, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=True),
        sa.Column("output_tokens", sa.BigInteger, nullable=True),
        sa.Column("total_tokens", sa.BigInteger, nullable=True),
        sa.Column("cache_read", sa.BigInteger, nullable=True),
        sa.Column("cache_creation", sa.BigInteger, nullable=True),
        sa.Column("reasoning", sa.BigInteger, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("thread_id", "run_id", "call_id", name="llm_calls_pkey"),
    )
    op.create_index("llm_calls_ts_idx", "llm_calls", ["ts"])
    op.create_table(
        "messages",
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("part", sa.Integer, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("updated_position", sa.BigInteger, nullable=False),
        sa.Column("updated_part", sa.Integer, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("data", postgresql.JSON, nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "message_id", name="messages_pkey"),
        sa.UniqueConstraint("thread_id", "position", "part", name="messages_thread_position_key"),
    )
    op.create_index("messages_run_position_idx", "messages", ["thread_id", "run_id", "position", "part"])


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("llm_calls")
    op.drop_table("run_status")
    op.add_column("threads", sa.Column("status", sa.Text, nullable=False, server_default="idle"))
