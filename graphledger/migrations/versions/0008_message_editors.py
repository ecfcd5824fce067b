"""Messages name the run that last wrote them: a later run that rewrites a message is its editor.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

The writer is the run of a message's last write that is not an echo (a
``stream:values`` snapshot repeats every message of the thread). Rows
projected before this revision take the first writer as their last one, as
if only echoed; ``graphledger rebuild --only messages`` replays the log and
names the real last writer.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("updated_run_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("messages", sa.Column("updated_seq", sa.Integer, nullable=True))
    op.add_column("messages", sa.Column("writer_position", sa.BigInteger, nullable=True))
    op.add_column("messages", sa.Column("writer_part", sa.Integer, nullable=True))
    op.execute("UPDATE messages SET updated_run_id = run_id, updated_seq = seq")
    op.alter_column("messages", "updated_run_id", nullable=False)
    op.alter_column("messages", "updated_seq", nullable=False)


def downgrade() -> None:
    op.drop_column("messages", "writer_part")
    op.drop_column("messages", "writer_position")
    op.drop_column("messages", "updated_seq")
    op.drop_column("messages", "updated_run_id")
