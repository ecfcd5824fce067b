"""A GIN index on threads' metadata, for searches by metadata containment.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

``jsonb_path_ops``: smaller and faster than the default operator class, and
``@>`` (what a search's metadata filter and an authorization filter ask) is
the only operator the searches use. Built in the migration's transaction, so
writes to ``threads`` wait while it is built (about a second per 100,000
threads).
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "threads_metadata_idx", "threads", ["metadata"], postgresql_using="gin", postgresql_ops={"metadata": "jsonb_path_ops"}
    )


def downgrade() -> None:
    op.drop_index("threads_metadata_idx", table_name="threads")
