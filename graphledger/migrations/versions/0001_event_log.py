"""The event log: threads, runs (stream heads) and append-only events.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from graphledger.ledger.schema import XID8

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = [
    """
CREATE FUNCTION graphledger_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'graphledger events are append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$""",
    """
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION graphledger_events_append_only()""",
    """
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION graphledger_events_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "threads",
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.Text, nullable=False, server_default="idle"),
    )
    op.create_table(
        "runs",
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("assistant_id", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_hash", sa.LargeBinary, nullable=False, server_default=sa.text("'\\x" + "00" * 32 + "'::bytea")),
        sa.Column("last_kind", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.PrimaryKeyConstraint("thread_id", "run_id", name="runs_pkey"),
        sa.ForeignKeyConstraint(["thread_id"], ["threads.thread_id"], name="runs_thread_id_fkey"),
        sa.CheckConstraint("last_seq >= 0", name="runs_last_seq_check"),
    )
    op.create_index("runs_run_id_idx", "runs", ["run_id"])
    op.create_index("runs_thread_created_idx", "runs", ["thread_id", "created_at"])
    op.create_table(
        "events",
        sa.Column("global_position", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("data", postgresql.JSON, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tx", XID8, nullable=False, server_default=sa.text("pg_current_xact_id()")),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "run_id", "seq", name="events_pkey"),
        sa.CheckConstraint("seq >= 1", name="events_seq_check"),
        sa.CheckConstraint("octet_length(hash) = 32", name="events_hash_check"),
    )
    op.create_index("events_feed_idx", "events", ["tx", "global_position"])
    op.create_index("events_thread_position_idx", "events", ["thread_id", "global_position"])
    for statement in APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("events")
    op.execute("DROP FUNCTION graphledger_events_append_only()")
    op.drop_table("runs")
    op.drop_table("threads")
