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


@pytest.mark.parametrize("text", ["", "1", "a:b", "1:2:3", "-1:5"])
def test_bad_feed_cursors(text: str) -> None:
    with pytest.raises(InvalidEvent):
        FeedCursor.parse(text)


def test_feed_cursor_round_trips() -> None:
    assert FeedCursor.parse(str(FeedCursor(12, 34))) == FeedCursor(12, 34)
