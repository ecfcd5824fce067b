"""Workers execute runs of a real LangGraph graph and record every part of them."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from graphledger.ledger import Ledger, RunRef
from graphledger.projections import Projections
from graphledger.runs import GraphRegistry, Recorder, RunRequest, Worker, admit, demo, join, lifecycle
from tests._db import raw
from tests.runs.conftest import LEASE, Submit, ask


async def test_a_run_of_the_demo_graph_is_recorded_from_created_to_succeeded(ledger: Ledger, worker: Worker, run_to_end: Submit) -> None:
    ref, end = await run_to_end(ask(stream_mode=["values", "messages-tuple"]))
    assert end.kind == "run.succeeded"
    events = await ledger.read_run(ref)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.created" and kinds[1] == "run.started" and kinds[-1] == "run.succeeded"
    assert {"stream:values", "stream:messages", "stream:updates", "llm.usage"} <= set(kinds)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    started = events[1].value
    assert started["worker"] == worker.owner
    tokens = [e.value[0]["content"] for e in events if e.kind == "stream:messages" and e.value[0]["type"] == "AIMessageChunk"]
    assert "".join(tokens).startswith("Let me count the words.")
    assert (await ledger.verify(ref)).ok


async def test_usage_of_every_llm_call_lands_in_the_projection_with_cache_and_reasoning(
    ledger: Ledger, worker: Worker, run_to_end: Submit
) -> None:
    ref, _ = await run_to_end(ask("one two three"))
    calls = await Projections(ledger).llm_calls(ref.thread_id, run_id=ref.run_id)
    assert len(calls) == 2  # the tool call, then the answer
    for call in calls:
        assert call.model == "graphledger-demo-1" and call.caller == "agent"
        assert call.tokens is not None and call.latency_ms is not None
        assert call.tokens["cache_read"] and call.tokens["cache_creation"] and call.tokens["reasoning"] == 3
        assert call.tokens["total_tokens"] == call.tokens["input_tokens"] + call.tokens["output_tokens"]
        assert call.run_status == "success" and call.assistant_id == "demo"
    total = await Projections(ledger).token_usage(thread_id=ref.thread_id)
    assert total.calls == 2
    assert total.tokens["reasoning"] == 6


async def test_the_thread_messages_are_the_conversation_once_each(ledger: Ledger, worker: Worker, run_to_end: Submit) -> None:
    ref, _ = await run_to_end(ask("one two three", stream_mode=["values", "updates"]))
    page = await Projections(ledger).messages(ref.thread_id)
    assert [m.type for m in page.messages] == ["human", "ai", "tool", "ai"]
    assert page.messages[2].data["content"] == "3"
    assert page.messages[3].data["content"].startswith("Your message has 3 words.")
    # the ids in the log are the ids in the thread's state
    state = await worker.checkpointer.aget_tuple({"configurable": {"thread_id": str(ref.thread_id)}})
    assert [m.id for m in state.checkpoint["channel_values"]["messages"]] == [m.message_id for m in page.messages]


async def test_a_second_run_continues_the_thread_state(ledger: Ledger, worker: Worker, run_to_end: Submit) -> None:
    ref, _ = await run_to_end(ask("first question"))
    again, end = await run_to_end(ask("second one"), thread_id=ref.thread_id)
    assert end.kind == "run.succeeded"
    values = [e.value for e in await ledger.read_run(again) if e.kind == "stream:values"]
    assert [m["type"] for m in values[-1]["messages"]] == ["human", "ai", "tool", "ai"] * 2
    page = await Projections(ledger).messages(ref.thread_id)
    assert len(page.messages) == 8


async def test_a_failing_graph_records_the_error_event_and_the_failure(ledger: Ledger, worker: Worker, run_to_end: Submit) -> None:
    ref, end = await run_to_end(ask(config={"configurable": {"fail": "the model is down"}}))
    assert end.kind == "run.failed"
    assert end.value == {"error": {"type": "RuntimeError", "message": "the model is down"}}
    events = await ledger.read_run(ref)
    assert events[-2].kind == "stream:error"
    assert events[-2].value == {"error": "RuntimeError", "message": "the model is down"}
    status = await Projections(ledger).run_status(ref)
    assert status is not None and status.status == "error" and status.error_type == "RuntimeError"


async def test_an_interrupt_in_the_graph_ends_the_run_interrupted_and_a_command_resumes_it(
    ledger: Ledger, worker: Worker, run_to_end: Submit
) -> None:
    ref, end = await run_to_end(ask(config={"configurable": {"review": True}}))
    assert end.kind == "run.interrupted"
    assert end.value["reason"] == "interrupt"
    assert end.value["interrupts"][0]["value"]["question"] == "Run these tool calls?"
    assert await Projections(ledger).thread_status(ref.thread_id) == "interrupted"
    resumed, end = await run_to_end(
        RunRequest.parse({"assistant_id": "demo", "command": {"resume": "yes"}, "config": {"configurable": {"review": True}}}),
        thread_id=ref.thread_id,
    )
    assert end.kind == "run.succeeded"
    page = await Projections(ledger).messages(ref.thread_id)
    assert [m.type for m in page.messages] == ["human", "ai", "tool", "ai"]
    assert await Projections(ledger).thread_status(ref.thread_id) == "idle"


async def test_secrets_in_config_reach_the_graph_but_not_the_log(ledger: Ledger, worker: Worker, run_to_end: Submit) -> None:
    seen: list[Any] = []
    original = worker.graphs.resolve

    async def resolve(name: str, config: Any, checkpointer: Any = None, store: Any = None) -> Any:
        if "run_id" in config["configurable"]:  # the run (not the thread state's rendering after it)
            seen.append(config["configurable"].get("openai_api_key"))
        return await original(name, config, checkpointer, store)

    worker.graphs.resolve = resolve  # type: ignore[method-assign]
    ref, end = await run_to_end(ask(config={"configurable": {"openai_api_key": "sk-very-secret", "tokens": 2}}))
    assert end.kind == "run.succeeded"
    assert seen == ["sk-very-secret"]  # the graph had the key
    events = await ledger.read_run(ref)
    assert all("sk-very-secret" not in e.data for e in events)
    assert events[0].value["redacted"] == ["config.configurable.openai_api_key"]
    assert events[0].value["config"]["configurable"]["openai_api_key"] == "[redacted]"
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT count(*) FROM run_secrets WHERE run_id = $1", ref.run_id) == 0
    # LangGraph copies string config values into checkpoint metadata: the checkpointer stores the marker instead
    state: Any = await worker.checkpointer.aget_tuple({"configurable": {"thread_id": str(ref.thread_id)}})
    assert state.metadata.get("openai_api_key") == "[redacted]"


async def test_a_graph_factory_that_fails_fails_its_run_with_the_reason(ledger: Ledger, saver: Any) -> None:
    from graphledger.runs import GraphRegistry, admit, join

    def broken(config: Any) -> Any:
        raise ValueError("no model configured")

    graphs = GraphRegistry({"broken": broken})
    worker = Worker(ledger, graphs, checkpointer=saver, poll_interval=0.2)
    await worker.start()
    try:
        admitted = await admit(ledger, RunRequest.parse({"assistant_id": "broken"}), graphs=graphs)
        end = await join(ledger, admitted.ref)
    finally:
        await worker.stop()
    assert end.kind == "run.failed" and end.value["error"] == {"type": "ValueError", "message": "no model configured"}


async def test_runs_a_program_records_itself_are_never_claimed(ledger: Ledger, worker: Worker, run_to_end: Submit) -> None:
    thread = await ledger.create_thread()
    created = await ledger.create_run(thread, assistant_id="agent", payload={"input": {"q": "hi"}}, metadata={"team": "a"})
    assert created.value == {"assistant_id": "agent", "executor": "caller", "input": {"q": "hi"}, "metadata": {"team": "a"}}
    mine = RunRef(thread, created.run_id)
    # A served run admitted after it on the same thread is not held back by it, and runs.
    served, end = await run_to_end(ask(), thread_id=thread)
    assert end.kind == "run.succeeded"
    assert (await ledger.read_run(served, 0, 1))[0].value["executor"] == "server"
    status = await Projections(ledger).run_status(mine)
    assert status.status == "pending" and status.assistant_id == "agent"
    assert [e.kind for e in await ledger.read_run(mine)] == ["run.created"]
    async with raw(ledger) as conn:
        row = await conn.fetchrow("SELECT assistant_id, metadata::text, claimable FROM runs WHERE run_id = $1", mine.run_id)
    assert (row["assistant_id"], row["metadata"], row["claimable"]) == ("agent", '{"team": "a"}', False)


async def test_the_recorder_runs_beside_a_worker_without_being_claimed(ledger: Ledger, worker: Worker) -> None:
    recorder = Recorder(ledger)
    for _ in range(5):
        chunks = [c async for c in recorder.astream(demo.graph, {"messages": [{"role": "user", "content": "a b"}]}, stream_mode="values")]
        assert chunks
    assert worker.executed == 0


async def test_claims_wait_for_admissions_in_flight_but_never_longer_than_the_hold_back() -> None:
    import asyncio
    import time

    from graphledger.runs.worker import Admissions

    gate = Admissions()
    started = time.monotonic()
    await gate.quiet(5.0)
    assert time.monotonic() - started < 0.1  # nothing in flight: at once
    with gate:
        waiter = asyncio.ensure_future(gate.quiet(5.0))
        await asyncio.sleep(0.1)
        assert not waiter.done()  # an admission is in flight
    await asyncio.wait_for(waiter, 1.0)  # released as it ends
    with gate:
        started = time.monotonic()
        await gate.quiet(0.2)  # steady traffic: the hold-back is the most it waits
        assert 0.15 < time.monotonic() - started < 1.0


async def lost_claims(ledger: Ledger, graphs: GraphRegistry, worker: Worker, request: RunRequest) -> tuple[RunRef, RunRef]:
    """Two claims whose commit's answer ``worker`` lost: one that held (of ``request``), one that never committed."""
    held = (await admit(ledger, request, graphs=graphs)).ref
    (committed,) = await lifecycle.claim(ledger, worker.owner, limit=1, lease_seconds=LEASE)  # its answer "lost"
    assert committed.ref == held
    pending = (await admit(ledger, ask("three four five"), graphs=graphs)).ref
    created = (await ledger.read_run(pending, 0, 1))[0]
    never = lifecycle.Claimed(pending, RunRequest.recorded(created.value), committed.started)  # prepared, never committed
    worker._uncertain = [committed, never]
    return held, pending


async def test_a_claim_whose_commit_was_lost_is_settled_by_its_claimer(ledger: Ledger, graphs: GraphRegistry, saver: Any) -> None:
    """The database went away at a claim's commit: the claims that held are executed, the others left to anyone."""
    worker = Worker(ledger, graphs, checkpointer=saver, concurrency=4, lease_seconds=LEASE, poll_interval=0.2)
    held, pending = await lost_claims(ledger, graphs, worker, ask("one two"))
    await worker.start()
    try:
        first, second = await join(ledger, held), await join(ledger, pending)
    finally:
        await worker.stop(drain_seconds=5)
    assert first.kind == second.kind == "run.succeeded"
    kinds = [e.kind for e in await ledger.read_run(held)]
    assert kinds.count("run.started") == 1  # executed under the claim that held, not claimed again
    assert [e.value["worker"] for e in await ledger.read_run(pending) if e.kind == "run.started"] == [worker.owner]


async def test_a_stop_lets_the_claim_in_flight_finish_and_drains_its_run(
    ledger: Ledger, graphs: GraphRegistry, saver: Any, conn: asyncpg.Connection
) -> None:
    """A claim is never cancelled by a stop: one cancelled at its COMMIT may have committed, leaving a run no one executes."""
    secret = {"configurable": {"openai_api_key": "sk-claimed-at-the-stop", "tokens": 2}}
    ref = (await admit(ledger, ask("one two", config=secret), graphs=graphs)).ref
    worker = Worker(ledger, graphs, checkpointer=saver, concurrency=4, lease_seconds=LEASE, poll_interval=0.2)
    stopping: asyncio.Task[None] | None = None
    try:
        async with conn.transaction():  # the claim waits on the run's secrets until this ends
            assert await conn.fetchval("SELECT run_id FROM run_secrets WHERE run_id = $1 FOR UPDATE", ref.run_id) == ref.run_id
            await worker.start()
            for _ in range(200):
                waiting = await conn.fetchval(  # a row lock is waited for on the transaction that holds it
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the claim should be waiting on the run's secrets"
            stopping = asyncio.create_task(worker.stop(drain_seconds=10))
            await asyncio.sleep(0.3)
            assert not stopping.done()  # waiting for the claim
        await asyncio.wait_for(stopping, 30)
    finally:
        if stopping is None:
            await worker.stop()
    events = await ledger.read_run(ref)
    assert [e.kind for e in events if e.kind.startswith("run.")] == ["run.created", "run.started", "run.succeeded"]
    row = await conn.fetchrow("SELECT status, lease_owner FROM runs WHERE run_id = $1", ref.run_id)
    assert (row["status"], row["lease_owner"]) == ("success", worker.owner)


async def test_a_stop_gives_back_the_runs_of_a_claim_whose_commit_was_lost(ledger: Ledger, graphs: GraphRegistry, saver: Any) -> None:
    """Claims the worker could not settle before it stopped: those that held are released, secrets and all."""
    worker = Worker(ledger, graphs, checkpointer=saver, concurrency=4, lease_seconds=LEASE, poll_interval=0.2)
    secret = {"configurable": {"openai_api_key": "sk-lost-at-the-commit"}}
    held, pending = await lost_claims(ledger, graphs, worker, ask("one two", config=secret))
    await worker.stop(drain_seconds=1)
    released = (await ledger.read_run(held))[-1]
    assert released.kind == "run.released" and released.value == {"worker": worker.owner, "reason": "shutdown", "attempt": 1}
    assert [e.kind for e in await ledger.read_run(pending)] == ["run.created"]  # left as it was
    async with raw(ledger) as conn:
        row = await conn.fetchrow("SELECT status, lease_owner, claimable FROM runs WHERE run_id = $1", held.run_id)
        secrets = await conn.fetchval("SELECT secrets::text FROM run_secrets WHERE run_id = $1", held.run_id)
    assert dict(row) == {"status": "pending", "lease_owner": None, "claimable": True}
    assert secrets is not None and "sk-lost-at-the-commit" in secrets  # waiting for the next claimer
    assert (await ledger.verify(held)).ok
