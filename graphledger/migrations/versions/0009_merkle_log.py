"""The Merkle log: leaves in feed order, tiles of interior hashes, signed checkpoints.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

Leaves and checkpoints are append-only, like the events. Tiles are a cache of
what the leaves determine (partial tiles grow in place); verifiers never trust them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from graphledger.ledger.schema import XID8

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APPEND_ONLY = [
    """
CREATE FUNCTION graphledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'graphledger % is append-only: % rejected', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$""",
    *(
        statement
        for table in ("merkle_leaves", "checkpoints")
        for statement in (
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION graphledger_append_only()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION graphledger_append_only()",
        )
    ),
]


def upgrade() -> None:
    op.create_table(
        "merkle_leaves",
        sa.Column("leaf_index", sa.BigInteger, nullable=False),
        sa.Column("tx", XID8, nullable=False),
        sa.Column("global_position", sa.BigInteger, nullable=False),
        sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("leaf_index", name="merkle_leaves_pkey"),
        sa.CheckConstraint("octet_length(hash) = 32", name="merkle_leaves_hash_check"),
    )
    op.create_index("merkle_leaves_event_idx", "merkle_leaves", ["thread_id", "run_id", "seq"], unique=True)
    op.create_table(
        "merkle_tiles",
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("tile_index", sa.BigInteger, nullable=False),
        sa.Column("hashes", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("level", "tile_index", name="merkle_tiles_pkey"),
        sa.CheckConstraint(
            "octet_length(hashes) BETWEEN 32 AND 8192 AND octet_length(hashes) % 32 = 0", name="merkle_tiles_hashes_check"
        ),
    )
    op.create_table(
        "checkpoints",
        sa.Column("checkpoint_id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", name="checkpoints_pkey"),
        sa.CheckConstraint("tree_size >= 0", name="checkpoints_tree_size_check"),
    )
    for statement in APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("merkle_tiles")
    op.drop_table("merkle_leaves")
    op.execute("DROP FUNCTION graphledger_append_only()")
