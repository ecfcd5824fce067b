"""A run released by a stopping worker is claimed again and resumed as the next attempt of the same run."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunRef
from graphledger.projections import Projections, rebuild
from graphledger.runs import GraphRegistry, Worker, admit, join, lifecycle
from graphledger.runs.sse import frame, sse_modes
from tests._db import raw
from tests.projections.conftest import table_rows
from tests.runs.conftest import LEASE, ask

MODES = ["values", "messages-tuple", "updates"]
SLOW = {"configurable": {"tokens": 300, "token_delay": 0.01}}  # the answer streams for about 3 s


async def after_the_tool(ledger: Ledger, ref: RunRef) -> None:
    """Wait until the tool has run: the thread has checkpoints of this run, and the answer is streaming."""
    async for event in ledger.tail(ref):
        if event.kind == "stream:updates" and "tools" in event.value:
            return
        assert not event.is_terminal, event


async def thread_messages(saver: Any, ref: RunRef) -> list[tuple[str, str]]:
    state = await saver.aget_tuple({"configurable": {"thread_id": str(ref.thread_id)}})
    return [(m.type, m.id) for m in state.checkpoint["channel_values"]["messages"]]


def new_worker(ledger: Ledger, graphs: GraphRegistry, saver: Any, owner: str) -> Worker:
    return Worker(ledger, graphs, checkpointer=saver, lease_seconds=LEASE, poll_interval=0.2, owner=owner)


async def released_after_the_tool(ledger: Ledger, graphs: GraphRegistry, saver: Any) -> RunRef:
    """A run that "worker a" executed past its tool call and released as it stopped."""
    first = new_worker(ledger, graphs, saver, "worker a")
    await first.start()
    ref = (await admit(ledger, ask("count these four words", config=SLOW, stream_mode=MODES), graphs=graphs)).ref
    await after_the_tool(ledger, ref)
    await first.stop(drain_seconds=0)
    return ref


async def test_a_released_run_resumes_from_its_last_checkpoint_as_attempt_2(
    ledger: Ledger, graphs: GraphRegistry, saver: Any, conn: asyncpg.Connection
) -> None:
    ref = await released_after_the_tool(ledger, graphs, saver)
    released = (await ledger.read_run(ref))[-1]
    assert released.kind == "run.released" and released.value == {"worker": "worker a", "reason": "shutdown", "attempt": 1}
    before = await thread_messages(saver, ref)
    assert [t for t, _ in before] == ["human", "ai", "tool"]  # the answer was cut: it is in no checkpoint

    second = new_worker(ledger, graphs, saver, "worker b")
    await second.start()
    try:
        end = await asyncio.wait_for(join(ledger, ref), 60)
    finally:
        await second.stop()
    assert end.kind == "run.succeeded"
    events = await ledger.read_run(ref)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    starts = [e for e in events if e.kind == "run.started"]
    assert [(s.value["worker"], s.value["attempt"]) for s in starts] == [("worker a", 1), ("worker b", 2)]
    assert starts[1].seq == released.seq + 1
    # resumed, not started over: the question is in the thread once, the tool ran once, the answer came once
    after = await thread_messages(saver, ref)
    assert [t for t, _ in after] == ["human", "ai", "tool", "ai"] and after[:3] == before
    resumed = events[starts[1].seq - 1:]
    assert not any(e.kind == "stream:updates" and "tools" in e.value for e in resumed)
    page = await Projections(ledger).messages(ref.thread_id)
    assert [(m.type, m.message_id) for m in page.messages] == after
    status = await Projections(ledger).run_status(ref)
    assert status is not None and (status.status, status.attempt, status.worker) == ("success", 2, "worker b")
    # the stream tells the second attempt where it begins
    assert frame(starts[0], sse_modes(MODES)) is None
    assert frame(starts[1], sse_modes(MODES)) == f'event: metadata\ndata: {{"run_id":"{ref.run_id}","attempt":2}}\nid: {starts[1].seq}\n\n'.encode()
    assert (await ledger.verify(ref)).ok
    inline = await table_rows(conn)
    await rebuild(conn)
    assert await table_rows(conn) == inline


async def test_a_run_released_before_its_first_checkpoint_starts_over_with_its_input_and_secrets(
    ledger: Ledger, graphs: GraphRegistry, saver: Any
) -> None:
    request = ask("one two three", config={"configurable": {"api_key": "sk-secret", "tokens": 3}}, stream_mode=MODES)
    ref = (await admit(ledger, request, graphs=graphs)).ref
    (claimed,) = await lifecycle.claim(ledger, "worker a", limit=1, lease_seconds=LEASE)
    assert claimed.ref == ref and claimed.attempt == 1 and claimed.request.secrets == {"configurable": {"api_key": "sk-secret"}}
    assert await lifecycle.release(ledger, ref, "someone else", reason="shutdown") is None  # only the holder releases
    released = await lifecycle.release(ledger, ref, "worker a", reason="shutdown", secrets=claimed.request.secrets)
    assert released is not None and released.kind == "run.released"
    assert await lifecycle.release(ledger, ref, "worker a", reason="shutdown") is None  # released once
    async with raw(ledger) as c:
        assert await c.fetchval("SELECT count(*) FROM run_secrets WHERE run_id = $1", ref.run_id) == 1

    seen: list[Any] = []
    worker = new_worker(ledger, graphs, saver, "worker b")
    original = worker.graphs.resolve

    async def resolve(name: str, config: Any, checkpointer: Any = None, store: Any = None) -> Any:
        if config["configurable"].get("run_id") == str(ref.run_id):  # an attempt (not the thread state's rendering after it)
            seen.append(config["configurable"].get("api_key"))
        return await original(name, config, checkpointer, store)

    worker.graphs.resolve = resolve  # type: ignore[method-assign]
    await worker.start()
    try:
        end = await asyncio.wait_for(join(ledger, ref), 60)
    finally:
        await worker.stop()
    assert end.kind == "run.succeeded"
    assert seen == ["sk-secret"]  # the second attempt had the secret the first one had
    assert [t for t, _ in await thread_messages(saver, ref)] == ["human", "ai", "tool", "ai"]
    starts = [e.value["attempt"] for e in await ledger.read_run(ref) if e.kind == "run.started"]
    assert starts == [1, 2]
    assert "sk-secret" not in "".join(e.data for e in await ledger.read_run(ref))


async def test_a_released_run_cancelled_with_rollback_loses_its_first_attempts_checkpoints(
    ledger: Ledger, graphs: GraphRegistry, saver: Any
) -> None:
    ref = await released_after_the_tool(ledger, graphs, saver)
    assert (await ledger.read_run(ref))[-1].kind == "run.released"
    assert [t for t, _ in await thread_messages(saver, ref)] == ["human", "ai", "tool"]
    cancelled = await lifecycle.cancel(ledger, ref, "rollback")
    assert cancelled.status == "interrupted"
    assert await saver.aget_tuple({"configurable": {"thread_id": str(ref.thread_id)}}) is None  # as before the run
    assert (await ledger.read_run(ref))[-1].value == {"reason": "cancel", "action": "rollback"}


@pytest.mark.parametrize("action", ["interrupt", "rollback"])
async def test_a_cancel_that_came_as_its_run_was_given_back_ends_the_run(ledger: Ledger, graphs: GraphRegistry, action: str) -> None:
    """Its holder stopped before it saw the cancel: given back, the next attempt would have run to its end."""
    secret = {"configurable": {"openai_api_key": "sk-not-for-a-next-attempt"}}
    ref = (await admit(ledger, ask(config=secret), graphs=graphs)).ref
    (claimed,) = await lifecycle.claim(ledger, "stopping", limit=1, lease_seconds=LEASE)
    assert claimed.ref == ref
    assert (await lifecycle.cancel(ledger, ref, action)).status == "running"  # asked of its holder, who is stopping
    ended = await lifecycle.release(ledger, ref, "stopping", reason="shutdown", attempt=1, secrets=claimed.request.secrets)
    assert ended is not None and ended.kind == "run.interrupted" and ended.value == {"reason": "cancel", "action": action}
    kinds = [e.kind for e in await ledger.read_run(ref)]
    assert kinds == ["run.created", "run.started", "run.cancel_requested", "run.interrupted"]
    async with raw(ledger) as conn:
        row = await conn.fetchrow("SELECT status, lease_owner FROM runs WHERE run_id = $1", ref.run_id)
        kept = await conn.fetchval("SELECT count(*) FROM run_secrets WHERE run_id = $1", ref.run_id)
    assert (row["status"], row["lease_owner"], kept) == ("interrupted", None, 0)
    assert await lifecycle.claim(ledger, "next", limit=10, lease_seconds=LEASE) == []
    # a release with no cancel since the last start gives the run back as before
    again = (await admit(ledger, ask(), graphs=graphs)).ref
    assert [c.ref for c in await lifecycle.claim(ledger, "stopping", limit=1, lease_seconds=LEASE)] == [again]
    back = await lifecycle.release(ledger, again, "stopping", reason="shutdown", attempt=1)
    assert back is not None and back.kind == "run.released"
    await lifecycle.cancel(ledger, again)
