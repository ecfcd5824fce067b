"""The tables of the ledger, as SQLAlchemy Core metadata.

Alembic migrations must produce exactly this (tests/ledger/test_schema.py).
Every unique key includes ``thread_id`` so that the schema can be distributed
by thread (Citus, all tables co-located) without change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType


class XID8(UserDefinedType[int]):
    """PostgreSQL's 64-bit, wraparound-free transaction id."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "XID8"


ischema_names["xid8"] = XID8

metadata = sa.MetaData()

threads = sa.Table(
    "threads",
    metadata,
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # Set by DELETE /threads/{id}: the thread takes no more runs and its state is
    # gone, but its record (runs, events, projections) stays. Ids are not reused.
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    # Who deleted it ({"identity": ..., "permissions": [...]}), when authentication is on:
    # a deletion has no run whose log could record its actor.
    sa.Column("deleted_by", postgresql.JSONB, nullable=True),
    # The stateless run (on_completion: delete) this thread was created for, while the
    # thread's deletion at that run's end is due: cleared when the thread is deleted or
    # kept (another run was admitted on it). Whatever ends the run deletes the thread;
    # the reaper's sweep finishes what a process that died between the two left.
    sa.Column("delete_after_run", postgresql.UUID(as_uuid=True), nullable=True),
    # Searches by metadata containment (@>), the caller's filter and an authorization filter's.
    sa.Index("threads_metadata_idx", "metadata", postgresql_using="gin", postgresql_ops={"metadata": "jsonb_path_ops"}),
    sa.Index("threads_delete_after_run_idx", "thread_id", postgresql_where=sa.text("delete_after_run IS NOT NULL")),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("assistant_id", sa.Text, nullable=True),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    # The stream head: every append is conditional on it (see ledger/statement.py).
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_hash", sa.LargeBinary, nullable=False, server_default=sa.text("'\\x" + "00" * 32 + "'::bytea")),
    sa.Column("last_kind", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # Admission order: a thread's pending runs start in this order (multitask "enqueue").
    sa.Column("queue_position", sa.BigInteger, sa.Identity(always=False), nullable=False),
    # Whether a worker may claim it: the run.created payload's "executor" is "server"
    # (a run its creator executes itself is never claimed).
    sa.Column("claimable", sa.Boolean, nullable=False, server_default=sa.false()),
    # The worker executing the run, and until when it holds the run unless it renews.
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    # When a run admitted with after_seconds may be claimed (NULL: at once); copied
    # from the run.created payload's after_seconds when the row is inserted.
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
    # A run that records something about another run of its thread (its webhook's
    # delivery, its deletion): the payload's "command" and "record_of", copied at insert.
    sa.Column("command", sa.Text, nullable=True),
    sa.Column("record_of", postgresql.UUID(as_uuid=True), nullable=True),
    # The run's webhook address as given (secrets included, never in the log), until its delivery is final.
    sa.Column("webhook", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("thread_id", "run_id", name="runs_pkey"),
    sa.ForeignKeyConstraint(["thread_id"], ["threads.thread_id"], name="runs_thread_id_fkey"),
    sa.CheckConstraint("last_seq >= 0", name="runs_last_seq_check"),
    sa.Index("runs_run_id_idx", "run_id"),
    sa.Index("runs_thread_created_idx", "thread_id", "created_at"),
    sa.Index("runs_pending_idx", "queue_position", postgresql_where=sa.text("status = 'pending' AND claimable")),
    sa.Index("runs_active_idx", "thread_id", "queue_position", postgresql_where=sa.text("status IN ('pending', 'running')")),
    sa.Index("runs_lease_idx", "lease_expires_at", postgresql_where=sa.text("status = 'running'")),
    sa.Index("runs_record_of_idx", "thread_id", "record_of", postgresql_where=sa.text("record_of IS NOT NULL")),
    sa.Index("runs_webhook_idx", "queue_position", postgresql_where=sa.text("webhook IS NOT NULL")),
)

run_secrets = sa.Table(
    "run_secrets",
    metadata,
    # Secret values of a run's config (API keys, tokens), kept out of the log and
    # handed to the worker that claims the run, which deletes them.
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("secrets", postgresql.JSONB, nullable=False),
    sa.PrimaryKeyConstraint("thread_id", "run_id", name="run_secrets_pkey"),
    sa.ForeignKeyConstraint(["thread_id", "run_id"], ["runs.thread_id", "runs.run_id"], name="run_secrets_run_fkey"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("global_position", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    # json, not jsonb: the writer's canonical text is stored, hashed and sent verbatim.
    sa.Column("data", postgresql.JSON, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("tx", XID8, nullable=False, server_default=sa.text("pg_current_xact_id()")),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("thread_id", "run_id", "seq", name="events_pkey"),
    sa.CheckConstraint("seq >= 1", name="events_seq_check"),
    sa.CheckConstraint("octet_length(hash) = 32", name="events_hash_check"),
    sa.Index("events_feed_idx", "tx", "global_position"),
    sa.Index("events_thread_position_idx", "thread_id", "global_position"),
)

access_log = sa.Table(
    "access_log",
    metadata,
    # Who read which part of the record (see ledger/access.py): append-only, one hash chain.
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("data", postgresql.JSON, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("position", name="access_log_pkey"),
    sa.CheckConstraint("position >= 1", name="access_log_position_check"),
    sa.CheckConstraint("octet_length(hash) = 32", name="access_log_hash_check"),
    sa.Index("access_log_ts_idx", "ts"),
)

access_log_head = sa.Table(
    "access_log_head",
    metadata,
    # One row: the last entry's position and hash, locked by each new entry's transaction.
    sa.Column("id", sa.Integer, nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("hash", sa.LargeBinary, nullable=False, server_default=sa.text("'\\x" + "00" * 32 + "'::bytea")),
    sa.PrimaryKeyConstraint("id", name="access_log_head_pkey"),
    sa.CheckConstraint("id = 1", name="access_log_head_one_row"),
)

# -- the Merkle log (every statement on these tables is in ledger/tlog.py) ---------------------
# One tree over the whole log, not per thread: these tables are global by design and
# would stay on the coordinator of a distributed database.

merkle_entries = sa.Table(
    "merkle_entries",
    metadata,
    # Which events leaves first_leaf .. first_leaf + leaves - 1 are: the n-th leaf is the n-th
    # event of the gap-safe global feed, (tx, global_position) order. ``ids`` holds 36 bytes a
    # leaf, thread_id (16) || run_id (16) || seq (4, big-endian); a row never crosses a level-0
    # tile (256 leaves), like the entry bundles of C2SP tlog-tiles. The leaf hashes themselves are
    # the level-0 tiles. (last_tx, last_position) is the feed key of the row's last leaf.
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
    sa.Index("merkle_entries_last_idx", "last_tx", "last_position", unique=True),
)

merkle_tiles = sa.Table(
    "merkle_tiles",
    metadata,
    # A C2SP tlog tile: up to 256 hashes of height 8 * level; a partial tile grows in place.
    # A cache of what the leaves determine: verifiers never trust it.
    sa.Column("level", sa.SmallInteger, nullable=False),
    sa.Column("tile_index", sa.BigInteger, nullable=False),
    sa.Column("hashes", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("level", "tile_index", name="merkle_tiles_pkey"),
    sa.CheckConstraint("octet_length(hashes) BETWEEN 32 AND 8192 AND octet_length(hashes) % 32 = 0", name="merkle_tiles_hashes_check"),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    # Signed checkpoints (C2SP signed note), append-only like the events.
    sa.Column("checkpoint_id", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("tree_size", sa.BigInteger, nullable=False),
    sa.Column("root_hash", sa.LargeBinary, nullable=False),
    sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("checkpoint_id", name="checkpoints_pkey"),
    sa.CheckConstraint("tree_size >= 0", name="checkpoints_tree_size_check"),
)

# -- assistants (every statement on these tables is in ledger/assistants.py) ---------------------
# Global like the Merkle tables: an assistant belongs to no thread.

assistants = sa.Table(
    "assistants",
    metadata,
    # The version in use, copied from assistant_versions (POST .../latest moves it).
    sa.Column("assistant_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("graph_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("config", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("context", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("assistant_id", name="assistants_pkey"),
    sa.CheckConstraint("version >= 1", name="assistants_version_check"),
    sa.Index("assistants_graph_id_idx", "graph_id"),
    sa.Index("assistants_created_at_idx", "created_at"),
)

assistant_versions = sa.Table(
    "assistant_versions",
    metadata,
    # Every version an assistant had, 1, 2, ...: written once, removed only with the assistant.
    sa.Column("assistant_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("graph_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("config", postgresql.JSONB, nullable=False),
    sa.Column("context", postgresql.JSONB, nullable=False),
    sa.Column("metadata", postgresql.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("assistant_id", "version", name="assistant_versions_pkey"),
    sa.ForeignKeyConstraint(
        ["assistant_id"], ["assistants.assistant_id"], name="assistant_versions_assistant_id_fkey", ondelete="CASCADE"
    ),
    sa.CheckConstraint("version >= 1", name="assistant_versions_version_check"),
)

# -- thread snapshot documents (every statement on this table is in runs/snapshots.py) -----------
# A cache of the JSON the state and history routes answer, one row per checkpoint of
# LangGraph's checkpointer (schema ``langgraph``), keyed as it keys them (text ids). Never
# the record: served only while ``graph`` and ``version`` still match the checkpoint.

thread_snapshots = sa.Table(
    "thread_snapshots",
    metadata,
    sa.Column("thread_id", sa.Text, nullable=False),
    sa.Column("checkpoint_ns", sa.Text, nullable=False),
    sa.Column("checkpoint_id", sa.Text, nullable=False),
    # The graph (registry name) that rendered it: a thread's state is read through the graph
    # of its latest run, and another graph may compute other next tasks from the same checkpoint.
    sa.Column("graph", sa.Text, nullable=False),
    # The checkpoint row's and its pending writes' row versions when it was rendered.
    sa.Column("version", sa.Text, nullable=False),
    # The snapshot as a history entry (and GET .../state/{checkpoint_id}) answers it.
    sa.Column("history", sa.Text, nullable=True),
    # The snapshot as GET .../state answers it while the checkpoint is the thread's latest
    # (LangGraph applies the finished tasks' pending writes to it).
    sa.Column("latest", sa.Text, nullable=True),
    sa.Column("rendered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("thread_id", "checkpoint_ns", "checkpoint_id", name="thread_snapshots_pkey"),
)

# -- budgets (every statement on these tables is in ledger/budgets.py) -----------------------------
# Global: a budget belongs to no thread. budget_runs names the runs a budget charges.

budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("definition", postgresql.JSONB, nullable=False),  # graphledger.runs.budgets.Budget.json()
    sa.Column("set_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("set_by", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("name", name="budgets_pkey"),
)

budget_changes = sa.Table(
    "budget_changes",
    metadata,
    # Every set and removal of a budget, by whom: append-only.
    sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("definition", postgresql.JSONB, nullable=True),  # NULL for a removal
    sa.Column("by", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("position", name="budget_changes_pkey"),
    sa.CheckConstraint("action IN ('set', 'remove')", name="budget_changes_action_check"),
)

budget_runs = sa.Table(
    "budget_runs",
    metadata,
    # A run charged to a budget's key (an identity, a user's field, a metadata value), from its admission on.
    sa.Column("budget", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("thread_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
    # When the run was seen ended (its head's last change), set by admissions under the key; NULL before.
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("budget", "key", "thread_id", "run_id", name="budget_runs_pkey"),
    sa.Index("budget_runs_ended_idx", "budget", "key", "ended_at"),
)

budget_refusals = sa.Table(
    "budget_refusals",
    metadata,
    # Every admission a budget refused: who, which budget and key, its use and limit, when. Append-only.
    sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("budget", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("identity", sa.Text, nullable=True),  # the authenticated user's; NULL when auth is off
    sa.Column("data", postgresql.JSONB, nullable=False),
    sa.PrimaryKeyConstraint("position", name="budget_refusals_pkey"),
    sa.Index("budget_refusals_ts_idx", "ts"),
)
