"""Thread snapshot documents: the JSON of each checkpoint's state, kept for the state and history routes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29

A cache, never the record: rows are rendered from LangGraph's checkpoints and
served only while they still match them (see ``graphledger/runs/snapshots.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "thread_snapshots",
        sa.Column("thread_id", sa.Text, nullable=False),
        sa.Column("checkpoint_ns", sa.Text, nullable=False),
        sa.Column("checkpoint_id", sa.Text, nullable=False),
        sa.Column("graph", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("history", sa.Text, nullable=True),
        sa.Column("latest", sa.Text, nullable=True),
        sa.Column("rendered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("thread_id", "checkpoint_ns", "checkpoint_id", name="thread_snapshots_pkey"),
    )


def downgrade() -> None:
    op.drop_table("thread_snapshots")
