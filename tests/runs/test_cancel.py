"""Cancel, multitask strategies, timeouts, shutdown and lost leases, with a worker executing real runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graphledger.ledger import Event, Ledger, RunNotFound, RunRef
from graphledger.projections import Projections
from graphledger.runs import (
    GraphRegistry,
    NotCancellable,
    RunRequest,
    ThreadBusy,
    Worker,
    admit,
    cancel,
    join,
)
from tests._db import raw
from tests.runs.conftest import LEASE, Submit, ask

SLOW = {"configurable": {"tokens": 400, "token_delay": 0.02}}  # about 8 s of tokens


def slow(text: str = "a long answer please", **body: Any) -> RunRequest:
    """A demo run that streams tokens for seconds."""
    return ask(text, config=SLOW, stream_mode=["values", "messages-tuple"], **body)


async def started(ledger: Ledger, ref: RunRef, *, streaming: bool = True) -> None:
    """Wait until the run is running (and, with ``streaming``, its tokens flow)."""
    async for event in ledger.tail(ref):
        if event.kind == "run.started" and not streaming:
            return
        if event.kind == "stream:messages":
            return
        assert not event.is_terminal, event


async def thread_messages(saver: Any, ref: RunRef) -> list[str] | None:
    state = await saver.aget_tuple({"configurable": {"thread_id": str(ref.thread_id)}})
    return None if state is None else [m.content for m in state.checkpoint["channel_values"]["messages"]]


async def test_cancel_stops_a_running_run_and_its_usage_still_counts(ledger: Ledger, worker: Worker, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, slow(), graphs=graphs)).ref
    await started(ledger, ref)
    result = await cancel(ledger, ref)
    assert result.requested and result.status == "running"
    end = await join(ledger, ref)
    assert end.kind == "run.interrupted" and end.value == {"reason": "cancel", "action": "interrupt"}
    kinds = [e.kind for e in await ledger.read_run(ref)]
    assert "run.cancel_requested" in kinds and kinds.index("run.cancel_requested") < kinds.index("run.interrupted")
    # the call in flight is recorded with what the model had reported: its input tokens
    calls = await Projections(ledger).llm_calls(ref.thread_id, run_id=ref.run_id)
    assert calls and calls[-1].run_status == "interrupted"
    assert sum(c.tokens["input_tokens"] or 0 for c in calls if c.tokens) > 0
    # cancelling an interrupted run again succeeds and changes nothing
    again = await cancel(ledger, ref)
    assert not again.requested and again.status == "interrupted"
    assert [e.kind for e in await ledger.read_run(ref)] == kinds


async def test_cancel_with_rollback_restores_the_thread_state_from_before_the_run(
    ledger: Ledger, worker: Worker, graphs: GraphRegistry, run_to_end: Submit
) -> None:
    first, _ = await run_to_end(ask("keep this"))
    before = await thread_messages(worker.checkpointer, first)
    assert before is not None and len(before) == 4
    ref = (await admit(ledger, slow("roll me back"), thread_id=first.thread_id, graphs=graphs)).ref
    await started(ledger, ref)
    assert await thread_messages(worker.checkpointer, ref) != before  # the run's input is in the state
    await cancel(ledger, ref, "rollback")
    end = await join(ledger, ref)
    assert end.value == {"reason": "cancel", "action": "rollback"}
    assert await thread_messages(worker.checkpointer, ref) == before


async def test_cancelling_a_pending_run_ends_it_at_once(ledger: Ledger, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, ask(), graphs=graphs)).ref  # no worker in this test: it stays pending
    result = await cancel(ledger, ref, "rollback")
    assert result.status == "interrupted"
    kinds = [e.kind for e in await ledger.read_run(ref)]
    assert kinds == ["run.created", "run.cancel_requested", "run.interrupted"]


async def test_cancelling_a_finished_run_is_a_conflict_and_an_unknown_one_not_found(
    ledger: Ledger, worker: Worker, run_to_end: Submit
) -> None:
    ref, _ = await run_to_end(ask())
    with pytest.raises(NotCancellable, match="already ended \\(success\\)"):
        await cancel(ledger, ref)
    with pytest.raises(RunNotFound):
        await cancel(ledger, RunRef(ref.thread_id, ref.thread_id))
    from graphledger.runs import InvalidRequest

    with pytest.raises(InvalidRequest, match="action must be one of"):
        await cancel(ledger, ref, "explode")


async def test_reject_refuses_a_run_while_the_thread_is_busy(ledger: Ledger, worker: Worker, graphs: GraphRegistry) -> None:
    ref = (await admit(ledger, slow(), graphs=graphs)).ref
    await started(ledger, ref, streaming=False)
    with pytest.raises(ThreadBusy, match="active run"):
        await admit(ledger, ask(multitask_strategy="reject"), thread_id=ref.thread_id, graphs=graphs)
    runs = await Projections(ledger).thread_runs(ref.thread_id)
    assert [r.run_id for r in runs] == [ref.run_id]  # nothing was written for the refused run
    await cancel(ledger, ref)
    await join(ledger, ref)


async def test_reject_admits_one_of_many_runs_sent_to_an_idle_thread_at_once(ledger: Ledger, graphs: GraphRegistry) -> None:
    thread = await ledger.create_thread()
    tries = await asyncio.gather(
        *(admit(ledger, slow(multitask_strategy="reject"), thread_id=thread, graphs=graphs) for _ in range(8)), return_exceptions=True
    )
    admitted = [t for t in tries if not isinstance(t, BaseException)]
    assert len(admitted) == 1 and all(isinstance(t, ThreadBusy) for t in tries if t not in admitted), tries
    assert [r.run_id for r in await Projections(ledger).thread_runs(thread)] == [admitted[0].ref.run_id]
    await cancel(ledger, admitted[0].ref)


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
async def test_interrupt_and_rollback_cancel_the_active_run_then_start_the_new_one(
    ledger: Ledger, worker: Worker, graphs: GraphRegistry, run_to_end: Submit, strategy: str
) -> None:
    first, _ = await run_to_end(ask("the state before"))
    before = await thread_messages(worker.checkpointer, first)
    old = (await admit(ledger, slow("to be replaced"), thread_id=first.thread_id, graphs=graphs)).ref
    await started(ledger, old)
    new = await admit(ledger, ask("replacement", multitask_strategy=strategy), thread_id=first.thread_id, graphs=graphs)
    assert new.cancelled == [old]
    old_end, new_end = await join(ledger, old), await join(ledger, new.ref)
    assert old_end.kind == "run.interrupted" and old_end.value["action"] == strategy
    assert new_end.kind == "run.succeeded"
    assert old_end.global_position < (await ledger.read_run(new.ref, 1, 1))[0].global_position  # it started after
    after = await thread_messages(worker.checkpointer, first)
    assert after is not None
    if strategy == "rollback":
        assert after[:4] == before and "to be replaced" not in after
    else:
        assert "to be replaced" in after


async def test_enqueued_runs_of_a_thread_run_one_at_a_time_in_order(ledger: Ledger, worker: Worker, graphs: GraphRegistry) -> None:
    first = (await admit(ledger, ask("number 0", config={"configurable": {"token_delay": 0.01}}), graphs=graphs)).ref
    refs = [first] + [
        (await admit(ledger, ask(f"number {i}", config={"configurable": {"token_delay": 0.01}}), thread_id=first.thread_id, graphs=graphs)).ref
        for i in range(1, 4)
    ]
    ends = [await join(ledger, ref) for ref in refs]
    assert all(e.kind == "run.succeeded" for e in ends)
    spans = []
    for ref in refs:
        events = await ledger.read_run(ref)
        spans.append((events[1].global_position, events[-1].global_position))
    assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1)), spans  # no overlap, in order
    page = await Projections(ledger).messages(first.thread_id)
    humans = [m.data["content"] for m in page.messages if m.type == "human"]
    assert humans == [f"number {i}" for i in range(4)]


async def test_a_run_past_its_timeout_ends_timed_out(ledger: Ledger, graphs: GraphRegistry, saver: Any) -> None:
    worker = Worker(ledger, graphs, checkpointer=saver, lease_seconds=LEASE, poll_interval=0.2, run_timeout=0.5)
    await worker.start()
    try:
        ref = (await admit(ledger, slow(), graphs=graphs)).ref
        end = await join(ledger, ref)
    finally:
        await worker.stop()
    assert end.kind == "run.timed_out"
    assert end.value["error"]["type"] == "TimeoutError"
    status = await Projections(ledger).run_status(ref)
    assert status is not None and status.status == "timeout"


async def test_shutdown_lets_short_runs_finish_and_releases_the_rest(ledger: Ledger, graphs: GraphRegistry, saver: Any) -> None:
    worker = Worker(ledger, graphs, checkpointer=saver, lease_seconds=LEASE, poll_interval=0.2)
    await worker.start()
    long = (await admit(ledger, slow(), graphs=graphs)).ref
    quick = (await admit(ledger, ask(config={"configurable": {"token_delay": 0.05, "tokens": 10}}, stream_mode="messages-tuple"), graphs=graphs)).ref
    await started(ledger, long)
    await started(ledger, quick)
    await worker.stop(drain_seconds=2.0)
    assert (await join(ledger, quick)).kind == "run.succeeded"
    events = await ledger.read_run(long)
    released = events[-1]
    assert released.kind == "run.released"
    assert released.value == {"worker": worker.owner, "reason": "shutdown", "attempt": 1}
    assert not any(e.is_terminal for e in events)
    # the call in flight when the run was released is recorded, incomplete, before the release
    usage = [e for e in events if e.kind == "llm.usage"]
    assert usage and usage[-1].value.get("incomplete") is True and usage[-1].seq < released.seq
    status = await Projections(ledger).run_status(long)
    assert status is not None and (status.status, status.attempt) == ("pending", 1)
    async with raw(ledger) as conn:
        row = await conn.fetchrow("SELECT status, lease_owner, lease_expires_at, claimable FROM runs WHERE run_id = $1", long.run_id)
    assert dict(row) == {"status": "pending", "lease_owner": None, "lease_expires_at": None, "claimable": True}
    assert (await ledger.verify(long)).ok


async def test_a_worker_that_loses_its_lease_stops_writing(ledger: Ledger, worker: Worker, graphs: GraphRegistry) -> None:
    from graphledger.runs.leases import Reaper

    ref = (await admit(ledger, slow(), graphs=graphs)).ref
    await started(ledger, ref)
    async with raw(ledger) as conn:  # as if the worker had stalled past its lease
        await conn.execute("UPDATE runs SET lease_expires_at = now() - interval '1 hour' WHERE run_id = $1", ref.run_id)
    assert await Reaper(ledger, grace_seconds=0, settle_seconds=0).reap_once() == 1
    end = await join(ledger, ref)
    assert end.kind == "run.failed" and end.value["error"]["type"] == "LeaseExpired"
    for _ in range(100):
        if ref not in worker.running:
            break
        await asyncio.sleep(0.05)
    assert ref not in worker.running
    events: list[Event] = await ledger.read_run(ref)
    assert events[-1].kind == "run.failed"  # nothing after the terminal event
    assert (await ledger.verify(ref)).ok


async def test_a_worker_keeps_its_lease_while_the_end_of_its_run_waits_on_the_database(
    ledger: Ledger, graphs: GraphRegistry, saver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose graph ended stays leased until its terminal event is written, however long that takes.

    The end is held back here for several leases, as a database outage
    holds it back; a reaper judging the run meanwhile finds its lease renewed.
    """
    from graphledger.runs.leases import Reaper
    from graphledger.runs.recorder import Recording

    lease = 1.0
    ending, go_on = asyncio.Event(), asyncio.Event()
    succeed = Recording.succeed

    async def slow_succeed(recording: Recording) -> Event | None:
        ending.set()
        await go_on.wait()
        return await succeed(recording)

    monkeypatch.setattr(Recording, "succeed", slow_succeed)
    worker = Worker(ledger, graphs, checkpointer=saver, lease_seconds=lease, poll_interval=0.2)
    await worker.start()
    try:
        ref = (await admit(ledger, ask(), graphs=graphs)).ref
        await asyncio.wait_for(ending.wait(), 30)
        assert ref in worker.leases.held
        await asyncio.sleep(3 * lease)  # unrenewed, the lease would have expired two leases ago
        await Reaper(ledger, grace_seconds=lease, settle_seconds=0).reap_once()
        assert (await ledger.read_run(ref))[-1].kind != "run.failed"  # not reaped: its lease was renewed
        go_on.set()
        end = await join(ledger, ref)
        for _ in range(100):
            if ref not in worker.running:
                break
            await asyncio.sleep(0.05)
    finally:
        go_on.set()
        await worker.stop()
    assert end.kind == "run.succeeded"
    assert ref not in worker.leases.held and ref not in worker.running
    async with raw(ledger) as conn:
        row = await conn.fetchrow("SELECT status, lease_owner FROM runs WHERE run_id = $1", ref.run_id)
    assert (row["status"], row["lease_owner"]) == ("success", worker.owner)
    assert (await ledger.verify(ref)).ok
