"""When a run admitted with a delay (``after_seconds``) may be claimed.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

``runs.due_at`` is copied from the ``run.created`` payload's ``after_seconds``
when the row is inserted (NULL: claimable at once). Runs recorded before this
revision were admitted without a delay and keep NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "due_at")
