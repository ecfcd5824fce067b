"""The projection tables, declared on the ledger's metadata so one migration history covers both.

Every row here is derived from the events table and can be rebuilt from it
(``graphledger rebuild``). Keys name the thread first, like the log's.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from graphledger.ledger.schema import metadata

run_status = sa.Table(
    "run_status",
    metadata,
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_seq", sa.Integer, nullable=False),  # seq of the last lifecycle event folded in
    sa.Column("assistant_id", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.Text, nullable=True),
    sa.Column("error_type", sa.Text, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("identity", sa.Text, nullable=True),  # who asked for the run (the actor's identity in run.created)
    sa.Column("metadata", postgresql.JSON, nullable=True),  # the run's metadata (json like the log: jsonb refuses \u0000)
    sa.PrimaryKeyConstraint("thread_id", "run_id", name="run_status_pkey"),
    # The runs list across threads (GET /runs): newest first, keyset pages walk it backward.
    sa.Index("run_status_created_idx", "created_at", "run_id"),
)

llm_calls = sa.Table(
    "llm_calls",
    metadata,
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("call_id", sa.Text, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),  # the llm.usage event that recorded the call first
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.Text, nullable=True),
    sa.Column("caller", sa.Text, nullable=True),
    sa.Column("usage_known", sa.Boolean, nullable=False),  # false: the model reported no usage (not zero tokens)
    sa.Column("input_tokens", sa.BigInteger, nullable=True),
    sa.Column("output_tokens", sa.BigInteger, nullable=True),
    sa.Column("total_tokens", sa.BigInteger, nullable=True),
    sa.Column("cache_read", sa.BigInteger, nullable=True),
    sa.Column("cache_creation", sa.BigInteger, nullable=True),
    sa.Column("reasoning", sa.BigInteger, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("provider", sa.Text, nullable=True),
    sa.Column("ttft_ms", sa.Float, nullable=True),  # time to the first streamed token of the call
    sa.PrimaryKeyConstraint("thread_id", "run_id", "call_id", name="llm_calls_pkey"),
    sa.Index("llm_calls_ts_idx", "ts"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    # Where the message first appeared: the global position of that event and
    # its index among the event's messages. Never moves once the writes that
    # carry it are committed, so keyset pages over it are stable.
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),  # the run that first recorded it
    sa.Column("seq", sa.Integer, nullable=False),
    # The latest write of the message (by position) is its content, as add_messages replaces by id.
    # json like the log (jsonb would refuse a \u0000 the log accepts).
    sa.Column("updated_position", sa.BigInteger, nullable=False),
    sa.Column("updated_part", sa.Integer, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", postgresql.JSON, nullable=False),
    # Its last writer: the run and seq of its latest write that is not an echo (a stream:values snapshot
    # repeats every message), at writer_position/part; NULL there when it was only ever echoed (then the
    # first echo). A writer other than run_id edited the message.
    sa.Column("updated_run_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("updated_seq", sa.Integer, nullable=False),
    sa.Column("writer_position", sa.BigInteger, nullable=True),
    sa.Column("writer_part", sa.Integer, nullable=True),
    sa.PrimaryKeyConstraint("thread_id", "message_id", name="messages_pkey"),
    sa.UniqueConstraint("thread_id", "position", "part", name="messages_thread_position_key"),
    sa.Index("messages_run_position_idx", "thread_id", "run_id", "position", "part"),
)

# Usage over time: the calls of llm_calls summed per UTC hour and the dimensions
# people group by, labelled with their run's current status, assistant and
# identity (a run's calls move to their new label when its status changes).
# Threads are not a dimension: with them the rollup has as many rows as calls
# (see docs/architecture.md, "Usage over time"). Dimensions are NULL when not
# recorded, and NULLs are one group (NULLS NOT DISTINCT).
USAGE_DIMENSIONS = ("hour", "model", "provider", "caller", "assistant_id", "status", "identity")
USAGE_SUMS = (
    "calls", "unknown_usage_calls", "runs", "input_tokens", "output_tokens", "total_tokens",
    "cache_read", "cache_creation", "reasoning",
)
usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.Text, nullable=True),
    sa.Column("provider", sa.Text, nullable=True),
    sa.Column("caller", sa.Text, nullable=True),
    sa.Column("assistant_id", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=True),  # NULL: the run has no status yet (its calls came first)
    sa.Column("identity", sa.Text, nullable=True),
    sa.Column("calls", sa.BigInteger, nullable=False),
    sa.Column("unknown_usage_calls", sa.BigInteger, nullable=False),
    sa.Column("runs", sa.BigInteger, nullable=False),  # runs whose first call is in this row
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("total_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_read", sa.BigInteger, nullable=False),
    sa.Column("cache_creation", sa.BigInteger, nullable=False),
    sa.Column("reasoning", sa.BigInteger, nullable=False),
    sa.UniqueConstraint(*USAGE_DIMENSIONS, name="usage_hourly_key", postgresql_nulls_not_distinct=True),
)

PROJECTION_TABLES = (run_status, llm_calls, messages, usage_hourly)
