"""The ``runs`` table: each run's head row, its place in the admission queue and its lease.

Every statement on ``runs`` is here, except the append statement
(:mod:`graphledger.ledger.statement`), which moves the head columns in the
same statement that inserts the events. :class:`Heads` binds them to one
connection of a :class:`~graphledger.ledger.session.Session`.

The head row is derived from the log: ``assistant_id`` (the graph the run
executes: the payload's ``graph_id``, else its ``assistant_id``), ``metadata``,
``claimable`` and ``due_at`` (from ``after_seconds``) are copied from the run's
``run.created`` payload when the run is inserted, and ``status``/``last_*`` move with every append.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from graphledger.ledger.budgets import ANY_SQL as BUDGETS_ANY_SQL
from graphledger.ledger.errors import InvalidEvent, RunNotFound, ThreadNotFound
from graphledger.ledger.events import (
    ACTIVE_STATUSES,
    TERMINAL_KINDS,
    RunRef,
    jsonb_text,
)
from graphledger.ledger.read import Connection
from graphledger.ledger.statement import Head
from graphledger.ledger.threads import LOCK_SQL as THREAD_LOCK_SQL
from graphledger.ledger.threads import Visibility, visibility_args

_ACTIVE = ", ".join(f"'{status}'" for status in ACTIVE_STATUSES)

HEADS_SQL = """
SELECT r.thread_id, r.run_id, r.last_seq, r.last_hash, r.last_kind, r.status
FROM runs r JOIN unnest($1::uuid[], $2::uuid[]) AS k(thread_id, run_id)
    ON r.thread_id = k.thread_id AND r.run_id = k.run_id
"""
# due_at is now() (the admitting transaction's start) plus the payload's after_seconds.
INSERT_SQL = """
INSERT INTO runs (thread_id, run_id, assistant_id, metadata, claimable, due_at, command, record_of)
VALUES ($1, $2, $3, $4::jsonb, $5, CASE WHEN $6::float8 > 0 THEN now() + make_interval(secs => $6::float8) END, $7, $8)
"""
LOCATE_SQL = "SELECT thread_id, last_seq, last_kind FROM runs WHERE run_id = $1"
EXISTS_SQL = "SELECT 1 FROM runs WHERE thread_id = $1 AND run_id = $2"
LOCK_SQL = "SELECT status FROM runs WHERE thread_id = $1 AND run_id = $2 FOR UPDATE"
# A record run (record_of set) is never active: a webhook's delivery waits pending
# between its attempts, and holds back no admission, deletion or claim.
ACTIVE_SQL = f"SELECT run_id, status FROM runs WHERE thread_id = $1 AND status IN ({_ACTIVE}) AND record_of IS NULL ORDER BY run_id"
LOCK_ACTIVE_SQL = ACTIVE_SQL + " FOR UPDATE"
# A stateless run's status, and whether a run other than it was admitted on its thread:
# any but the records about a run (record_of: webhook deliveries, run deletions) and
# the thread's deletion.
COMPLETION_SQL = """
SELECT (SELECT status FROM runs WHERE thread_id = $1 AND run_id = $2) AS status, EXISTS (
    SELECT 1 FROM runs WHERE thread_id = $1 AND run_id <> $2 AND record_of IS NULL AND command IS DISTINCT FROM 'delete_thread'
) AS others
"""
# An admission's locks: the thread's row (threads.LOCK_SQL, its visibility filter
# at $2 and $3), then, in a statement of its own, its active runs (LOCK_ACTIVE_SQL).
# Not one statement: under READ COMMITTED a statement reads with the snapshot it
# started with, and one that waited for the thread's row behind another admission
# would not see the run that admission inserted, so that reject, interrupt and
# rollback would miss it. The second statement starts once the row is ours.
#
# With no budget defined, the thread's row is locked in the statement that asks
# whether one is (an admission locks its budgets' keys before its thread's row,
# see budgets.py, so with a budget defined nothing is locked and the admission
# goes the long way). The subquery on b is kept apart (OFFSET 0), so its
# condition is a one-time filter: the thread's CTE is never read then.
ADMISSION_THREAD_UNBUDGETED_SQL = f"""
WITH budgeted AS MATERIALIZED ({BUDGETS_ANY_SQL}),
thread AS MATERIALIZED ({THREAD_LOCK_SQL})
SELECT b.any AS budgeted, t.deleted FROM budgeted b
LEFT JOIN LATERAL (SELECT deleted FROM thread WHERE NOT b.any OFFSET 0) t ON true
"""
ALL_SQL = "SELECT thread_id, run_id FROM runs ORDER BY queue_position"
SELECT_BY_ID_SQL = "SELECT thread_id, run_id, status FROM runs WHERE run_id = $1"
LATEST_ASSISTANT_SQL = (
    "SELECT assistant_id FROM runs WHERE thread_id = $1 AND record_of IS NULL ORDER BY created_at DESC, queue_position DESC LIMIT 1"
)
# Every active run of the server's threads ($1: the statuses), locked in key order (a bulk cancel).
ALL_ACTIVE_SQL = """
SELECT thread_id, run_id, status FROM runs WHERE status = ANY($1::text[]) AND record_of IS NULL
ORDER BY thread_id, run_id
FOR UPDATE
"""
# A run is hidden from the LangGraph API (lists, gets, joins) when it records something
# about another run, or when a record of its deletion exists. Its events stay in the log.
HIDDEN_SQL = """
SELECT r.record_of IS NOT NULL OR EXISTS (
    SELECT 1 FROM runs d WHERE d.thread_id = r.thread_id AND d.record_of = r.run_id AND d.command = 'delete_run')
FROM runs r WHERE r.thread_id = $1 AND r.run_id = $2
"""
SET_WEBHOOK_SQL = "UPDATE runs SET webhook = $3 WHERE thread_id = $1 AND run_id = $2"
# Runs whose webhook is due: the run ended and its delivery record is missing, or
# still pending and not held (a lease on it covers an attempt under way, or the
# backoff before the next one). Derived from the log: a delivery whose record
# ended (run.succeeded: delivered, run.failed: given up) is final.
WEBHOOKS_DUE_SQL = f"""
SELECT r.thread_id, r.run_id FROM runs r
WHERE r.webhook IS NOT NULL AND r.status NOT IN ({_ACTIVE})
  AND NOT EXISTS (
    SELECT 1 FROM runs d
    WHERE d.thread_id = r.thread_id AND d.record_of = r.run_id AND d.command = $2
      AND (d.status <> 'pending' OR d.lease_expires_at > now()))
ORDER BY r.queue_position
LIMIT $1
"""
LOCK_WEBHOOK_SQL = f"""
SELECT webhook FROM runs
WHERE thread_id = $1 AND run_id = $2 AND webhook IS NOT NULL AND status NOT IN ({_ACTIVE})
FOR UPDATE SKIP LOCKED
"""
RECORD_SQL = """
SELECT run_id, status, last_seq, lease_owner, coalesce(lease_expires_at > now(), false) AS held FROM runs
WHERE thread_id = $1 AND record_of = $2 AND command = $3
ORDER BY queue_position LIMIT 1
FOR UPDATE
"""
SELECT_BY_THREAD_SQL = "SELECT thread_id, run_id, status FROM runs WHERE thread_id = $1 ORDER BY queue_position"
SELECT_CREATED_SQL = """
SELECT thread_id, run_id, status FROM runs
WHERE created_at >= coalesce($1, '-infinity'::timestamptz) AND created_at < coalesce($2, 'infinity'::timestamptz)
ORDER BY created_at, queue_position
"""

# A thread's pending run is claimable only when no run of the thread is
# running and no claimable run admitted before it is still pending. Runs being
# claimed by another worker are locked, skipped here, and still 'pending' to
# this snapshot, so they hold back the runs after them. Runs their creator
# executes itself (not claimable) hold the thread back only once they run.
# A run admitted with a delay is not claimable before its due_at, and holds
# back the thread's later runs until then (admission order is kept).
CLAIM_SQL = """
SELECT r.thread_id, r.run_id FROM runs r
WHERE r.status = 'pending' AND r.claimable AND (r.due_at IS NULL OR r.due_at <= now())
  AND NOT EXISTS (
    SELECT 1 FROM runs o
    WHERE o.thread_id = r.thread_id AND o.status IN ('pending', 'running')
      AND (o.status = 'running' OR (o.claimable AND o.queue_position < r.queue_position)))
ORDER BY r.queue_position
LIMIT $1
FOR UPDATE OF r SKIP LOCKED
"""
SET_LEASE_SQL = """
UPDATE runs SET lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4)
WHERE thread_id = $1 AND run_id = $2
"""
RENEW_SQL = """
UPDATE runs r SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($2::uuid[], $3::uuid[]) AS k(thread_id, run_id)
WHERE r.thread_id = k.thread_id AND r.run_id = k.run_id AND r.lease_owner = $1 AND r.status = 'running'
RETURNING r.thread_id, r.run_id
"""
# Only the holder gives a lease back, and only while the run is running: a
# run reaped or ended meanwhile is not its to release. The UPDATE takes the
# row lock, which the releasing transaction holds until its run.released
# event commits, so no claim can see the run pending without that event.
GIVE_BACK_SQL = """
UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL
WHERE thread_id = $1 AND run_id = $2 AND lease_owner = $3 AND status = 'running'
RETURNING run_id
"""
HELD_BY_SQL = """
SELECT r.thread_id, r.run_id FROM runs r JOIN unnest($2::uuid[], $3::uuid[]) AS k(thread_id, run_id)
    ON r.thread_id = k.thread_id AND r.run_id = k.run_id
WHERE r.lease_owner = $1 AND r.status = 'running'
"""
# A running run with no lease (started by a writer that takes none) is judged
# by its last append instead. No lease is judged until the database has been
# up for $4 seconds (a lease and its grace): a restart stopped every renewal,
# and a live holder needs that long to renew once the database is back.
EXPIRED_SQL = """
SELECT thread_id, run_id, lease_owner, lease_expires_at FROM runs
WHERE status = 'running'
  AND pg_postmaster_start_time() < now() - make_interval(secs => $4)
  AND coalesce(lease_expires_at, updated_at + make_interval(secs => $2)) < now() - make_interval(secs => $1)
ORDER BY lease_expires_at NULLS FIRST
LIMIT $3
FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class Located:
    """Where a run is, found by its id alone: its ref, last seq and whether it has ended."""

    ref: RunRef
    last_seq: int
    finished: bool


def _record_of(created: Mapping[str, Any]) -> UUID | None:
    value = created.get("record_of")
    if value is None:
        return None
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidEvent(f"record_of must be a run id, not {str(value)[:100]!r}") from None


@dataclass(frozen=True, slots=True)
class Record:
    """A run that records something about another run (see :meth:`Heads.record`)."""

    ref: RunRef
    status: str
    last_seq: int
    lease_owner: str | None
    held: bool  # its lease has not expired


@dataclass(frozen=True, slots=True)
class Expired:
    """A running run whose lease ran out."""

    ref: RunRef
    owner: str | None
    expired_at: datetime | None


def _refs(refs: Iterable[RunRef]) -> tuple[list[UUID], list[UUID]]:
    refs = list(refs)
    return [r.thread_id for r in refs], [r.run_id for r in refs]


class Heads:
    """The statements on ``runs``, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def load(self, refs: Iterable[RunRef]) -> dict[RunRef, Head]:
        """The heads of ``refs`` that exist."""
        rows = await self._conn.fetch(HEADS_SQL, *_refs(refs))
        return {
            RunRef(row["thread_id"], row["run_id"]): Head(row["last_seq"], bytes(row["last_hash"]), row["last_kind"], row["status"])
            for row in rows
        }

    async def get(self, ref: RunRef) -> Head | None:
        return (await self.load([ref])).get(ref)

    async def require(self, ref: RunRef) -> Head:
        head = await self.get(ref)
        if head is None:
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        return head

    async def exists(self, ref: RunRef) -> bool:
        return await self._conn.fetchval(EXISTS_SQL, ref.thread_id, ref.run_id) is not None

    async def insert(self, ref: RunRef, created: Mapping[str, Any]) -> None:
        """Insert a run's head row, its columns taken from its ``run.created`` payload."""
        # The graph the run executes: a thread's state is read through its latest run's.
        assistant_id = created.get("graph_id") or created.get("assistant_id")
        metadata = created.get("metadata") or {}
        after = created.get("after_seconds")
        after = float(after) if isinstance(after, (int, float)) and not isinstance(after, bool) else 0.0
        try:
            await self._conn.execute(
                INSERT_SQL, ref.thread_id, ref.run_id, str(assistant_id) if assistant_id else None,
                jsonb_text(metadata, "run metadata"), created.get("executor") == "server", after,
                command if isinstance(command := created.get("command"), str) else None, _record_of(created),
            )
        except asyncpg.ForeignKeyViolationError:
            raise ThreadNotFound(f"thread {ref.thread_id} not found") from None
        except asyncpg.UniqueViolationError:
            raise InvalidEvent(f"run {ref.run_id} already exists") from None

    async def hidden(self, ref: RunRef) -> bool:
        """Whether the run is hidden from the LangGraph API: a record run, or a deleted run (see :data:`HIDDEN_SQL`)."""
        found: bool | None = await self._conn.fetchval(HIDDEN_SQL, ref.thread_id, ref.run_id)
        if found is None:
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        return found

    async def all_active(self, statuses: Iterable[str]) -> list[tuple[RunRef, str]]:
        """Every run in one of ``statuses`` (pending, running) on any thread, locked in key order."""
        rows = await self._conn.fetch(ALL_ACTIVE_SQL, list(statuses))
        return [(RunRef(row["thread_id"], row["run_id"]), row["status"]) for row in rows]

    async def set_webhook(self, ref: RunRef, url: str | None) -> None:
        """Keep (or, with None, drop) the run's webhook address."""
        await self._conn.execute(SET_WEBHOOK_SQL, ref.thread_id, ref.run_id, url)

    async def webhooks_due(self, command: str, limit: int) -> list[RunRef]:
        """Up to ``limit`` ended runs whose webhook delivery (record runs of ``command``) is due (:data:`WEBHOOKS_DUE_SQL`)."""
        return [RunRef(row["thread_id"], row["run_id"]) for row in await self._conn.fetch(WEBHOOKS_DUE_SQL, limit, command)]

    async def lock_webhook(self, ref: RunRef) -> str | None:
        """The ended run's webhook address, its row locked; None if it has none, or another transaction holds the row."""
        found: str | None = await self._conn.fetchval(LOCK_WEBHOOK_SQL, ref.thread_id, ref.run_id)
        return found

    async def record(self, ref: RunRef, command: str) -> Record | None:
        """The run of ``ref``'s thread that records ``command`` about it (the first one), its row locked."""
        row = await self._conn.fetchrow(RECORD_SQL, ref.thread_id, ref.run_id, command)
        if row is None:
            return None
        return Record(RunRef(ref.thread_id, row["run_id"]), row["status"], row["last_seq"], row["lease_owner"], row["held"])

    async def latest_assistant(self, thread_id: UUID) -> str | None:
        """The graph of the thread's latest run (None without runs, or when it named none)."""
        found: str | None = await self._conn.fetchval(LATEST_ASSISTANT_SQL, thread_id)
        return found

    async def locate(self, run_id: UUID) -> Located | None:
        row = await self._conn.fetchrow(LOCATE_SQL, run_id)
        if row is None:
            return None
        return Located(RunRef(row["thread_id"], run_id), row["last_seq"], row["last_kind"] in TERMINAL_KINDS)

    async def lock(self, ref: RunRef) -> str:
        """Lock a run's head row for this transaction; return its status."""
        status: str | None = await self._conn.fetchval(LOCK_SQL, ref.thread_id, ref.run_id)
        if status is None:
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        return status

    async def active(self, thread_id: UUID, *, lock: bool = False) -> list[tuple[RunRef, str]]:
        """The thread's pending and running runs (locked for this transaction with ``lock``)."""
        rows = await self._conn.fetch(LOCK_ACTIVE_SQL if lock else ACTIVE_SQL, thread_id)
        return [(RunRef(thread_id, row["run_id"]), row["status"]) for row in rows]

    async def completion(self, ref: RunRef) -> tuple[str | None, bool]:
        """Stateless run ``ref``'s status, and whether another run was admitted on its thread (active or ended)."""
        row = await self._conn.fetchrow(COMPLETION_SQL, ref.thread_id, ref.run_id)
        assert row is not None  # one row, always
        return row["status"], bool(row["others"])

    async def admission_locks(self, thread_id: UUID, visible: Visibility | None = None) -> tuple[bool, list[tuple[RunRef, str]]]:
        """Take the thread's admission lock, then lock its active runs: whether it was deleted, and those runs.

        Raises :class:`ThreadNotFound` if the thread never existed or is not ``visible``.
        """
        return await self._then_active(thread_id, await self._conn.fetchval(THREAD_LOCK_SQL, thread_id, *visibility_args(visible)))

    async def admission_locks_unbudgeted(
        self, thread_id: UUID, visible: Visibility | None = None
    ) -> tuple[bool, list[tuple[RunRef, str]]] | None:
        """:meth:`admission_locks` when no budget is defined, the thread's row locked in that check; None (nothing locked) otherwise."""
        row = await self._conn.fetchrow(ADMISSION_THREAD_UNBUDGETED_SQL, thread_id, *visibility_args(visible))
        if row is None or row["budgeted"]:  # (one row always)
            return None
        return await self._then_active(thread_id, row["deleted"])

    async def _then_active(self, thread_id: UUID, deleted: bool | None) -> tuple[bool, list[tuple[RunRef, str]]]:
        """With the thread's row locked (``deleted``: None when not found), lock and read its active runs in a statement of their own."""
        if deleted is None:
            raise ThreadNotFound(f"thread {thread_id} not found")
        return deleted, await self.active(thread_id, lock=True)  # read after the lock: see ADMISSION_THREAD_UNBUDGETED_SQL

    async def claimable(self, limit: int) -> list[RunRef]:
        """Up to ``limit`` runs a worker may start now, locked (see :data:`CLAIM_SQL`)."""
        return [RunRef(row["thread_id"], row["run_id"]) for row in await self._conn.fetch(CLAIM_SQL, limit)]

    async def set_lease(self, ref: RunRef, owner: str, seconds: float) -> None:
        await self._conn.execute(SET_LEASE_SQL, ref.thread_id, ref.run_id, owner, float(seconds))

    async def give_back(self, ref: RunRef, owner: str) -> bool:
        """Clear ``owner``'s lease on a running run, locking its row; False if ``owner`` does not hold it."""
        return await self._conn.fetchval(GIVE_BACK_SQL, ref.thread_id, ref.run_id, owner) is not None

    async def renew(self, owner: str, refs: Iterable[RunRef], seconds: float) -> set[RunRef]:
        """Extend ``owner``'s leases on ``refs``; the runs it still holds."""
        rows = await self._conn.fetch(RENEW_SQL, owner, *_refs(refs), float(seconds))
        return {RunRef(row["thread_id"], row["run_id"]) for row in rows}

    async def held_by(self, owner: str, refs: Iterable[RunRef]) -> set[RunRef]:
        """Those of ``refs`` running under ``owner``'s lease."""
        rows = await self._conn.fetch(HELD_BY_SQL, owner, *_refs(refs))
        return {RunRef(row["thread_id"], row["run_id"]) for row in rows}

    async def expired(self, grace_seconds: float, idle_seconds: float, limit: int, *, settle_seconds: float = 0.0) -> list[Expired]:
        """Running runs whose lease expired ``grace_seconds`` ago, locked (skipping locked ones).

        None while the database has been up for less than ``settle_seconds``.
        """
        rows = await self._conn.fetch(EXPIRED_SQL, float(grace_seconds), float(idle_seconds), limit, float(settle_seconds))
        return [Expired(RunRef(r["thread_id"], r["run_id"]), r["lease_owner"], r["lease_expires_at"]) for r in rows]

    async def all(self) -> list[RunRef]:
        """Every run, in admission order."""
        return [RunRef(row["thread_id"], row["run_id"]) for row in await self._conn.fetch(ALL_SQL)]

    async def statuses(
        self, *, run_id: UUID | None = None, thread_id: UUID | None = None,
        since: datetime | None = None, until: datetime | None = None,
    ) -> list[tuple[RunRef, str]]:
        """Runs with their status: one run by id, a thread's runs, or the runs created in ``[since, until)``."""
        if run_id is not None:
            rows = await self._conn.fetch(SELECT_BY_ID_SQL, run_id)
        elif thread_id is not None:
            rows = await self._conn.fetch(SELECT_BY_THREAD_SQL, thread_id)
        else:
            rows = await self._conn.fetch(SELECT_CREATED_SQL, since, until)
        return [(RunRef(row["thread_id"], row["run_id"]), row["status"]) for row in rows]
