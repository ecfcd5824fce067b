"""Notifications sent after a commit: a quiet transaction's appends, announced by Hints, coalesced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.events import Event
from graphledger.ledger.hints import Hints, payloads
from graphledger.ledger.statement import CHANNEL, NOTIFY_RUNS_PER_MESSAGE, RUNS_CHANNEL


@pytest.fixture
async def heard(dsn: str) -> AsyncIterator[asyncio.Queue[tuple[str, str]]]:
    """Every notification on the two channels, as (channel, payload)."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listener = await asyncpg.connect(dsn)
    for channel in (CHANNEL, RUNS_CHANNEL):
        await listener.add_listener(channel, lambda _c, _p, channel, payload: queue.put_nowait((channel, payload)))
    try:
        yield queue
    finally:
        await listener.close()


async def drain(queue: asyncio.Queue[tuple[str, str]], wait: float = 0.3) -> list[tuple[str, str]]:
    await asyncio.sleep(wait)
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def create_quietly(ledger: Ledger, thread_id: uuid.UUID) -> Event:
    async with ledger.transaction(notify=False) as tx:
        return await tx.create_run(RunRef(thread_id, uuid.uuid4()), {})


async def test_a_quiet_transaction_is_announced_once_after_its_commit(ledger: Ledger, heard: asyncio.Queue[tuple[str, str]]) -> None:
    created = await create_quietly(ledger, await ledger.create_thread())
    (stored,) = await ledger.read_run(RunRef(created.thread_id, created.run_id))
    assert stored.hash == created.hash  # chained on the genesis head without reading it
    assert sorted(await drain(heard)) == [(CHANNEL, f"{created.run_id}:1"), (RUNS_CHANNEL, "")]


async def test_hints_queued_together_go_in_one_notification(
    dsn: str, ledger: Ledger, heard: asyncio.Queue[tuple[str, str]]
) -> None:
    thread_id = await ledger.create_thread()
    created = [await create_quietly(ledger, thread_id) for _ in range(3)]
    await drain(heard)
    hints = Hints(lambda: asyncpg.connect(dsn))
    try:
        for event in created:
            hints.send([event])  # no await between them: one statement carries all three
        items = await drain(heard)
    finally:
        await hints.close()
    assert [channel for channel, _ in items].count(RUNS_CHANNEL) == 1
    (events_payload,) = [payload for channel, payload in items if channel == CHANNEL]
    assert sorted(events_payload.split(",")) == sorted(f"{e.run_id}:1" for e in created)


def _event(run_id: uuid.UUID, seq: int, kind: str) -> Event:
    return Event(uuid.uuid4(), run_id, seq, kind, "{}", None, b"")  # type: ignore[arg-type]


def test_payloads_carry_each_runs_last_seq_and_whether_the_queue_changed() -> None:
    run = uuid.uuid4()
    assert payloads([_event(run, 2, "run.started"), _event(run, 3, "stream:values")]) == ([f"{run}:3"], False)
    assert payloads([_event(run, 1, "run.created")]) == ([f"{run}:1"], True)
    assert payloads([_event(run, 7, "run.interrupted"), _event(run, 6, "run.cancel_requested")]) == ([f"{run}:7"], True)
    many = [_event(uuid.uuid4(), 1, "stream:values") for _ in range(NOTIFY_RUNS_PER_MESSAGE + 1)]
    parts, changed = payloads(many)
    assert [len(p.split(",")) for p in parts] == [NOTIFY_RUNS_PER_MESSAGE, 1] and not changed
