"""Reading a run, a thread, and the gap-safe global feed."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.errors import InvalidEvent
from graphledger.ledger.events import NewEvent
from graphledger.ledger.read import FeedCursor
from tests._db import raw


async def new_run(ledger: Ledger, thread=None) -> RunRef:  # type: ignore[no-untyped-def]
    thread = thread or await ledger.create_thread()
    created = await ledger.create_run(thread)
    return RunRef(thread, created.run_id)


async def test_read_run_from_any_seq(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    await asyncio.gather(*(ledger.submit(ref, "stream:values", {"i": i}) for i in range(10)))
    assert [e.seq for e in await ledger.read_run(ref, after_seq=7)] == [8, 9, 10, 11]
    assert [e.seq for e in await ledger.read_run(ref, after_seq=2, limit=3)] == [3, 4, 5]
    assert await ledger.read_run(ref, after_seq=11) == []


async def test_iterating_a_run_reads_page_after_page(ledger: Ledger) -> None:
    from graphledger.ledger.read import iter_run

    ref = await new_run(ledger)
    await asyncio.gather(*(ledger.submit(ref, "stream:values", {"i": i}) for i in range(10)))
    async with raw(ledger) as conn:
        for page in (1, 3, 11, 12):  # pages that end exactly at the last event, or before it
            assert [e.seq async for e in iter_run(conn, ref, page=page)] == list(range(1, 12))
        assert [e.seq async for e in iter_run(conn, ref, 4, page=3)] == list(range(5, 12))
    assert [e.seq async for e in ledger.iter_run(ref, 9)] == [10, 11]


async def test_read_thread_in_log_order(ledger: Ledger) -> None:
    thread = await ledger.create_thread()
    first, second = await new_run(ledger, thread), await new_run(ledger, thread)
    await ledger.append(first, "stream:values", {"n": 1})
    await ledger.append(second, "stream:values", {"n": 2})
    await ledger.append(first, "run.succeeded", {})
    events = await ledger.read_thread(thread)
    assert [(e.run_id, e.seq) for e in events] == [
        (first.run_id, 1), (second.run_id, 1), (first.run_id, 2), (second.run_id, 2), (first.run_id, 3)
    ]
    assert [e.global_position for e in events] == sorted(e.global_position for e in events)
    assert await ledger.read_thread(thread, after_position=events[2].global_position) == events[3:]


async def drain_feed(ledger: Ledger, cursor: FeedCursor) -> tuple[list[int], FeedCursor]:
    seen: list[int] = []
    while True:
        events, cursor = await ledger.read_feed(cursor, limit=7)
        if not events:
            return seen, cursor
        seen.extend(e.global_position for e in events)


async def test_feed_never_skips_a_late_committing_transaction(ledger: Ledger, dsn: str, conn: asyncpg.Connection) -> None:
    early, late = await new_run(ledger), await new_run(ledger)
    seen, cursor = await drain_feed(ledger, FeedCursor())

    async with ledger.transaction() as tx:
        # This transaction takes its position (and xid) first but commits last.
        await tx.append(late, [NewEvent.of("stream:values", {"slow": True})], expected_seq=1)
        await ledger.append(early, "stream:values", {"fast": True})
        more, cursor = await drain_feed(ledger, cursor)
        assert more == [], "rows of transactions newer than a running one must wait"
    more, cursor = await drain_feed(ledger, cursor)
    seen.extend(more)
    all_positions = await conn.fetch("SELECT global_position FROM events ORDER BY tx, global_position")
    assert seen == [r["global_position"] for r in all_positions]
    assert len(set(seen)) == len(seen)


async def test_feed_under_concurrent_writers_returns_every_event_once(ledger: Ledger, dsn: str, conn: asyncpg.Connection) -> None:
    refs = [await new_run(ledger) for _ in range(10)]
    writers = [await Ledger.connect(dsn, tail=False, max_delay=0.001) for _ in range(3)]
    seen, cursor = await drain_feed(ledger, FeedCursor())
    stop = asyncio.Event()

    async def consume() -> None:
        nonlocal cursor
        while not stop.is_set():
            more, cursor = await drain_feed(ledger, cursor)
            seen.extend(more)
            await asyncio.sleep(0.001)

    consumer = asyncio.create_task(consume())
    try:
        await asyncio.gather(
            *(w.submit(ref, "stream:values", {"i": i}) for i in range(40) for w in writers for ref in refs)
        )
    finally:
        for w in writers:
            await w.close()
    stop.set()
    await consumer
    more, _ = await drain_feed(ledger, cursor)
    seen.extend(more)
    total = await conn.fetchval("SELECT count(*) FROM events")
    assert len(seen) == len(set(seen)) == total


ADVANCE_SQL = """
DO $$
BEGIN
    FOR i IN 1..{count} LOOP
        PERFORM pg_current_xact_id();  -- takes a transaction id
        COMMIT;
    END LOOP;
END $$
"""
ADVANCE_AT_MOST = 3_000_000  # transaction ids a test may burn to reach the next power of ten (seconds, not minutes)


async def across_a_power_of_ten(ledger: Ledger, conn: asyncpg.Connection, ref: RunRef) -> tuple[int, bool]:
    """Append events to ``ref`` whose transaction ids cross a power of ten; the power, and whether the ids are real.

    The cluster's transaction counter is advanced to just below the next power
    of ten by committing empty transactions, then each event is appended in a
    transaction of its own. On a server whose counter is too far from the next
    power (a long-lived DATABASE_URL), the events are inserted with the ids of
    transactions that crossed the power below instead (they ended long ago).
    """
    now = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
    power = 10 ** len(str(now))
    if power - now <= ADVANCE_AT_MOST:
        await conn.execute(ADVANCE_SQL.format(count=max(1, power - now - 4)))
        for i in range(40):
            event = await ledger.append(ref, "stream:values", {"i": i})
            if int(await conn.fetchval("SELECT tx::text FROM events WHERE run_id = $1 AND seq = $2", ref.run_id, event.seq)) >= power + 2:
                return power, True
        raise AssertionError(f"40 transactions did not cross {power}")
    power //= 10
    last = await conn.fetchrow("SELECT seq, hash FROM events WHERE run_id = $1 ORDER BY seq DESC LIMIT 1", ref.run_id)
    for i, tx in enumerate(range(power - 3, power + 3)):
        await conn.execute(
            "INSERT INTO events (thread_id, run_id, seq, kind, data, ts, tx, hash) "
            "VALUES ($1, $2, $3, 'stream:values', '{}', now(), $4::text::xid8, $5)",
            ref.thread_id, ref.run_id, last["seq"] + 1 + i, str(tx), bytes(last["hash"]),
        )
    return power, False


async def test_feed_compares_transaction_ids_as_numbers_not_text(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    power, real = await across_a_power_of_ten(ledger, conn, ref)
    rows = await conn.fetch(
        "SELECT tx::text AS tx, global_position FROM events WHERE run_id = $1 AND seq > 1 ORDER BY events.tx, global_position", ref.run_id
    )
    ids = [int(r["tx"]) for r in rows]
    assert min(ids) < power <= max(ids)
    assert sorted(r["tx"] for r in rows) != [r["tx"] for r in rows]  # as text, '10000' < '9999': the order the feed must not use
    expected = [r["global_position"] for r in rows]
    start = FeedCursor(ids[0] - 1, 0)
    for limit in (1, 3, 1000):  # one event a page crosses the power between two pages; a big page crosses it inside
        seen: list[int] = []
        cursor = start
        while True:
            events, cursor = await ledger.read_feed(cursor, limit=limit)
            if not events:
                break
            seen.extend(e.global_position for e in events if e.run_id == ref.run_id)
            assert [e.tx for e in events] == sorted(e.tx for e in events)
        assert seen == expected, limit
    if real:  # leaves take the feed's order too (forged ids may sort under leaves already given)
        async with ledger.session() as session:
            await session.log.grow()
            leaves = await session.log.run_leaves(ref.thread_id, ref.run_id)
        positions = dict(await conn.fetch("SELECT seq, global_position FROM events WHERE run_id = $1 AND seq > 1", ref.run_id))
        assert [positions[seq] for seq in sorted(positions, key=leaves.__getitem__)] == expected


@pytest.mark.parametrize("text", ["", "1", "a:b", "1:2:3", "-1:5"])
def test_bad_feed_cursors(text: str) -> None:
    with pytest.raises(InvalidEvent):
        FeedCursor.parse(text)


def test_feed_cursor_round_trips() -> None:
    assert FeedCursor.parse(str(FeedCursor(12, 34))) == FeedCursor(12, 34)


async def test_the_check_reads_timestamps_in_the_chain_s_own_text_form(conn: asyncpg.Connection) -> None:
    """The log check hashes the timestamp PostgreSQL formats (read.CHAIN_ROWS_SQL); it must be chain.format_ts's, byte for byte."""
    from datetime import datetime, timedelta, timezone

    from graphledger.ledger.chain import format_ts
    from graphledger.ledger.read import CHAIN_ROWS_SQL, CHAIN_TS_SQL

    assert f"{CHAIN_TS_SQL} AS ts" in CHAIN_ROWS_SQL
    plus5 = timezone(timedelta(hours=5, minutes=30))
    stamps = [
        datetime(1, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc), datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
        datetime(2026, 11, 29, 5, 0, tzinfo=timezone.utc), datetime(2024, 2, 29, 12, 30, 1, 7, tzinfo=plus5),
        datetime(9999, 12, 31, 23, 59, 58, 999999, tzinfo=timezone.utc), datetime.now(timezone.utc),
    ]
    for stamp in stamps:
        text = await conn.fetchval(f"SELECT {CHAIN_TS_SQL} FROM (SELECT $1::timestamptz AS ts) e", stamp)
        assert text == format_ts(stamp), stamp
