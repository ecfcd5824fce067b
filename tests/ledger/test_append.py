"""Appending: conditional heads, group commit, terminal events, bad payloads."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphledger.ledger import Conflict, InvalidPayload, Ledger, RunFinished, RunNotFound, RunRef
from graphledger.ledger.append import Writer
from graphledger.ledger.errors import InvalidEvent


async def new_run(ledger: Ledger) -> RunRef:
    thread = await ledger.create_thread()
    created = await ledger.create_run(thread, payload={"input": "hi"})
    return RunRef(thread, created.run_id)


async def count_events(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM events")


def assert_gapless(events: list[Any]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


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


async def test_conflict_says_where_the_head_is(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    await ledger.append(ref, "run.cancel_requested", {"action": "interrupt"}, expected_seq=1)
    before = await count_events(conn)
    with pytest.raises(Conflict) as info:
        await ledger.append(ref, "run.started", {}, expected_seq=1)
    assert (info.value.expected_seq, info.value.actual_seq, info.value.last_kind) == (1, 2, "run.cancel_requested")
    assert await count_events(conn) == before


async def test_nothing_after_the_terminal_event(dsn: str, ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    await ledger.append(ref, "run.succeeded", {"ok": True})
    before = await count_events(conn)
    with pytest.raises(RunFinished):
        await ledger.append(ref, "stream:values", {})
    with pytest.raises(RunFinished):
        await ledger.append(ref, "run.failed", {}, expected_seq=2)
    other = await Ledger.connect(dsn, tail=False)  # a writer that has not seen the run yet
    try:
        with pytest.raises(RunFinished):
            await other.submit(ref, "stream:values", {})
    finally:
        await other.close()
    assert await count_events(conn) == before


async def test_a_queued_terminal_event_closes_the_run_at_once(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    first = ledger.submit(ref, "stream:values", {"a": 1})
    last = ledger.submit(ref, "run.failed", {"error": "boom"})
    with pytest.raises(RunFinished):
        ledger.submit(ref, "stream:values", {"a": 2})
    await asyncio.gather(first, last)
    assert [e.kind for e in await ledger.read_run(ref)] == ["run.created", "stream:values", "run.failed"]


@pytest.mark.parametrize(
    "payload",
    [{"x": math.nan}, {"x": -math.inf}, {3: "non-string key"}, {"x": object()}, {"x": "\udcff"}, {"x": {1, 2}}],
    ids=["nan", "inf", "int-key", "object", "surrogate", "set"],
)
async def test_bad_payloads_write_nothing(ledger: Ledger, conn: asyncpg.Connection, payload: Any) -> None:
    ref = await new_run(ledger)
    before = await count_events(conn)
    with pytest.raises(InvalidPayload):
        await ledger.append(ref, "stream:values", payload)
    with pytest.raises(InvalidPayload):
        ledger.submit(ref, "stream:values", payload)
    with pytest.raises(InvalidPayload):
        await ledger.create_run(ref.thread_id, payload=payload)
    assert await count_events(conn) == before
    await ledger.append(ref, "stream:values", {"fine": True})  # the run is still usable


async def test_bad_kinds_and_unknown_runs(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    with pytest.raises(InvalidEvent):
        await ledger.append(ref, "Not A Kind", {})
    with pytest.raises(RunNotFound):
        await ledger.append(RunRef(ref.thread_id, ref.thread_id), "stream:values", {})
    with pytest.raises(RunNotFound):
        await ledger.append(RunRef(ref.thread_id, ref.thread_id), "stream:values", {}, expected_seq=0)


async def test_stored_payload_is_the_canonical_text(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    payload = {"z": 1, "a": ["ü", 1.5, None, "\u0000"], "m": {"b": True}}
    event = await ledger.append(ref, "stream:values", payload)
    stored = await conn.fetchval("SELECT data::text FROM events WHERE run_id = $1 AND seq = $2", ref.run_id, event.seq)
    assert stored == event.data == json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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


async def test_lifecycle_append_is_durable_on_return(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    event = await ledger.append(ref, "run.started", {"worker": "w1"})
    row = await conn.fetchrow("SELECT kind, data::text AS data FROM events WHERE run_id = $1 AND seq = $2", ref.run_id, event.seq)
    assert (row["kind"], row["data"]) == ("run.started", '{"worker":"w1"}')
    assert await conn.fetchval("SELECT status FROM runs WHERE run_id = $1", ref.run_id) == "running"


class LostReplyWriter(Writer):
    """Commits, then loses the reply, as when the connection dies right after COMMIT."""

    lose_next = 0

    async def _execute(self, conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[asyncpg.Record]:
        rows = await super()._execute(conn, sql, args)
        if self.lose_next:
            self.lose_next -= 1
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
