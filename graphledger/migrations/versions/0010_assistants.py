"""Assistants: each a graph with its config, context, metadata and name, and every version it had.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

A version is written once: updates of ``assistant_versions`` are refused by a
trigger; its rows go only with their assistant (ON DELETE CASCADE).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NO_UPDATE = (
    "CREATE TRIGGER assistant_versions_no_update BEFORE UPDATE ON assistant_versions "
    "FOR EACH ROW EXECUTE FUNCTION graphledger_append_only()"
)


def upgrade() -> None:
    op.create_table(
        "assistants",
        sa.Column("assistant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("graph_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("config", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("context", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("assistant_id", name="assistants_pkey"),
        sa.CheckConstraint("version >= 1", name="assistants_version_check"),
    )
    op.create_index("assistants_graph_id_idx", "assistants", ["graph_id"])
    op.create_index("assistants_created_at_idx", "assistants", ["created_at"])
    op.create_table(
        "assistant_versions",
        sa.Column("assistant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("graph_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("config", postgresql.JSONB, nullable=False),
        sa.Column("context", postgresql.JSONB, nullable=False),
        sa.Column("metadata", postgresql.JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("assistant_id", "version", name="assistant_versions_pkey"),
        sa.ForeignKeyConstraint(
            ["assistant_id"], ["assistants.assistant_id"], name="assistant_versions_assistant_id_fkey", ondelete="CASCADE"
        ),
        sa.CheckConstraint("version >= 1", name="assistant_versions_version_check"),
    )
    op.execute(NO_UPDATE)


def downgrade() -> None:
    op.drop_table("assistant_versions")
    op.drop_table("assistants")
