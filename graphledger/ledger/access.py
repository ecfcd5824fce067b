"""The access log: who read which part of the record, when and from where; append-only and hash-chained.

Reads that a compliance review cares about (exports, event reads,
verifications, replays) are recorded here before their answer is sent. The
log is one chain over the whole table, like a run's events::

    hash_0 = 32 zero bytes
    header_n = UTF-8 of "access\\n<position>\\n<ts>\\n"
    hash_n = SHA-256(hash_{n-1} || header_n || data_n)

with ``position`` counting from 1 without gaps, ``ts`` in the chain's text
form (see :mod:`graphledger.ledger.chain`) and ``data_n`` the entry's stored
canonical JSON. Entries are chained in one transaction that holds the head row
(``access_log_head``) locked, so two readers recorded at once take consecutive
positions and neither overwrites the other's link. A trigger refuses UPDATE,
DELETE and TRUNCATE, as on ``events``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from graphledger.ledger.chain import GENESIS, Clock, format_ts
from graphledger.ledger.events import canonical_json
from graphledger.ledger.read import Connection

LOCK_HEAD_SQL = "SELECT position, hash FROM access_log_head WHERE id = 1 FOR UPDATE"
INSERT_SQL = "INSERT INTO access_log (position, ts, data, hash) VALUES ($1, $2, $3::json, $4)"
MOVE_HEAD_SQL = "UPDATE access_log_head SET position = $1, hash = $2 WHERE id = 1"
HEAD_SQL = "SELECT position, hash FROM access_log_head WHERE id = 1"
LIST_SQL = """
SELECT position, ts, data::text AS data, hash FROM access_log
WHERE ts >= coalesce($1, '-infinity'::timestamptz) AND ts < coalesce($2, 'infinity'::timestamptz)
  AND ($3::text IS NULL OR data::jsonb -> 'actor' ->> 'identity' = $3)
ORDER BY position DESC LIMIT $4
"""
SCAN_SQL = "SELECT position, ts, data::text AS data, hash FROM access_log WHERE position > $1 ORDER BY position LIMIT $2"

_clock = Clock()


def link(previous: bytes, position: int, ts: datetime | str, data: str) -> bytes:
    """The hash of the entry at ``position`` after ``previous``."""
    stamp = ts if isinstance(ts, str) else format_ts(ts)
    return hashlib.sha256(b"".join((previous, f"access\n{position}\n{stamp}\n".encode(), data.encode()))).digest()


@dataclass(frozen=True, slots=True)
class Access:
    """One entry: ``data`` holds ``actor``, ``action``, ``resource``, ``client`` (and the stored text in ``text``)."""

    position: int
    ts: datetime
    data: dict[str, Any]
    text: str
    hash: bytes


@dataclass(frozen=True, slots=True)
class AccessReport:
    """The chain of the access log recomputed: ``first_bad`` is the first entry that does not hold."""

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str | None = None


class AccessLog:
    """The statements on ``access_log`` and its head, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def record(
        self, *, actor: Mapping[str, Any] | None, action: str, resource: Mapping[str, Any], client: str | None
    ) -> Access:
        """Append an entry; the caller's transaction holds the head until it commits (call inside one)."""
        body = {"actor": dict(actor) if actor is not None else None, "action": action, "resource": dict(resource), "client": client}
        text = canonical_json(body)
        row = await self._conn.fetchrow(LOCK_HEAD_SQL)
        assert row is not None  # the migration inserts the head row
        position = row["position"] + 1
        ts, stamp = _clock.now()
        digest = link(bytes(row["hash"]), position, stamp, text)
        await self._conn.execute(INSERT_SQL, position, ts, text, digest)
        await self._conn.execute(MOVE_HEAD_SQL, position, digest)
        return Access(position, ts, body, text, digest)

    async def list(
        self, *, since: datetime | None = None, until: datetime | None = None, identity: str | None = None, limit: int = 100
    ) -> list[Access]:
        """Entries newest first, within ``[since, until)`` and of one identity when given."""
        rows = await self._conn.fetch(LIST_SQL, since, until, identity, limit)
        return [_access(row) for row in rows]

    async def verify(self, page: int = 5_000) -> AccessReport:
        """Recompute the whole chain from the stored entries and compare it with the head (call in a snapshot)."""
        head = await self._conn.fetchrow(HEAD_SQL)
        assert head is not None
        previous, expected, count = GENESIS, 1, 0
        while True:
            rows = await self._conn.fetch(SCAN_SQL, expected - 1, page)
            for row in rows:
                entry = _access(row)
                if entry.position != expected:
                    return AccessReport(False, count, expected, f"entry {expected} is missing (found {entry.position})")
                if link(previous, entry.position, entry.ts, entry.text) != entry.hash:
                    return AccessReport(False, count, entry.position, "the entry's hash does not match the recomputed chain")
                previous, expected, count = entry.hash, expected + 1, count + 1
            if len(rows) < page:
                break
        if head["position"] != count or bytes(head["hash"]) != previous:
            return AccessReport(False, count, count + 1, f"the head names entry {head['position']}; entries after {count} were removed")
        return AccessReport(True, count)


def _access(row: Any) -> Access:
    return Access(row["position"], row["ts"], json.loads(row["data"]), row["data"], bytes(row["hash"]))
