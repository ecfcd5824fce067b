"""The Merkle log records which event each leaf is in one row per tile piece, not one row per leaf.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29

``merkle_leaves`` held a row per leaf (its feed key, its event and its chain
hash, under two indexes): writing it was most of what growing the tree cost.
``merkle_entries`` holds the same identities, 36 bytes a leaf, in rows of at
most one level-0 tile; the leaf hashes are already the level-0 tiles. The
rows are carried over, then ``merkle_leaves`` is dropped. Append-only, like
the table it replaces.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from graphledger.ledger.schema import XID8

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def _append_only(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION graphledger_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION graphledger_append_only()",
    ]


def upgrade() -> None:
    op.create_table(
        "merkle_entries",
        sa.Column("first_leaf", sa.BigInteger, nullable=False),
        sa.Column("leaves", sa.Integer, nullable=False),
        sa.Column("last_tx", XID8, nullable=False),
        sa.Column("last_position", sa.BigInteger, nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("first_leaf", name="merkle_entries_pkey"),
        sa.CheckConstraint(
            "leaves BETWEEN 1 AND 256 AND first_leaf % 256 + leaves <= 256 AND octet_length(ids) = 36 * leaves",
            name="merkle_entries_leaves_check",
        ),
    )
    op.create_index("merkle_entries_last_idx", "merkle_entries", ["last_tx", "last_position"], unique=True)
    op.execute(
        """
INSERT INTO merkle_entries (first_leaf, leaves, last_tx, last_position, ids)
SELECT min(leaf_index), count(*), (array_agg(tx ORDER BY leaf_index DESC))[1], (array_agg(global_position ORDER BY leaf_index DESC))[1],
       string_agg(uuid_send(thread_id) || uuid_send(run_id) || int4send(seq), ''::bytea ORDER BY leaf_index)
FROM merkle_leaves GROUP BY leaf_index / 256
"""
    )
    for statement in _append_only("merkle_entries"):
        op.execute(statement)
    op.drop_table("merkle_leaves")


def downgrade() -> None:
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
    # The feed key and the chain hash of each leaf come back from its event.
    op.execute(
        """
INSERT INTO merkle_leaves (leaf_index, tx, global_position, thread_id, run_id, seq, hash)
SELECT m.first_leaf + i, e.tx, e.global_position, e.thread_id, e.run_id, e.seq, e.hash
FROM merkle_entries m
CROSS JOIN LATERAL generate_series(0, m.leaves - 1) AS i
JOIN events e ON e.thread_id = encode(substring(m.ids FROM i * 36 + 1 FOR 16), 'hex')::uuid
             AND e.run_id = encode(substring(m.ids FROM i * 36 + 17 FOR 16), 'hex')::uuid
             AND e.seq = ('x' || encode(substring(m.ids FROM i * 36 + 33 FOR 4), 'hex'))::bit(32)::int
"""
    )
    for statement in _append_only("merkle_leaves"):
        op.execute(statement)
    op.drop_table("merkle_entries")
