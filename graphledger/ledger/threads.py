"""The ``threads`` table: every statement on it, bound to one connection by :class:`Threads`.

A thread is created once and never reused: ``DELETE /threads/{id}`` marks it
deleted (its state goes, its record stays, see docs/architecture.md).

Authorization filters (:class:`Visibility`) are applied here, in the
statements: a thread outside a caller's filter is not found, exactly like a
thread that does not exist. A run is visible iff its thread is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from graphledger.ledger.errors import ThreadNotFound
from graphledger.ledger.events import TERMINAL_STATUSES, jsonb_text
from graphledger.ledger.read import Connection

_COLUMNS = "thread_id, created_at, updated_at, metadata, deleted_at"


def visible_sql(contains: int, exact: int, alias: str = "") -> str:
    """The authorization filter on ``<alias>metadata`` with its two parameters at ``contains`` and ``exact`` (see VISIBLE)."""
    m = f"{alias}metadata"
    return (
        f"(${contains}::jsonb IS NULL OR {m} @> ${contains}::jsonb) AND (${exact}::jsonb IS NULL OR NOT EXISTS "
        f"(SELECT 1 FROM jsonb_each(${exact}::jsonb) e WHERE {m} -> e.key IS DISTINCT FROM e.value))"
    )


# The authorization filter of the statements below. $2: the containment every
# visible thread's metadata satisfies (NULL: no filter); $3: the keys whose
# value must be equal, not only contained (objects and arrays compared with
# "$eq"; NULL when there are none). The containment can use an index on
# metadata; the equality check then only looks at the rows it found.
VISIBLE = visible_sql(2, 3)

GET_SQL = f"SELECT {_COLUMNS} FROM threads WHERE thread_id = $1 AND {VISIBLE}"
INSERT_SQL = f"""
INSERT INTO threads (thread_id, metadata, delete_after_run) VALUES ($1, $2::jsonb, $3)
ON CONFLICT (thread_id) DO NOTHING
RETURNING {_COLUMNS}
"""
EXISTS_SQL = f"SELECT 1 FROM threads WHERE thread_id = $1 AND {VISIBLE}"
# NO KEY UPDATE serialises admissions of a thread, yet lets other transactions
# take the KEY SHARE lock that the foreign key check of an update of one of its
# runs takes (a run row updated twice in one transaction is checked again).
LOCK_SQL = f"SELECT deleted_at IS NOT NULL AS deleted FROM threads WHERE thread_id = $1 AND {VISIBLE} FOR NO KEY UPDATE"
MARK_DELETED_SQL = """
UPDATE threads SET deleted_at = now(), updated_at = now(), deleted_by = $2::jsonb, delete_after_run = NULL WHERE thread_id = $1
"""
CLEAR_DELETION_SQL = "UPDATE threads SET delete_after_run = NULL WHERE thread_id = $1 AND delete_after_run IS NOT NULL"
# Threads whose stateless run ended $2 seconds ago or more but which are still there:
# what a process that died between the run's end and the deletion left (the partial
# index holds only the threads whose deletion is due, most of them waiting for a live
# run; runs.updated_at is the time of the run's last head change, its end).
DELETIONS_DUE_SQL = f"""
SELECT t.thread_id, t.delete_after_run AS run_id FROM threads t
JOIN runs r ON r.thread_id = t.thread_id AND r.run_id = t.delete_after_run
WHERE t.delete_after_run IS NOT NULL AND r.status IN ({", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))})
  AND r.updated_at < now() - make_interval(secs => $2)
ORDER BY t.thread_id LIMIT $1
"""
OPERATORS = ("$eq", "$contains")


@dataclass(frozen=True, slots=True)
class Visibility:
    """An authorization filter on threads' metadata, as the statements take it (see :meth:`of`)."""

    contains: str  # jsonb text: what the metadata must contain
    exact: str | None  # jsonb text: keys whose values must be equal (objects, arrays), or None

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None) -> Visibility | None:
        """The filter a LangGraph auth handler returned; None for no filter.

        ``{"key": value}`` and ``{"key": {"$eq": value}}`` ask for equality;
        ``{"key": {"$contains": value}}`` for a list holding ``value`` (every
        item, when ``value`` is a list). Several keys must all hold.
        """
        if not spec:
            return None
        contains: dict[str, Any] = {}
        exact: dict[str, Any] = {}
        for key, condition in spec.items():
            if not isinstance(key, str):
                raise ValueError(f"an authorization filter's keys are metadata keys (strings), not {key!r}")
            operator = None
            if isinstance(condition, Mapping) and len(condition) == 1 and next(iter(condition)) in OPERATORS:
                ((operator, condition),) = condition.items()
            elif isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
                raise ValueError(f"authorization filter on {key!r}: unknown operator in {sorted(condition)}; use {' or '.join(OPERATORS)}")
            if operator == "$contains":
                contains[key] = list(condition) if isinstance(condition, (list, tuple)) else [condition]
            else:
                contains[key] = condition
                if isinstance(condition, (Mapping, list, tuple)):
                    exact[key] = condition  # containment alone would accept a larger object or list
        return cls(jsonb_text(contains, "authorization filter"), jsonb_text(exact, "authorization filter") if exact else None)


def visibility_args(visible: Visibility | None) -> tuple[str | None, str | None]:
    """The two parameters a statement with a visibility filter takes (see VISIBLE)."""
    return (visible.contains, visible.exact) if visible is not None else (None, None)
# A shallow merge, as the LangGraph API does: the given keys replace the thread's.
MERGE_METADATA_SQL = f"""
UPDATE threads SET metadata = metadata || $4::jsonb, updated_at = now()
WHERE thread_id = $1 AND deleted_at IS NULL AND {VISIBLE}
RETURNING {_COLUMNS}
"""

SORT_BY = ("thread_id", "status", "created_at", "updated_at")
"""What a search can sort threads by."""


def view_sql(status: str, changed: str) -> str:
    """The threads that are not deleted, as read: ``status`` and ``changed`` are SQL expressions over ``t`` (the row).

    ``changed`` is the time of the thread's last change other than its own
    row (its runs'); the row's ``updated_at`` moves with its metadata.
    Built once, by the reader that owns those expressions
    (:mod:`graphledger.projections.read`).
    """
    return f"""
SELECT t.thread_id, t.created_at, greatest(t.updated_at, {changed}) AS updated_at, t.metadata, t.deleted_at, {status} AS status
FROM threads t WHERE t.deleted_at IS NULL
"""


def _filters(contains: int, exact: int, by_metadata: bool) -> str:
    """A search's filters: the caller's ($1 metadata, $2 ids, $3 status) and the authorization filter (as VISIBLE, at ``contains`` and ``exact``).

    Two statements, with and without a metadata filter, rather than one with
    ``$1 IS NULL OR metadata @> $1``: a prepared statement's generic plan
    cannot drop that OR, and so could never use the GIN index on
    ``threads.metadata`` (``threads_metadata_idx``); a bare ``@>`` can.
    """
    metadata = "v.metadata @> $1::jsonb" if by_metadata else "$1::jsonb IS NULL"
    return f"""
WHERE {metadata}
  AND ($2::uuid[] IS NULL OR v.thread_id = ANY($2::uuid[]))
  AND ($3::text IS NULL OR v.status = $3)
  AND {visible_sql(contains, exact, "v.")}
"""


def search_sql(view: str, sort_by: str, descending: bool, by_metadata: bool) -> str:
    """A page of the threads of ``view`` by metadata containment ($1, NULL unless ``by_metadata``), ids ($2) and status ($3), visible by $6, $7; limit $4, offset $5."""
    if sort_by not in SORT_BY:
        raise ValueError(f"cannot sort threads by {sort_by!r}")
    order = "DESC" if descending else "ASC"
    return f"SELECT v.* FROM ({view}) v {_filters(6, 7, by_metadata)} ORDER BY v.{sort_by} {order}, v.thread_id {order} LIMIT $4 OFFSET $5"


def count_sql(view: str, by_metadata: bool) -> str:
    """How many threads of ``view`` match metadata containment ($1, NULL unless ``by_metadata``), ids ($2) and status ($3), visible by $4, $5."""
    return f"SELECT count(*) FROM ({view}) v {_filters(4, 5, by_metadata)}"


@dataclass(frozen=True, slots=True)
class Thread:
    """A thread's row."""

    thread_id: UUID
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]
    deleted_at: datetime | None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


def thread_of(row: asyncpg.Record) -> Thread:
    """A thread from a row with its columns (extra columns are ignored)."""
    return _thread(row)


def _thread(row: asyncpg.Record) -> Thread:
    metadata = row["metadata"]
    return Thread(
        row["thread_id"], row["created_at"], row["updated_at"],
        json.loads(metadata) if isinstance(metadata, str) else dict(metadata), row["deleted_at"],
    )


class Threads:
    """The statements on ``threads``, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def insert(self, thread_id: UUID, metadata: Mapping[str, Any] | None = None, *, delete_after_run: UUID | None = None) -> Thread | None:
        """Create a thread; None when one with this id exists already (deleted or not).

        ``delete_after_run``: the stateless run the thread is created for, whose
        end deletes it (see :meth:`deletions_due`).
        """
        row = await self._conn.fetchrow(INSERT_SQL, thread_id, jsonb_text(dict(metadata or {}), "thread metadata"), delete_after_run)
        return _thread(row) if row is not None else None

    async def get(self, thread_id: UUID, visible: Visibility | None = None) -> Thread | None:
        """The thread's row, deleted or not; None unless it exists and is ``visible``."""
        row = await self._conn.fetchrow(GET_SQL, thread_id, *visibility_args(visible))
        return _thread(row) if row is not None else None

    async def exists(self, thread_id: UUID, visible: Visibility | None = None) -> bool:
        """Whether the thread was ever created and is ``visible`` (a deleted thread still has its record)."""
        return await self._conn.fetchval(EXISTS_SQL, thread_id, *visibility_args(visible)) is not None

    async def lock(self, thread_id: UUID, visible: Visibility | None = None) -> bool:
        """Take the thread's admission lock for this transaction; return whether it was deleted.

        Raises :class:`ThreadNotFound` if it never existed or is not ``visible``.
        """
        deleted: bool | None = await self._conn.fetchval(LOCK_SQL, thread_id, *visibility_args(visible))
        if deleted is None:
            raise ThreadNotFound(f"thread {thread_id} not found")
        return deleted

    async def merge_metadata(self, thread_id: UUID, metadata: Mapping[str, Any], visible: Visibility | None = None) -> Thread | None:
        """Merge ``metadata`` into the thread's (top-level keys replaced); None when the thread does not exist, was deleted or is not visible."""
        row = await self._conn.fetchrow(MERGE_METADATA_SQL, thread_id, *visibility_args(visible), jsonb_text(dict(metadata), "thread metadata"))
        return _thread(row) if row is not None else None

    async def mark_deleted(self, thread_id: UUID, actor: Mapping[str, Any] | None = None) -> None:
        """Mark the thread deleted, by ``actor`` (the identity that asked; None without authentication)."""
        await self._conn.execute(MARK_DELETED_SQL, thread_id, jsonb_text(dict(actor), "actor") if actor is not None else None)

    async def clear_deletion(self, thread_id: UUID) -> None:
        """The thread's deletion is no longer due: it is kept (another run was admitted on it), or its run asks for none."""
        await self._conn.execute(CLEAR_DELETION_SQL, thread_id)

    async def deletions_due(self, limit: int, grace_seconds: float = 0.0) -> list[tuple[UUID, UUID]]:
        """Up to ``limit`` threads (with their stateless run) whose run ended ``grace_seconds`` ago or more and whose deletion is still due."""
        return [(row["thread_id"], row["run_id"]) for row in await self._conn.fetch(DELETIONS_DUE_SQL, limit, float(grace_seconds))]
