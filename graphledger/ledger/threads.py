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
from graphledger.ledger.events import jsonb_text
from graphledger.ledger.read import Connection

_COLUMNS = "thread_id, created_at, updated_at, metadata, deleted_at"
# $2: the containment every visible thread's metadata satisfies (NULL: no filter);
# $3: the keys whose value must be equal, not only contained (objects and arrays
# compared with "$eq"; NULL when there are none). The containment can use an
# index on metadata; the equality check then only looks at the rows it found.
VISIBLE = """($2::jsonb IS NULL OR metadata @> $2::jsonb)
  AND ($3::jsonb IS NULL OR NOT EXISTS (SELECT 1 FROM jsonb_each($3::jsonb) e WHERE metadata -> e.key IS DISTINCT FROM e.value))"""
GET_SQL = f"SELECT {_COLUMNS} FROM threads WHERE thread_id = $1 AND {VISIBLE}"
INSERT_SQL = f"""
INSERT INTO threads (thread_id, metadata) VALUES ($1, $2::jsonb)
ON CONFLICT (thread_id) DO NOTHING
RETURNING {_COLUMNS}
"""
EXISTS_SQL = f"SELECT 1 FROM threads WHERE thread_id = $1 AND {VISIBLE}"
# NO KEY UPDATE serialises admissions of a thread, yet lets other transactions
# take the KEY SHARE lock that the foreign key check of an update of one of its
# runs takes (a run row updated twice in one transaction is checked again).
LOCK_SQL = f"SELECT deleted_at IS NOT NULL AS deleted FROM threads WHERE thread_id = $1 AND {VISIBLE} FOR NO KEY UPDATE"
MARK_DELETED_SQL = "UPDATE threads SET deleted_at = now(), updated_at = now(), deleted_by = $2::jsonb WHERE thread_id = $1"
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


def _args(visible: Visibility | None) -> tuple[str | None, str | None]:
    return (visible.contains, visible.exact) if visible is not None else (None, None)


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

    async def insert(self, thread_id: UUID, metadata: Mapping[str, Any] | None = None) -> Thread | None:
        """Create a thread; None when one with this id exists already (deleted or not)."""
        row = await self._conn.fetchrow(INSERT_SQL, thread_id, jsonb_text(dict(metadata or {}), "thread metadata"))
        return _thread(row) if row is not None else None

    async def get(self, thread_id: UUID, visible: Visibility | None = None) -> Thread | None:
        """The thread's row, deleted or not; None unless it exists and is ``visible``."""
        row = await self._conn.fetchrow(GET_SQL, thread_id, *_args(visible))
        return _thread(row) if row is not None else None

    async def exists(self, thread_id: UUID, visible: Visibility | None = None) -> bool:
        """Whether the thread was ever created and is ``visible`` (a deleted thread still has its record)."""
        return await self._conn.fetchval(EXISTS_SQL, thread_id, *_args(visible)) is not None

    async def lock(self, thread_id: UUID, visible: Visibility | None = None) -> bool:
        """Take the thread's admission lock for this transaction; return whether it was deleted.

        Raises :class:`ThreadNotFound` if it never existed or is not ``visible``.
        """
        deleted: bool | None = await self._conn.fetchval(LOCK_SQL, thread_id, *_args(visible))
        if deleted is None:
            raise ThreadNotFound(f"thread {thread_id} not found")
        return deleted

    async def mark_deleted(self, thread_id: UUID, actor: Mapping[str, Any] | None = None) -> None:
        """Mark the thread deleted, by ``actor`` (the identity that asked; None without authentication)."""
        await self._conn.execute(MARK_DELETED_SQL, thread_id, jsonb_text(dict(actor), "actor") if actor is not None else None)
