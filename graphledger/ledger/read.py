"""Reads of the log: a run from any seq, a thread in order, and the gap-safe global feed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg
from asyncpg.cursor import CursorFactory

from graphledger.ledger.errors import InvalidEvent
from graphledger.ledger.events import Event, RunRef

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
"""A connection of its own or one lent by a pool: the reads take either."""

_COLUMNS = "global_position, thread_id, run_id, seq, kind, data, ts, tx::text AS tx, hash"

READ_RUN_SQL = f"""
SELECT {_COLUMNS} FROM events
WHERE thread_id = $1 AND run_id = $2 AND seq > $3
ORDER BY seq LIMIT $4
"""

READ_RUN_KINDS_SQL = f"""
SELECT {_COLUMNS} FROM events
WHERE thread_id = $1 AND run_id = $2 AND seq > $3 AND kind LIKE ANY($5::text[])
ORDER BY seq LIMIT $4
"""

READ_RUNS_SQL = f"""
SELECT e.* FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS r(thread_id, run_id, after_seq)
CROSS JOIN LATERAL (
    SELECT {_COLUMNS} FROM events e
    WHERE e.thread_id = r.thread_id AND e.run_id = r.run_id AND e.seq > r.after_seq
    ORDER BY e.seq LIMIT $4
) e
"""

READ_THREAD_SQL = f"""
SELECT {_COLUMNS} FROM events
WHERE thread_id = $1 AND global_position > $2
ORDER BY global_position LIMIT $3
"""

# Only rows of transactions older than every transaction still running are
# returned (tx < xmin of the current snapshot). A row whose transaction commits
# late carries a tx below the cursor's only if that transaction was running
# when the cursor passed -- which this condition rules out -- so the feed never
# skips a row and needs no timeout.
# ORDER BY names the table's column: a bare `tx` would be the output column, the
# text form (`tx::text AS tx`), and '1000' sorts before '999'.
READ_FEED_SQL = f"""
SELECT {_COLUMNS} FROM events
WHERE (tx, global_position) > ($1::text::xid8, $2)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY events.tx, events.global_position LIMIT $3
"""

# One thread's part of the global feed, in feed order, with the same rule. The
# snapshot's xmin comes back with the rows (one statement, one snapshot): every
# row of the thread below it has then been returned, so a follower that read
# them all can start its next scan there ($4, the floor) and never scans the
# whole log after an old cursor again.
READ_THREAD_FEED_SQL = f"""
WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT s.xmin::text AS floor, e.* FROM s LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM events
    WHERE thread_id = $1 AND tx >= $4::text::xid8
      AND (tx, global_position) > ($2::text::xid8, $3)
      AND tx < s.xmin
    ORDER BY events.tx, events.global_position LIMIT $5
) e ON true
"""
FEED_EVENT_SQL = "SELECT 1 FROM events WHERE thread_id = $1 AND global_position = $2 AND tx = $3::text::xid8"
FEED_NOW_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"

FEED_HASHES_SQL = """
SELECT tx, global_position, thread_id, run_id, seq, hash FROM events
WHERE (tx, global_position) > ($1::text::xid8, $2)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx, global_position LIMIT $3
"""
"""The feed's next rows as the Merkle log takes them for leaves (its statement composes this one)."""

RUN_ROWS_SQL = "SELECT seq, kind, data, ts, hash FROM events WHERE thread_id = $1 AND run_id = $2 ORDER BY seq"

LAST_OF_KIND_SQL = f"""
SELECT {_COLUMNS} FROM events WHERE thread_id = $1 AND run_id = $2 AND kind = $3 ORDER BY seq DESC LIMIT 1
"""


def to_event(row: asyncpg.Record) -> Event:
    return Event(
        row["thread_id"], row["run_id"], row["seq"], row["kind"], row["data"], row["ts"], bytes(row["hash"]),
        row["global_position"], int(row["tx"]),
    )


def kind_pattern(kind: str) -> str:
    """The ``LIKE`` pattern of a kind filter: exact, or a prefix when it ends with ``*`` (``stream:*``)."""
    escaped = kind.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped[:-1] + "%" if escaped.endswith("*") else escaped


async def read_run(
    conn: Connection, ref: RunRef, after_seq: int = 0, limit: int = 10_000, *, kinds: Sequence[str] | None = None
) -> list[Event]:
    """Events of one run with ``seq > after_seq``, in order; only those of ``kinds`` when given (see :func:`kind_pattern`)."""
    if kinds is None:
        rows = await conn.fetch(READ_RUN_SQL, ref.thread_id, ref.run_id, after_seq, limit)
    else:
        rows = await conn.fetch(READ_RUN_KINDS_SQL, ref.thread_id, ref.run_id, after_seq, limit, [kind_pattern(k) for k in kinds])
    return [to_event(r) for r in rows]


async def iter_run(conn: Connection, ref: RunRef, after_seq: int = 0, page: int = 5_000) -> AsyncIterator[Event]:
    """Every event of a run after ``after_seq``, in order, read ``page`` at a time (a run of any length)."""
    while True:
        batch = await read_run(conn, ref, after_seq, page)
        for event in batch:
            yield event
        if len(batch) < page:
            return
        after_seq = batch[-1].seq


async def read_runs(conn: Connection, cursors: Sequence[tuple[RunRef, int]], limit: int) -> list[Event]:
    """For each ``(run, after_seq)``, up to ``limit`` events after it: one round trip for many runs."""
    rows = await conn.fetch(
        READ_RUNS_SQL,
        [ref.thread_id for ref, _ in cursors],
        [ref.run_id for ref, _ in cursors],
        [after for _, after in cursors],
        limit,
    )
    return [to_event(r) for r in rows]


HASHES_AT_SQL = """
SELECT e.thread_id, e.run_id, e.hash FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS k(thread_id, run_id, seq)
JOIN events e ON e.thread_id = k.thread_id AND e.run_id = k.run_id AND e.seq = k.seq
"""


async def hashes_at(conn: Connection, points: Sequence[tuple[RunRef, int]]) -> dict[RunRef, bytes]:
    """The chain hash each run's log holds at the given seq (runs without an event there are missing)."""
    rows = await conn.fetch(
        HASHES_AT_SQL, [ref.thread_id for ref, _ in points], [ref.run_id for ref, _ in points], [seq for _, seq in points]
    )
    return {RunRef(row["thread_id"], row["run_id"]): bytes(row["hash"]) for row in rows}


async def read_thread(conn: Connection, thread_id: UUID, after_position: int = 0, limit: int = 10_000) -> list[Event]:
    """Events of one thread in log order, after a global position."""
    return [to_event(r) for r in await conn.fetch(READ_THREAD_SQL, thread_id, after_position, limit)]


@dataclass(frozen=True, slots=True)
class FeedCursor:
    """A position in the global feed: the last ``(tx, global_position)`` consumed."""

    tx: int = 0
    position: int = 0

    def __str__(self) -> str:
        return f"{self.tx}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> FeedCursor:
        """Parse ``"<tx>:<position>"`` (as printed by ``str``)."""
        try:
            tx, position = text.split(":")
            cursor = cls(int(tx), int(position))
        except ValueError:
            raise InvalidEvent(f"invalid feed cursor {text!r}: expected <tx>:<position>") from None
        if cursor.tx < 0 or cursor.position < 0:
            raise InvalidEvent(f"invalid feed cursor {text!r}: negative")
        return cursor


async def read_feed(conn: Connection, after: FeedCursor = FeedCursor(), limit: int = 10_000) -> tuple[list[Event], FeedCursor]:
    """The next events of the whole log in commit-safe order, and the cursor after them."""
    events = [to_event(r) for r in await conn.fetch(READ_FEED_SQL, str(after.tx), after.position, limit)]
    cursor = FeedCursor(events[-1].tx, events[-1].global_position) if events else after
    return events, cursor


async def read_thread_feed(
    conn: Connection, thread_id: UUID, after: FeedCursor, floor: int = 0, limit: int = 1_000
) -> tuple[list[Event], int]:
    """The thread's next events in feed order after ``after`` (none with ``tx`` below ``floor``), and the next floor.

    The next floor is the snapshot's xmin when fewer than ``limit`` rows came
    back (every row of the thread below it has been read), else ``floor``.
    """
    rows = await conn.fetch(READ_THREAD_FEED_SQL, thread_id, str(after.tx), after.position, str(floor), limit)
    events = [to_event(r) for r in rows if r["global_position"] is not None]
    return events, (int(rows[0]["floor"]) if len(events) < limit else floor)


async def feed_event_exists(conn: Connection, thread_id: UUID, cursor: FeedCursor) -> bool:
    """Whether ``cursor`` names an event of the thread (its ``tx`` and global position)."""
    return await conn.fetchval(FEED_EVENT_SQL, thread_id, cursor.position, str(cursor.tx)) is not None


async def feed_now(conn: Connection) -> FeedCursor:
    """A cursor at the feed's present: every transaction older than the oldest one still running is behind it."""
    xmin = int(await conn.fetchval(FEED_NOW_SQL))
    return FeedCursor(xmin - 1, 2**63 - 1)


async def last_of_kind(conn: Connection, ref: RunRef, kind: str) -> Event | None:
    """The run's last event of ``kind``, if any."""
    row = await conn.fetchrow(LAST_OF_KIND_SQL, ref.thread_id, ref.run_id, kind)
    return to_event(row) if row is not None else None


# What a check of the whole log reads of each event, in feed order: only what its chain hash
# covers, with the timestamp already in the chain's text form (chain.format_ts: UTC,
# microseconds, "Z"); a timestamp that form cannot give (infinity) comes as PostgreSQL's text.
CHAIN_TS_SQL = """coalesce(to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ts::text)"""
CHAIN_ROWS_SQL = f"""
SELECT thread_id, run_id, seq, kind, data, {CHAIN_TS_SQL} AS ts, hash
FROM events
WHERE tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx, global_position
"""


async def chain_batches(conn: Connection, size: int = 5_000) -> AsyncIterator[list[asyncpg.Record]]:
    """The feed as :data:`CHAIN_ROWS_SQL` reads it, ``size`` rows at a time (inside a REPEATABLE READ transaction).

    The next batch is asked for before this one is handed over, so the
    server reads it while the caller works on this one.
    """
    cursor = await conn.cursor(CHAIN_ROWS_SQL)
    pending = asyncio.ensure_future(cursor.fetch(size))
    try:
        while True:
            batch = await pending
            if not batch:
                return
            pending = asyncio.ensure_future(cursor.fetch(size))
            await asyncio.sleep(0)  # let it send its request before the caller takes the loop
            yield batch
    finally:  # a caller that stops early: the batch asked for is read and dropped, the connection left usable
        if not pending.done():
            with contextlib.suppress(Exception):
                await pending


def run_rows(conn: Connection, ref: RunRef, prefetch: int) -> CursorFactory[asyncpg.Record]:
    """A cursor over a run's stored rows (``seq, kind, data, ts, hash``) in order; needs a transaction."""
    return conn.cursor(RUN_ROWS_SQL, ref.thread_id, ref.run_id, prefetch=prefetch)
