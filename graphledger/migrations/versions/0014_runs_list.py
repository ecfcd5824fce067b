"""The runs list across threads: an index on run_status by creation time.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29

``GET /runs`` pages through every visible run, newest first, by
``(created_at, run_id)``; the index lets each page seek to its cursor
instead of sorting the whole projection.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("run_status_created_idx", "run_status", ["created_at", "run_id"])


def downgrade() -> None:
    op.drop_index("run_status_created_idx", table_name="run_status")
