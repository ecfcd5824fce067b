"""Runs that record something about another run (a webhook's delivery, a run's deletion), and a run's webhook.

``command`` and ``record_of`` are copied from a run's ``run.created`` payload
when its row is inserted, like ``claimable``; ``webhook`` holds a run's
webhook address (secrets included, never in the log) until its delivery is
final.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("command", sa.Text, nullable=True))
    op.add_column("runs", sa.Column("record_of", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("runs", sa.Column("webhook", sa.Text, nullable=True))
    op.create_index("runs_record_of_idx", "runs", ["thread_id", "record_of"], postgresql_where=sa.text("record_of IS NOT NULL"))
    op.create_index("runs_webhook_idx", "runs", ["queue_position"], postgresql_where=sa.text("webhook IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("runs_webhook_idx", table_name="runs")
    op.drop_index("runs_record_of_idx", table_name="runs")
    op.drop_column("runs", "webhook")
    op.drop_column("runs", "record_of")
    op.drop_column("runs", "command")
