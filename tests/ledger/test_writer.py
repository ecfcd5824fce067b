"""The group-commit writer: batching, order, lost replies, killed connections, fed chunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphledger.ledger import (
    Conflict,
    Ledger,
    RunFinished,
    RunRef,
)
from graphledger.ledger.events import NewEvent
from graphledger.ledger.writer import Writer
from tests.ledger.helpers import assert_gapless, new_run


async def test_concurrent_writers_on_one_run_never_gap_or_duplicate(dsn: str, ledger: Ledger) -> None:
    ref = await new_run(ledger)
    others = [await Ledger.connect(dsn, tail=False) for _ in range(3)]
    writers = [ledger, *others]

    async def stream(w: int, led: Ledger) -> None:
        futures = [led.submit(ref, "stream:custom", {"w": w, "i": i}) for i in range(150)]
        await asyncio.gather(*futures)

    async def conditional(w: int) -> None:
        # A writer that names the head it expects, and retries on conflict.
        for i in range(20):
            while True:
                head = (await ledger.read_run(ref))[-1].seq
                try:
                    await ledger.append(ref, "stream:custom", {"w": w, "i": i}, expected_seq=head)
                    break
                except Conflict as exc:
                    assert exc.actual_seq > head

    try:
        await asyncio.gather(*(stream(w, led) for w, led in enumerate(writers)), conditional(99))
    finally:
        for led in others:
            await led.close()
    events = await ledger.read_run(ref)
    assert_gapless(events)
    payloads = [e.value for e in events[1:]]
    assert len(payloads) == 4 * 150 + 20
    assert len({(p["w"], p["i"]) for p in payloads}) == len(payloads)
    for w in (0, 1, 2, 3, 99):
        mine = [p["i"] for p in payloads if p["w"] == w]
        assert mine == sorted(mine), f"writer {w}'s events were reordered"
    assert (await ledger.verify(ref)).ok


async def test_a_queued_terminal_event_closes_the_run_at_once(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    first = ledger.submit(ref, "stream:values", {"a": 1})
    last = ledger.submit(ref, "run.failed", {"error": "boom"})
    with pytest.raises(RunFinished):
        ledger.submit(ref, "stream:values", {"a": 2})
    await asyncio.gather(first, last)
    assert [e.kind for e in await ledger.read_run(ref)] == ["run.created", "stream:values", "run.failed"]


async def test_group_commit_batches_many_runs_per_flush(ledger: Ledger) -> None:
    refs = [await new_run(ledger) for _ in range(50)]
    flushes = ledger.writer.flushes
    futures = [ledger.submit(ref, "stream:messages", {"token": i}) for i in range(20) for ref in refs]
    await asyncio.gather(*futures)
    assert ledger.writer.flushes - flushes <= len(futures) // 20
    for ref in refs:
        events = await ledger.read_run(ref)
        assert_gapless(events)
        assert [e.value["token"] for e in events[1:]] == list(range(20))


class LostReplyWriter(Writer):
    """Commits, then loses the reply, as when the connection dies right after COMMIT."""

    lose_next = 0
    meanwhile: Callable[[], Awaitable[None]] | None = None  # done after the commit, before the writer learns its outcome

    async def _execute(self, conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[asyncpg.Record]:
        rows = await super()._execute(conn, sql, args)
        if self.lose_next:
            self.lose_next -= 1
            if self.meanwhile is not None:
                await self.meanwhile()
            raise asyncpg.ConnectionDoesNotExistError("connection lost after commit")
        return rows


async def test_a_lost_reply_after_commit_is_not_written_twice(dsn: str) -> None:
    led = await Ledger.connect(dsn, tail=False, writer_class=LostReplyWriter)
    try:
        ref = await new_run(led)
        assert isinstance(led.writer, LostReplyWriter)
        led.writer.lose_next = 2
        futures = [led.submit(ref, "stream:values", {"i": i}) for i in range(40)]
        results = await asyncio.gather(*futures)
        events = await led.read_run(ref)
        assert_gapless(events)
        assert [e.value["i"] for e in events[1:]] == list(range(40))
        assert [r.seq for r in results] == [e.seq for e in events[1:]]
    finally:
        await led.close()


@contextlib.asynccontextmanager
async def lost_reply_ledger(dsn: str) -> AsyncIterator[tuple[Ledger, LostReplyWriter]]:
    led = await Ledger.connect(dsn, tail=False, writer_class=LostReplyWriter)
    try:
        assert isinstance(led.writer, LostReplyWriter)
        yield led, led.writer
    finally:
        await led.close()


async def append_elsewhere(led: Ledger, ref: RunRef, kind: str, payload: dict[str, Any]) -> None:
    """An append in a transaction of its own, as a cancel, a note or the reaper makes."""
    async with led.transaction() as tx:
        await tx.append(ref, [NewEvent.of(kind, payload)])


async def test_a_lost_reply_after_commit_is_not_written_twice_when_another_append_follows_it(dsn: str) -> None:
    async with lost_reply_ledger(dsn) as (led, writer):
        ref = await new_run(led)
        writer.lose_next = 1
        writer.meanwhile = lambda: append_elsewhere(led, ref, "run.cancel_requested", {"action": "interrupt"})
        ours = await asyncio.gather(*[led.submit(ref, "stream:values", {"i": i}) for i in range(5)])
        later = await led.append(ref, "stream:values", {"i": 5})
        events = await led.read_run(ref)
        assert_gapless(events)
        assert [e.kind for e in events] == ["run.created", *["stream:values"] * 5, "run.cancel_requested", "stream:values"]
        assert [e.value.get("i") for e in events[1:6]] == list(range(5)) and events[-1].value == {"i": 5}
        assert [e.seq for e in ours] == [2, 3, 4, 5, 6] and later.seq == 8
        assert (await led.verify(ref)).ok


async def test_a_lost_reply_after_commit_is_settled_when_another_append_ended_the_run_after_it(dsn: str) -> None:
    async with lost_reply_ledger(dsn) as (led, writer):
        ref = await new_run(led)
        writer.lose_next = 1
        writer.meanwhile = lambda: append_elsewhere(led, ref, "run.failed", {"error": {"type": "LeaseExpired", "message": "reaped"}})
        ours = await asyncio.gather(*[led.submit(ref, "stream:values", {"i": i}) for i in range(3)])
        assert [e.seq for e in ours] == [2, 3, 4]  # committed before the run ended: settled as written
        with pytest.raises(RunFinished):
            await led.append(ref, "stream:values", {"i": 3})
        events = await led.read_run(ref)
        assert [e.kind for e in events] == ["run.created", *["stream:values"] * 3, "run.failed"]


async def test_a_lost_reply_after_the_terminal_event_committed_returns_the_event(dsn: str) -> None:
    async with lost_reply_ledger(dsn) as (led, writer):
        ref = await new_run(led)
        writer.lose_next = 1
        end = await led.append(ref, "run.succeeded", {})
        assert end.seq == 2 and end.kind == "run.succeeded"
        assert [e.kind for e in await led.read_run(ref)] == ["run.created", "run.succeeded"]


async def test_writer_survives_its_connection_being_killed(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    futures = []
    for i in range(300):
        futures.append(ledger.submit(ref, "stream:values", {"i": i}))
        if i in (100, 200):
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'graphledger'"
            )
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    events = await ledger.read_run(ref)
    assert_gapless(events)
    assert [e.value["i"] for e in events[1:]] == list(range(300))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=12))
async def test_interleaved_streams_stay_ordered_and_gapless(ledger: Ledger, plan: list[tuple[int, int]]) -> None:
    refs = [await new_run(ledger) for _ in range(4)]
    sent: dict[int, list[int]] = {i: [] for i in range(4)}
    futures = []
    counter = 0
    for run, n in plan:
        for _ in range(n):
            futures.append(ledger.submit(refs[run], "stream:values", {"n": counter}))
            sent[run].append(counter)
            counter += 1
        await asyncio.sleep(0)
    await asyncio.gather(*futures)
    for run, ref in enumerate(refs):
        events = await ledger.read_run(ref)
        assert_gapless(events)
        assert [e.value["n"] for e in events[1:]] == sent[run]


async def test_fed_chunks_are_durable_with_the_next_awaited_event(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    for i in range(50):
        ledger.feed(ref, "stream:messages", {"i": i})
    last = await ledger.append(ref, "run.succeeded", {})
    events = await ledger.read_run(ref)
    assert_gapless(events)
    assert [e.value.get("i") for e in events[1:-1]] == list(range(50)) and last.seq == 52


async def test_fed_chunks_that_cannot_be_written_are_reported_on_the_next_call(dsn: str, ledger: Ledger) -> None:
    ref = await new_run(ledger)
    await ledger.append(ref, "run.failed", {"error": "boom"})
    other = await Ledger.connect(dsn, tail=False)  # does not know the run is finished
    try:
        other.feed(ref, "stream:messages", {"late": True})
        for _ in range(200):
            await asyncio.sleep(0.01)
            if ref in other.writer._errors:
                break
        with pytest.raises(RunFinished):
            other.feed(ref, "stream:messages", {"later": True})
    finally:
        await other.close()
    assert [e.kind for e in await ledger.read_run(ref)] == ["run.created", "run.failed"]
