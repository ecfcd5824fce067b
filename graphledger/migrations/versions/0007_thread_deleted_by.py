"""Who deleted a thread, when authentication is on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("threads", sa.Column("deleted_by", postgresql.JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("threads", "deleted_by")
