"""Tailing: catch up from the table, then follow live events, from this process or another."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunNotFound, RunRef
from graphledger.ledger.events import Event
from graphledger.ledger.tail import Hub


@pytest.fixture(params=["local", "remote"])
async def appender(request: pytest.FixtureRequest, ledger: Ledger, dsn: str) -> AsyncIterator[Ledger]:
    """The ledger that writes: the tailing process itself, or another one (notifications only)."""
    if request.param == "local":
        yield ledger
        return
    other = await Ledger.connect(dsn, tail=False)
    try:
        yield other
    finally:
        await other.close()


async def new_run(ledger: Ledger) -> RunRef:
    thread = await ledger.create_thread()
    created = await ledger.create_run(thread)
    return RunRef(thread, created.run_id)


async def collect(ledger: Ledger, run: RunRef, after_seq: int = 0) -> list[Event]:
    return [e async for e in ledger.tail(run.run_id, after_seq)]


async def stream(appender: Ledger, ref: RunRef, n: int, *, jitter: bool = True) -> None:
    for i in range(n):
        future = appender.submit(ref, "stream:messages", {"i": i})
        if jitter and random.random() < 0.2:
            await future
        await asyncio.sleep(0.0005 if jitter and random.random() < 0.3 else 0)
    await appender.append(ref, "run.succeeded", {"n": n})


def assert_complete(events: list[Event], n: int, after_seq: int = 0) -> None:
    assert [e.seq for e in events] == list(range(after_seq + 1, n + 3))
    assert events[-1].kind == "run.succeeded"


async def test_twenty_concurrent_runs_every_event_once_in_order(ledger: Ledger, appender: Ledger) -> None:
    refs = [await new_run(appender) for _ in range(20)]
    tails = [asyncio.create_task(collect(ledger, ref)) for ref in refs for _ in range(2)]
    await asyncio.sleep(0.05)
    await asyncio.gather(*(stream(appender, ref, 100) for ref in refs))
    results = await asyncio.wait_for(asyncio.gather(*tails), 30)
    for events in results:
        assert_complete(events, 100)


async def test_listener_killed_mid_stream(ledger: Ledger, appender: Ledger, conn: asyncpg.Connection) -> None:
    assert ledger.hub is not None
    ledger.hub.poll_interval = 3600  # only the reconnect's catch-up and notifications may deliver
    refs = [await new_run(appender) for _ in range(20)]
    tails = [asyncio.create_task(collect(ledger, ref)) for ref in refs]
    await asyncio.sleep(0.05)
    writers = asyncio.gather(*(stream(appender, ref, 150) for ref in refs))
    reconnects = ledger.hub.reconnects
    for _ in range(2):
        await asyncio.sleep(0.05)
        pid = ledger.hub.listener_pid
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        while ledger.hub.listener_pid == pid or not ledger.hub.listening.is_set():
            await asyncio.sleep(0.01)  # reconnected: kill the new listener next
    await writers
    results = await asyncio.wait_for(asyncio.gather(*tails), 30)
    for events in results:
        assert_complete(events, 150)
    assert ledger.hub.reconnects >= reconnects + 1


async def test_tail_of_a_finished_run_replays_and_ends(ledger: Ledger, appender: Ledger) -> None:
    ref = await new_run(appender)
    await stream(appender, ref, 30, jitter=False)
    assert_complete(await collect(ledger, ref), 30)
    assert_complete(await collect(ledger, ref, after_seq=17), 30, after_seq=17)
    assert await collect(ledger, ref, after_seq=32) == []


async def test_a_live_tail_needs_no_head_lookup_and_misses_nothing(
    ledger: Ledger, appender: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = await new_run(appender)
    started = await appender.append(ref, "run.started", {})  # appended before the tail subscribes: read from the table
    assert ledger.hub is not None

    async def no_head(run_id: object) -> None:
        raise AssertionError("a live tail looked the head up")

    monkeypatch.setattr(ledger.hub, "head", no_head)
    tail = asyncio.create_task(asyncio.wait_for(_collect_live(ledger, ref, 1), 30))
    await asyncio.sleep(0.05)
    await stream(appender, ref, 50)
    events = await tail
    assert (events[0].seq, events[0].hash) == (started.seq, started.hash)
    assert [e.seq for e in events] == list(range(2, 50 + 4))
    assert events[-1].kind == "run.succeeded"


async def _collect_live(ledger: Ledger, ref: RunRef, after_seq: int) -> list[Event]:
    return [e async for e in ledger.tail(ref, after_seq, live=True)]


async def test_thousand_subscribers_use_two_connections(ledger: Ledger, appender: Ledger, conn: asyncpg.Connection) -> None:
    refs = [await new_run(appender) for _ in range(50)]
    tails = [asyncio.create_task(collect(ledger, refs[i % 50])) for i in range(1000)]
    assert ledger.hub is not None
    while ledger.hub.subscribers < 1000:
        await asyncio.sleep(0.01)
    writers = asyncio.gather(*(stream(appender, ref, 40) for ref in refs))
    await asyncio.sleep(0.1)
    used = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        ledger.hub.application_name,
    )
    await writers
    results = await asyncio.wait_for(asyncio.gather(*tails), 60)
    assert 1 <= used <= 2
    for events in results:
        assert_complete(events, 40)


async def test_a_slow_subscriber_holds_a_bounded_queue_and_misses_nothing(ledger: Ledger, appender: Ledger) -> None:
    assert ledger.hub is not None
    ledger.hub.queue_size = 50
    ref = await new_run(appender)
    sub = ledger.hub.subscribe(ref, 0)
    fast = asyncio.create_task(collect(ledger, ref))  # keeps up, beside the slow one
    try:
        for i in range(500):
            await appender.submit(ref, "stream:messages", {"i": i})  # one flush each, as at token pace
            if i == 100:
                while not sub.stalled:
                    await asyncio.sleep(0.01)
                before = ledger.hub.reads
        await appender.append(ref, "run.succeeded", {"n": 500})
        assert_complete(await asyncio.wait_for(fast, 30), 500)
        assert sub.queue.qsize() <= 50
        if appender is ledger:  # events this process commits need no read, even beside a stalled subscriber
            assert ledger.hub.reads - before <= 2
        events = [e async for e in sub]
    finally:
        ledger.hub.unsubscribe(sub)
    assert_complete(events, 500)


async def test_events_this_process_commits_reach_its_subscribers_without_a_read(ledger: Ledger) -> None:
    """The writer's own notifications are no reason to read: publish() hands the events over."""
    assert ledger.hub is not None
    ref = await new_run(ledger)
    tail = asyncio.create_task(collect(ledger, ref))
    while ledger.hub.subscribers < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the subscription's first read is done
    before = ledger.hub.reads
    for i in range(100):
        await ledger.submit(ref, "stream:messages", {"i": i})  # one flush, one notification each
    await ledger.append(ref, "run.succeeded", {})
    assert_complete(await asyncio.wait_for(tail, 30), 100)
    assert ledger.hub.reads - before <= 2  # at most the slow poll's, never one per flush


async def test_unknown_run(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    with pytest.raises(RunNotFound):
        await collect(ledger, RunRef(ref.thread_id, ref.thread_id))


async def test_the_slow_poll_delivers_when_notifications_are_lost(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hints are only hints: a subscriber that never hears one still gets every event."""
    monkeypatch.setattr(Hub, "_on_notify", lambda self, *args: None)  # every notification lost
    deaf = await Ledger.connect(dsn, poll_interval=0.2)
    writer = await Ledger.connect(dsn, tail=False)
    try:
        ref = await new_run(writer)
        tail = asyncio.create_task(collect(deaf, ref))
        await asyncio.sleep(0.05)
        await stream(writer, ref, 60)
        events = await asyncio.wait_for(tail, 10)
    finally:
        await writer.close()
        await deaf.close()
    assert_complete(events, 60)


async def test_close_returns_even_when_the_listener_loses_its_cancellation(dsn: str, conn: asyncpg.Connection) -> None:
    """Python 3.11's wait_for (inside asyncpg.connect) can lose a cancellation; the hub must stop all the same."""
    ledger = await Ledger.connect(dsn, poll_interval=0.5)
    hub = ledger.hub
    assert hub is not None
    connecting = asyncio.Event()
    real = hub._connect

    async def connect_losing_the_cancel() -> asyncpg.Connection:
        connecting.set()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass  # lost, as the race does
        return await real()

    hub._connect = connect_losing_the_cancel  # type: ignore[method-assign]
    hub.ping_interval = 3600  # no ping timeout will come to stop a listener that runs on
    await conn.execute("SELECT pg_terminate_backend($1)", hub.listener_pid)  # the listener reconnects
    await asyncio.wait_for(connecting.wait(), 30)
    tasks = list(hub._tasks)
    try:
        await asyncio.wait_for(ledger.close(), 60)  # a hang guard, not a measurement
    finally:
        for task in tasks:  # should this fail, leave no listener running (and holding the database)
            task.cancel()
