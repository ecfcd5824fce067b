"""Who executes a run: only runs admitted for a served graph are claimed by workers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Runs recorded before this revision carry no ``executor`` in ``run.created``;
they stay claimable, as they were.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("claimable", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute("UPDATE runs SET claimable = true")
    op.drop_index("runs_pending_idx", table_name="runs")
    op.create_index("runs_pending_idx", "runs", ["queue_position"], postgresql_where=sa.text("status = 'pending' AND claimable"))


def downgrade() -> None:
    op.drop_index("runs_pending_idx", table_name="runs")
    op.create_index("runs_pending_idx", "runs", ["queue_position"], postgresql_where=sa.text("status = 'pending'"))
    op.drop_column("runs", "claimable")
