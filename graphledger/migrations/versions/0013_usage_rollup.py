"""Usage over time: the hourly rollup of LLM calls, a call's provider and time to first token, a run's identity and metadata.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

The rollup is filled from the calls already projected, labelled with their
runs' status and assistant. Runs recorded before this revision have no
identity or metadata in ``run_status`` (nor their calls a provider or time
to first token) until ``graphledger rebuild`` folds them from the log.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

FILL = """
INSERT INTO usage_hourly (hour, model, provider, caller, assistant_id, status, identity, calls, unknown_usage_calls, runs,
                          input_tokens, output_tokens, total_tokens, cache_read, cache_creation, reasoning)
SELECT date_trunc('hour', l.ts, 'UTC'), l.model, NULL, l.caller, s.assistant_id, s.status, NULL,
       count(*), count(*) FILTER (WHERE NOT l.usage_known),
       count(*) FILTER (WHERE l.seq = (SELECT min(f.seq) FROM llm_calls f WHERE f.thread_id = l.thread_id AND f.run_id = l.run_id)),
       coalesce(sum(l.input_tokens), 0), coalesce(sum(l.output_tokens), 0), coalesce(sum(l.total_tokens), 0),
       coalesce(sum(l.cache_read), 0), coalesce(sum(l.cache_creation), 0), coalesce(sum(l.reasoning), 0)
FROM llm_calls l LEFT JOIN run_status s ON s.thread_id = l.thread_id AND s.run_id = l.run_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""


def upgrade() -> None:
    op.add_column("run_status", sa.Column("identity", sa.Text, nullable=True))
    op.add_column("run_status", sa.Column("metadata", postgresql.JSON, nullable=True))
    op.add_column("llm_calls", sa.Column("provider", sa.Text, nullable=True))
    op.add_column("llm_calls", sa.Column("ttft_ms", sa.Float, nullable=True))
    op.create_table(
        "usage_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("provider", sa.Text, nullable=True),
        sa.Column("caller", sa.Text, nullable=True),
        sa.Column("assistant_id", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=True),
        sa.Column("identity", sa.Text, nullable=True),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("unknown_usage_calls", sa.BigInteger, nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("total_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_read", sa.BigInteger, nullable=False),
        sa.Column("cache_creation", sa.BigInteger, nullable=False),
        sa.Column("reasoning", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "hour", "model", "provider", "caller", "assistant_id", "status", "identity",
            name="usage_hourly_key", postgresql_nulls_not_distinct=True,
        ),
    )
    op.execute(FILL)


def downgrade() -> None:
    op.drop_table("usage_hourly")
    op.drop_column("llm_calls", "ttft_ms")
    op.drop_column("llm_calls", "provider")
    op.drop_column("run_status", "metadata")
    op.drop_column("run_status", "identity")
