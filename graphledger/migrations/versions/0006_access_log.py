"""The access log: reads of the record, append-only and hash-chained.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APPEND_ONLY = [
    """
CREATE FUNCTION graphledger_access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the graphledger access log is append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$""",
    """
CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log
    FOR EACH ROW EXECUTE FUNCTION graphledger_access_log_append_only()""",
    """
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON access_log
    FOR EACH STATEMENT EXECUTE FUNCTION graphledger_access_log_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "access_log",
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", postgresql.JSON, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("position", name="access_log_pkey"),
        sa.CheckConstraint("position >= 1", name="access_log_position_check"),
        sa.CheckConstraint("octet_length(hash) = 32", name="access_log_hash_check"),
    )
    op.create_index("access_log_ts_idx", "access_log", ["ts"])
    op.create_table(
        "access_log_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("hash", sa.LargeBinary, nullable=False, server_default=sa.text("'\\x" + "00" * 32 + "'::bytea")),
        sa.PrimaryKeyConstraint("id", name="access_log_head_pkey"),
        sa.CheckConstraint("id = 1", name="access_log_head_one_row"),
    )
    op.execute("INSERT INTO access_log_head (id) VALUES (1)")
    for statement in APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("access_log_head")
    op.drop_table("access_log")
    op.execute("DROP FUNCTION graphledger_access_log_append_only()")
