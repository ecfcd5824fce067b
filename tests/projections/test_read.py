"""Projections written inline, read back: the tricky cases of status, usage and message pages."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunNotFound, RunRef, ThreadNotFound
from graphledger.projections import InvalidArgument, InvalidCursor, Projections
from graphledger.projections.read import COUNT_THREADS_SQL, SEARCH_THREADS_SQL, encode_cursor

USAGE = {
    "input_tokens": 100, "output_tokens": 40, "total_tokens": 140,
    "input_token_details": {"cache_read": 60, "cache_creation": 10},
    "output_token_details": {"reasoning": 25},
}


async def new_run(ledger: Ledger, thread: UUID | None = None, **payload: Any) -> RunRef:
    thread = thread or await ledger.create_thread()
    created = await ledger.create_run(thread, payload={"assistant_id": "agent", **payload})
    return RunRef(thread, created.run_id)


def usage(call_id: str, model: str | None = "gpt-x", usage: dict[str, Any] | None = USAGE, caller: str = "agent") -> dict[str, Any]:
    return {"call_id": call_id, "model": model, "caller": caller, "usage": usage, "latency_ms": 12.5}


def ai(message_id: str, content: str) -> dict[str, Any]:
    return {"agent": {"messages": [{"type": "ai", "content": content, "id": message_id}]}}


async def test_status_is_current_right_after_each_append(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected)
    assert (await views.run_status(ref)).status == "pending"
    assert await views.thread_status(ref.thread_id) == "busy"
    await projected.append(ref, "run.started", {"worker": "w1"})
    running = await views.run_status(ref.run_id)
    assert (running.status, running.worker, running.attempt, running.assistant_id) == ("running", "w1", 1, "agent")
    await projected.append(ref, "run.failed", {"error": {"type": "ValueError", "message": "boom"}})
    failed = await views.run_status(ref)
    assert (failed.status, failed.error_type, failed.error_message) == ("error", "ValueError", "boom")
    assert failed.created_at <= failed.started_at <= failed.finished_at  # type: ignore[operator]
    assert await views.thread_status(ref.thread_id) == "error"
    with pytest.raises(RunNotFound):
        await views.run_status(uuid4())
    with pytest.raises(ThreadNotFound):
        await views.thread_status(uuid4())


async def test_conditional_appends_project_too(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected)
    await projected.append(ref, "run.started", {}, expected_seq=1)
    await projected.append(ref, "llm.usage", usage("c1"), expected_seq=2)
    assert (await views.run_status(ref)).status == "running"
    assert (await views.token_usage(thread_id=ref.thread_id, run_id=ref.run_id)).calls == 1


async def test_usage_details_duplicates_and_unknown_usage(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected)
    await projected.append(ref, "run.started", {})
    await projected.append(ref, "llm.usage", usage("c1"))
    await projected.append(ref, "llm.usage", usage("c1", usage={"input_tokens": 999, "output_tokens": 1}))  # reported again
    # Two reports of one call in one flush, and a model that reports no usage.
    await asyncio.gather(
        projected.submit(ref, "llm.usage", usage("c2", model="claude")),
        projected.submit(ref, "llm.usage", usage("c2", model="claude")),
        projected.submit(ref, "llm.usage", usage("c3", model="local", usage=None, caller="tools")),
    )
    await projected.append(ref, "run.succeeded", {})
    calls = await views.llm_calls(ref.thread_id)
    assert [(c.call_id, c.model, c.usage_known) for c in calls] == [("c1", "gpt-x", True), ("c2", "claude", True), ("c3", "local", False)]
    assert {(c.assistant_id, c.run_status, c.latency_ms) for c in calls} == {("agent", "success", 12.5)}
    assert calls[0].tokens == {"input_tokens": 100, "output_tokens": 40, "total_tokens": 140, "cache_read": 60, "cache_creation": 10, "reasoning": 25}
    totals = await views.token_usage(thread_id=ref.thread_id)
    assert (totals.calls, totals.unknown_usage_calls) == (3, 1)
    assert totals.tokens == {"input_tokens": 200, "output_tokens": 80, "total_tokens": 280, "cache_read": 120, "cache_creation": 20, "reasoning": 50}
    by_model = await views.usage_by("model", thread_id=ref.thread_id)
    assert {k: (v.calls, v.unknown_usage_calls, v.tokens["total_tokens"]) for k, v in by_model.items()} == {
        "claude": (1, 0, 140), "gpt-x": (1, 0, 140), "local": (1, 1, 0),
    }
    by_caller = await views.usage_by("caller", thread_id=ref.thread_id)
    assert {k: v.calls for k, v in by_caller.items()} == {"agent": 2, "tools": 1}


async def test_cancelled_and_failed_runs_are_counted_and_labelled(projected: Ledger, views: Projections) -> None:
    thread = await projected.create_thread()
    outcomes = {"run.succeeded": {}, "run.interrupted": {}, "run.failed": {"error": {"type": "E", "message": "m"}}}
    for kind, payload in outcomes.items():
        ref = await new_run(projected, thread)
        await projected.append(ref, "run.started", {})
        await projected.append(ref, "llm.usage", usage(f"call-{kind}"))
        if kind == "run.interrupted":
            await projected.append(ref, "run.cancel_requested", {"action": "interrupt"})
        await projected.append(ref, kind, payload)
    by_status = await views.usage_by("status", thread_id=thread)
    assert {k: (v.calls, v.tokens["total_tokens"]) for k, v in by_status.items()} == {
        "error": (1, 140), "interrupted": (1, 140), "success": (1, 140),
    }
    assert (await views.token_usage(thread_id=thread)).tokens["total_tokens"] == 420
    everywhere = await views.usage_by("assistant")
    assert everywhere["agent"].calls >= 3


async def test_usage_reads_refuse_bad_arguments(views: Projections) -> None:
    with pytest.raises(InvalidArgument, match="group"):
        await views.usage_by("colour")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="thread_id"):
        await views.token_usage(run_id=uuid4())
    from datetime import datetime, timezone

    with pytest.raises(InvalidArgument, match="since"):
        await views.token_usage(since=datetime(2026, 2, 1, tzinfo=timezone.utc), until=datetime(2026, 1, 1, tzinfo=timezone.utc))


async def test_messages_in_order_replaced_by_id(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected, input={"messages": [{"role": "user", "content": "what is 6*7?", "id": "h1"}]})
    await projected.append(ref, "run.started", {})
    projected.feed(ref, "stream:messages", [{"type": "AIMessageChunk", "content": "thinking", "id": "a1"}, {}])
    await projected.append(ref, "stream:updates", ai("a1", "thinking"))
    await projected.append(ref, "stream:updates", {"tools": {"messages": [{"type": "tool", "content": "42", "id": "t1", "tool_call_id": "c"}]}})
    await projected.append(ref, "stream:updates", ai("a1", "6*7 is 42"))  # a later write of a1 replaces it
    await projected.append(ref, "run.succeeded", {})
    page = await views.messages(ref.thread_id)
    assert [(m.message_id, m.type, m.data["content"]) for m in page.messages] == [
        ("h1", "human", "what is 6*7?"), ("a1", "ai", "6*7 is 42"), ("t1", "tool", "42"),
    ]
    assert all(m.run_id == ref.run_id for m in page.messages) and not page.has_more
    second = await new_run(projected, ref.thread_id, input={"messages": [{"role": "user", "content": "thanks", "id": "h2"}]})
    run_page = await views.messages(ref.thread_id, run_id=second.run_id)
    assert [m.message_id for m in run_page.messages] == ["h2"]
    assert [m.message_id for m in (await views.messages(ref.thread_id)).messages] == ["h1", "a1", "t1", "h2"]


async def test_pages_walk_both_ways_and_stay_stable(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected)
    for i in range(7):
        await projected.append(ref, "stream:updates", ai(f"m{i}", f"text {i}"))
    first = await views.messages(ref.thread_id, limit=3)
    assert [m.message_id for m in first.messages] == ["m0", "m1", "m2"] and first.has_more
    second = await views.messages(ref.thread_id, limit=3, after=first.after)
    assert [m.message_id for m in second.messages] == ["m3", "m4", "m5"] and second.has_more
    await projected.append(ref, "stream:updates", ai("m7", "arrives while paging"))
    third = await views.messages(ref.thread_id, limit=3, after=second.after)
    assert [m.message_id for m in third.messages] == ["m6", "m7"] and not third.has_more
    back = await views.messages(ref.thread_id, limit=3, before=second.before)
    assert [m.message_id for m in back.messages] == ["m0", "m1", "m2"] and not back.has_more
    last = await views.messages(ref.thread_id, limit=2, last=True)
    assert [m.message_id for m in last.messages] == ["m6", "m7"] and last.has_more
    again = await views.messages(ref.thread_id, limit=3, after=second.after)
    assert [m.message_id for m in again.messages] == ["m6", "m7"]
    empty = await views.messages(ref.thread_id, after=third.after)
    assert empty.messages == [] and empty.after == third.after and not empty.has_more


async def test_bad_page_requests_are_refused(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected)
    for cursor in ("", "nope", "MS4w=", encode_cursor((1, 0)) + "A", "LTEuMA", "MS4wLjA"):
        with pytest.raises(InvalidCursor):
            await views.messages(ref.thread_id, after=cursor)
    for limit in (0, -1, 1001, True, "5"):
        with pytest.raises(InvalidArgument, match="limit"):
            await views.messages(ref.thread_id, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="one of"):
        await views.messages(ref.thread_id, before=encode_cursor((1, 0)), after=encode_cursor((1, 0)))
    with pytest.raises(ThreadNotFound):
        await views.messages(uuid4())


async def test_text_the_log_accepts_is_never_refused_by_a_projection(projected: Ledger, views: Projections) -> None:
    ref = await new_run(projected, input={"messages": [{"role": "user", "content": "nul \x00 inside", "id": "h\x00"}]})
    await projected.append(ref, "llm.usage", usage("c\x00", model="m\x00"))
    await projected.append(ref, "run.failed", {"error": {"type": "E\x00", "message": "bad \x00 byte"}})
    status = await views.run_status(ref)
    assert (status.error_type, status.error_message) == ("E\ufffd", "bad \ufffd byte")
    (call,) = await views.llm_calls(ref.thread_id)
    assert (call.call_id, call.model) == ("c\ufffd", "m\ufffd")
    (message,) = (await views.messages(ref.thread_id)).messages
    assert (message.message_id, message.data["content"]) == ("h\ufffd", "nul \x00 inside")


async def test_a_search_by_metadata_can_use_the_metadata_index_in_a_generic_plan(dsn: str) -> None:
    """What the server's prepared statement may run after a few executions: the plan must still reach ``threads_metadata_idx``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
        for (by, desc, by_metadata), sql in SEARCH_THREADS_SQL.items():
            await conn.execute(f"PREPARE search_{by}_{desc}_{by_metadata} (jsonb, uuid[], text, bigint, bigint, jsonb, jsonb) AS {sql}")
            plan = "\n".join(r[0] for r in await conn.fetch(
                f"""EXPLAIN EXECUTE search_{by}_{desc}_{by_metadata}('{{"user": "u7"}}', NULL, NULL, 10, 0, NULL, NULL)"""
            ))
            assert ("threads_metadata_idx" in plan) == by_metadata, plan
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {COUNT_THREADS_SQL[True]}".replace("$1", "'{\"user\": \"u7\"}'")
                                                        .replace("$2", "NULL").replace("$3", "NULL").replace("$4", "NULL").replace("$5", "NULL")))
        assert "threads_metadata_idx" in plan, plan
    finally:
        await conn.close()
