"""The ``threads`` table: every statement on it, bound to one connection by :class:`Threads`.

A thread is created once and never reused: ``DELETE /threads/{id}`` marks it
deleted (its state goes, its record stays, see docs/architecture.md).
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
GET_SQL = f"SELECT {_COLUMNS} FROM threads WHERE thread_id = $1"
INSERT_SQL = f"""
INSERT INTO threads (thread_id, metadata) VALUES ($1, $2::jsonb)
ON CONFLICT (thread_id) DO NOTHING
RETURNING {_COLUMNS}
"""
EXISTS_SQL = "SELECT 1 FROM threads WHERE thread_id = $1"
# NO KEY UPDATE serialises admissions of a thread, yet lets other transactions
# take the KEY SHARE lock that the foreign key check of an update of one of its
# runs takes (a run row updated twice in one transaction is checked again).
LOCK_SQL = "SELECT deleted_at IS NOT NULL AS deleted FROM threads WHERE thread_id = $1 FOR NO KEY UPDATE"
MARK_DELETED_SQL = "UPDATE threads SET deleted_at = now(), updated_at = now() WHERE thread_id = $1"


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

    async def get(self, thread_id: UUID) -> Thread | None:
        """The thread's row, deleted or not."""
        row = await self._conn.fetchrow(GET_SQL, thread_id)
        return _thread(row) if row is not None else None

    async def exists(self, thread_id: UUID) -> bool:
        """Whether the thread was ever created (a deleted thread still has its record)."""
        return await self._conn.fetchval(EXISTS_SQL, thread_id) is not None

    async def lock(self, thread_id: UUID) -> bool:
        """Take the thread's admission lock for this transaction; return whether it was deleted.

        Raises :class:`ThreadNotFound` if it never existed.
        """
        deleted: bool | None = await self._conn.fetchval(LOCK_SQL, thread_id)
        if deleted is None:
            raise ThreadNotFound(f"thread {thread_id} not found")
        return deleted

    async def mark_deleted(self, thread_id: UUID) -> None:
        await self._conn.execute(MARK_DELETED_SQL, thread_id)
