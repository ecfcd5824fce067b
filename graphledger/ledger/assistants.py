"""The ``assistants`` and ``assistant_versions`` tables: every statement on them, bound to one connection by :class:`Assistants`.

An assistant is a graph with its own config, context, metadata and name.
Each change is a new version (a row of ``assistant_versions``, never changed
or removed but with its assistant); the ``assistants`` row is a copy of the
version in use, which ``latest`` can move to any version. The graphs a server
serves are assistants too, created at start with ids derived from their
names (:mod:`graphledger.runs.assistants`).

Authorization filters (:class:`~graphledger.ledger.threads.Visibility`) are
applied here, on the assistant's metadata: an assistant outside a caller's
filter is not found, exactly like one that does not exist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from graphledger.ledger.events import jsonb_text
from graphledger.ledger.read import Connection
from graphledger.ledger.threads import Visibility, visibility_args, visible_sql

_FIELDS = "graph_id, name, description, config, context, metadata"
_COLUMNS = f"assistant_id, version, {_FIELDS}, created_at, updated_at"
_VERSION_COLUMNS = f"assistant_id, version, {_FIELDS}, created_at"

SORT_BY = ("assistant_id", "graph_id", "name", "created_at", "updated_at")
"""What a search can sort assistants by."""

# The assistant and its first version, in one statement; nothing when the id is taken.
INSERT_SQL = f"""
WITH a AS (
    INSERT INTO assistants (assistant_id, version, {_FIELDS})
    VALUES ($1, 1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb)
    ON CONFLICT (assistant_id) DO NOTHING
    RETURNING {_COLUMNS}
), v AS (
    INSERT INTO assistant_versions ({_VERSION_COLUMNS}) SELECT {_VERSION_COLUMNS} FROM a
)
SELECT {_COLUMNS} FROM a
"""
GET_SQL = f"SELECT {_COLUMNS} FROM assistants WHERE assistant_id = $1 AND {visible_sql(2, 3)}"
# A change of an assistant is serialised by its row lock: the transaction that
# holds it reads the highest version in a statement of its own, which (READ
# COMMITTED) sees every version committed before the lock was granted, so two
# changes never take the same number.
LOCK_SQL = f"SELECT {_COLUMNS} FROM assistants WHERE assistant_id = $1 AND {visible_sql(2, 3)} FOR UPDATE"
NEXT_VERSION_SQL = "SELECT coalesce(max(version), 0) + 1 FROM assistant_versions WHERE assistant_id = $1"
ADD_VERSION_SQL = f"""
WITH v AS (
    INSERT INTO assistant_versions ({_VERSION_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, now())
    RETURNING {_VERSION_COLUMNS}
)
UPDATE assistants a
SET version = v.version, graph_id = v.graph_id, name = v.name, description = v.description,
    config = v.config, context = v.context, metadata = v.metadata, updated_at = v.created_at
FROM v WHERE a.assistant_id = v.assistant_id
RETURNING a.assistant_id, a.version, a.graph_id, a.name, a.description, a.config, a.context, a.metadata, a.created_at, a.updated_at
"""
SET_LATEST_SQL = f"""
UPDATE assistants a
SET version = v.version, graph_id = v.graph_id, name = v.name, description = v.description,
    config = v.config, context = v.context, metadata = v.metadata, updated_at = now()
FROM assistant_versions v
WHERE a.assistant_id = $1 AND v.assistant_id = $1 AND v.version = $4 AND {visible_sql(2, 3, "a.")}
RETURNING a.assistant_id, a.version, a.graph_id, a.name, a.description, a.config, a.context, a.metadata, a.created_at, a.updated_at
"""
DELETE_SQL = f"DELETE FROM assistants WHERE assistant_id = $1 AND {visible_sql(2, 3)} RETURNING assistant_id"
# An assistant's versions, newest first; $4: metadata containment of the version.
VERSIONS_SQL = f"""
SELECT v.assistant_id, v.version, v.graph_id, v.name, v.description, v.config, v.context, v.metadata, v.created_at
FROM assistant_versions v JOIN assistants a ON a.assistant_id = v.assistant_id
WHERE v.assistant_id = $1 AND {visible_sql(2, 3, "a.")} AND ($4::jsonb IS NULL OR v.metadata @> $4::jsonb)
ORDER BY v.version DESC LIMIT $5 OFFSET $6
"""


def _filters(contains: int, exact: int) -> str:
    """A search's filters: graph ($1), metadata containment ($2), name ($3); the authorization filter at ``contains``, ``exact``."""
    return f"""
WHERE ($1::text IS NULL OR graph_id = $1)
  AND ($2::jsonb IS NULL OR metadata @> $2::jsonb)
  AND ($3::text IS NULL OR name = $3)
  AND {visible_sql(contains, exact)}
"""


def _search_sql(sort_by: str, descending: bool) -> str:
    order = "DESC" if descending else "ASC"
    return f"SELECT {_COLUMNS} FROM assistants {_filters(6, 7)} ORDER BY {sort_by} {order}, assistant_id {order} LIMIT $4 OFFSET $5"


SEARCH_SQL = {(sort_by, descending): _search_sql(sort_by, descending) for sort_by in SORT_BY for descending in (False, True)}
COUNT_SQL = f"SELECT count(*) FROM assistants {_filters(4, 5)}"


@dataclass(frozen=True, slots=True)
class Assistant:
    """An assistant's row, or one of its versions (then ``updated_at`` is the version's ``created_at``)."""

    assistant_id: UUID
    version: int
    graph_id: str
    name: str
    description: str | None
    config: dict[str, Any]
    context: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """What a new version changes; None keeps the current value, ``metadata`` is merged (top-level keys replaced)."""

    graph_id: str | None = None
    name: str | None = None
    description: str | None = None
    config: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None


def _json(value: Any) -> dict[str, Any]:
    return dict(json.loads(value) if isinstance(value, str) else value or {})


def _assistant(row: asyncpg.Record) -> Assistant:
    return Assistant(
        row["assistant_id"], row["version"], row["graph_id"], row["name"], row["description"],
        _json(row["config"]), _json(row["context"]), _json(row["metadata"]),
        row["created_at"], row.get("updated_at") or row["created_at"],
    )


class Assistants:
    """The statements on ``assistants`` and ``assistant_versions``, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def insert(
        self, assistant_id: UUID, graph_id: str, *, name: str, description: str | None = None,
        config: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
    ) -> Assistant | None:
        """Create an assistant at version 1; None when one with this id exists already."""
        row = await self._conn.fetchrow(
            INSERT_SQL, assistant_id, graph_id, name, description,
            jsonb_text(dict(config or {}), "assistant config"), jsonb_text(dict(context or {}), "assistant context"),
            jsonb_text(dict(metadata or {}), "assistant metadata"),
        )
        return _assistant(row) if row is not None else None

    async def get(self, assistant_id: UUID, visible: Visibility | None = None) -> Assistant | None:
        row = await self._conn.fetchrow(GET_SQL, assistant_id, *visibility_args(visible))
        return _assistant(row) if row is not None else None

    async def change(self, assistant_id: UUID, change: Change, visible: Visibility | None = None) -> Assistant | None:
        """Make a new version from the current one and ``change`` and use it (in a transaction); None when not found."""
        row = await self._conn.fetchrow(LOCK_SQL, assistant_id, *visibility_args(visible))
        if row is None:
            return None
        current = _assistant(row)
        version: int = await self._conn.fetchval(NEXT_VERSION_SQL, assistant_id)
        metadata = {**current.metadata, **dict(change.metadata or {})}
        row = await self._conn.fetchrow(
            ADD_VERSION_SQL, assistant_id, version, change.graph_id or current.graph_id,
            change.name if change.name is not None else current.name,
            change.description if change.description is not None else current.description,
            jsonb_text(dict(change.config if change.config is not None else current.config), "assistant config"),
            jsonb_text(dict(change.context if change.context is not None else current.context), "assistant context"),
            jsonb_text(metadata, "assistant metadata"),
        )
        assert row is not None, "the row is locked by this transaction"
        return _assistant(row)

    async def set_latest(self, assistant_id: UUID, version: int, visible: Visibility | None = None) -> Assistant | None:
        """Use one of the assistant's versions; None when the assistant or the version is not found."""
        row = await self._conn.fetchrow(SET_LATEST_SQL, assistant_id, *visibility_args(visible), version)
        return _assistant(row) if row is not None else None

    async def delete(self, assistant_id: UUID, visible: Visibility | None = None) -> bool:
        """Delete the assistant and its versions; False when not found."""
        return await self._conn.fetchval(DELETE_SQL, assistant_id, *visibility_args(visible)) is not None

    async def versions(
        self, assistant_id: UUID, *, metadata: Mapping[str, Any] | None = None, limit: int = 10, offset: int = 0,
        visible: Visibility | None = None,
    ) -> list[Assistant]:
        """The assistant's versions, newest first (none when it is not found)."""
        rows = await self._conn.fetch(
            VERSIONS_SQL, assistant_id, *visibility_args(visible),
            jsonb_text(dict(metadata), "metadata") if metadata else None, limit, offset,
        )
        return [_assistant(row) for row in rows]

    async def search(
        self, *, graph_id: str | None = None, metadata: Mapping[str, Any] | None = None, name: str | None = None,
        sort_by: str = "created_at", descending: bool = True, limit: int = 10, offset: int = 0, visible: Visibility | None = None,
    ) -> list[Assistant]:
        if sort_by not in SORT_BY:
            raise ValueError(f"cannot sort assistants by {sort_by!r}")
        rows = await self._conn.fetch(
            SEARCH_SQL[sort_by, descending], graph_id, jsonb_text(dict(metadata), "metadata") if metadata else None, name,
            limit, offset, *visibility_args(visible),
        )
        return [_assistant(row) for row in rows]

    async def count(
        self, *, graph_id: str | None = None, metadata: Mapping[str, Any] | None = None, name: str | None = None,
        visible: Visibility | None = None,
    ) -> int:
        found: int = await self._conn.fetchval(
            COUNT_SQL, graph_id, jsonb_text(dict(metadata), "metadata") if metadata else None, name, *visibility_args(visible)
        )
        return found
