"""Property: for random histories of many runs and threads, appended concurrently,

- the projections written inline equal the pure folds of the log read back,
  and equal a rebuild from the log;
- walking message pages forward and backward returns every message once, in order;
- token totals equal the sum of the recorded calls.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphledger import projections
from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.events import Event, canonical_json
from graphledger.projections import Projections, rebuild
from graphledger.projections import messages as message_fold
from graphledger.projections import run_status as status_fold
from graphledger.projections import token_usage as usage_fold

from .conftest import table_rows

MESSAGE_IDS = [f"m{i}" for i in range(6)]
message = st.fixed_dictionaries({
    "type": st.sampled_from(["ai", "human", "tool", "system"]),
    "content": st.text(max_size=8),
    "id": st.sampled_from(MESSAGE_IDS),
})
usage = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"input_tokens": st.integers(0, 10_000), "output_tokens": st.integers(0, 10_000)},
        optional={
            "total_tokens": st.integers(0, 20_000),
            "input_token_details": st.fixed_dictionaries({}, optional={"cache_read": st.integers(0, 500), "cache_creation": st.integers(0, 500)}),
            "output_token_details": st.fixed_dictionaries({}, optional={"reasoning": st.integers(0, 500)}),
        },
    ),
)
step = st.one_of(
    st.tuples(st.just("stream:messages"), st.just([{"content": "tok"}, {}])),
    st.tuples(st.just("stream:updates"), st.dictionaries(st.sampled_from(["agent", "tools"]), st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}), max_size=2)),
    st.tuples(st.just("stream:values"), st.fixed_dictionaries({"messages": st.lists(message, max_size=4)})),
    st.tuples(st.just("llm.usage"), st.fixed_dictionaries({
        "call_id": st.sampled_from(["c1", "c2", "c3"]), "model": st.sampled_from(["a", "b", None]),
        "caller": st.sampled_from(["agent", "tools", None]), "usage": usage, "latency_ms": st.one_of(st.none(), st.floats(0, 1e4)),
    }, optional={"provider": st.sampled_from(["openai", "anthropic"]), "ttft_ms": st.floats(0, 1e3)})),
    st.tuples(st.just("run.started"), st.fixed_dictionaries({"worker": st.sampled_from(["w1", "w2"])})),
    st.tuples(st.just("run.released"), st.fixed_dictionaries({"worker": st.sampled_from(["w1", "w2"]), "reason": st.just("shutdown")})),
    st.tuples(st.just("run.cancel_requested"), st.just({"action": "interrupt"})),
)
ending = st.sampled_from([None, ("run.succeeded", {}), ("run.interrupted", {}), ("run.failed", {"error": {"type": "E", "message": "x"}})])
run = st.tuples(st.lists(message, max_size=2), st.lists(step, max_size=12), ending)
histories = st.lists(st.lists(run, min_size=1, max_size=3), min_size=1, max_size=3)  # threads of runs


def in_own_loop(coroutine: Any) -> Any:
    """Run ``coroutine`` on a fresh event loop in a worker thread (hypothesis drives sync tests)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def append_all(ledger: Ledger, threads: list[list[Any]]) -> list[UUID]:
    thread_ids = []
    drivers = []
    for runs in threads:
        thread = await ledger.create_thread()
        thread_ids.append(thread)
        for inputs, steps, end in runs:
            actor = {"identity": f"user-{len(drivers) % 2}"}
            payload = {"assistant_id": "agent", "input": {"messages": inputs}, "metadata": {"team": f"t{len(drivers) % 3}"}, "actor": actor}
            created = await ledger.create_run(thread, payload=payload)
            drivers.append(drive(ledger, RunRef(thread, created.run_id), steps, end))
    await asyncio.gather(*drivers)
    return thread_ids


async def drive(ledger: Ledger, ref: RunRef, steps: list[tuple[str, Any]], end: tuple[str, Any] | None) -> None:
    for i, (kind, payload) in enumerate(steps):
        if i % 3 == 2:
            await ledger.append(ref, kind, payload)
        else:
            ledger.feed(ref, kind, payload)
        await asyncio.sleep(0)
    if end is not None:
        await ledger.append(ref, *end)
    else:
        await ledger.append(ref, "stream:custom", {"done": True})


def expected(events: list[Event]) -> dict[str, list[tuple[Any, ...]]]:
    """The projection rows the pure folds give for ``events``, as the tables hold them."""
    statuses: dict[tuple[UUID, UUID], status_fold.RunStatus | None] = defaultdict(lambda: None)
    calls: dict[tuple[UUID, str], usage_fold.LlmCall] = {}
    messages: dict[tuple[UUID, str], message_fold.Message] = {}
    for event in sorted(events, key=lambda e: e.global_position):
        key = (event.thread_id, event.run_id)
        statuses[key] = status_fold.fold(statuses[key], event)
        usage_fold.fold(calls, event)
        message_fold.fold(messages, event)
    return {
        "run_status": sorted(
            (s.thread_id, s.run_id, s.status, s.status_seq, s.assistant_id, s.created_at, s.started_at, s.finished_at,
             s.attempt, s.worker, s.error_type, s.error_message, s.identity,
             None if s.metadata is None else canonical_json(s.metadata))
            for s in statuses.values() if s is not None
        ),
        "llm_calls": sorted(
            (c.thread_id, c.run_id, c.call_id, c.seq, c.ts, c.model, c.caller, c.usage_known,
             *((c.tokens or {}).get(name) for name in usage_fold.TOKEN_FIELDS), c.latency_ms, c.provider, c.ttft_ms)
            for c in calls.values()
        ),
        "messages": sorted(
            (m.thread_id, m.message_id, m.position, m.part, m.run_id, m.seq, m.updated_position, m.updated_part, m.type, m.data,
             m.updated_run_id, m.updated_seq, m.writer_position, m.writer_part)
            for m in messages.values()
        ),
    }


def expected_rollup(events: list[Event]) -> list[tuple[Any, ...]]:
    """The hourly usage rollup summed from ``events`` by the pure folds (every call under its run's current label)."""
    statuses: dict[tuple[UUID, UUID], status_fold.RunStatus | None] = defaultdict(lambda: None)
    calls: dict[tuple[UUID, str], usage_fold.LlmCall] = {}
    for event in sorted(events, key=lambda e: e.global_position):
        statuses[(event.thread_id, event.run_id)] = status_fold.fold(statuses[(event.thread_id, event.run_id)], event)
        usage_fold.fold(calls, event)
    first = {}
    for call in calls.values():
        if (call.thread_id, call.run_id) not in first or call.seq < first[(call.thread_id, call.run_id)]:
            first[(call.thread_id, call.run_id)] = call.seq
    rows: dict[tuple[Any, ...], list[int]] = {}
    for call in calls.values():
        status = statuses[(call.thread_id, call.run_id)]
        key = (
            call.ts.replace(minute=0, second=0, microsecond=0), call.model, call.provider, call.caller,
            status and status.assistant_id, status and status.status, status and status.identity,
        )
        sums = rows.setdefault(key, [0] * 9)
        sums[0] += 1
        sums[1] += call.tokens is None
        sums[2] += call.seq == first[(call.thread_id, call.run_id)]
        for i, name in enumerate(usage_fold.TOKEN_FIELDS):
            sums[3 + i] += (call.tokens or {}).get(name) or 0
    return sorted(((*key, *sums) for key, sums in rows.items()), key=rollup_order)


def rollup_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is not None, value) for value in row[:7])


def as_stored(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    import json

    return {**rows, "messages": [(*row[:-5], json.loads(row[-5]), *row[-4:]) for row in rows["messages"]]}


async def walk(views: Projections, thread: UUID, limit: int) -> tuple[list[str], list[str]]:
    forward: list[str] = []
    page = await views.messages(thread, limit=limit)
    while True:
        forward.extend(m.message_id for m in page.messages)
        if not page.has_more:
            break
        page = await views.messages(thread, limit=limit, after=page.after)
    backward: list[str] = []
    page = await views.messages(thread, limit=limit, last=True)
    while True:
        backward[:0] = [m.message_id for m in page.messages]
        if not page.has_more:
            break
        page = await views.messages(thread, limit=limit, before=page.before)
    return forward, backward


async def check(dsn: str, threads: list[list[Any]], limit: int) -> None:
    ledger = await projections.connect(dsn, tail=False)
    conn = await asyncpg.connect(dsn)
    try:
        thread_ids = await append_all(ledger, threads)
        events = [e for thread in thread_ids for e in await ledger.read_thread(thread)]
        inline = as_stored(await table_rows(conn, thread_ids))
        assert inline == {**expected(events), "usage_hourly": inline["usage_hourly"]}
        every_event = [e for thread in await conn.fetchval("SELECT array_agg(thread_id) FROM threads") for e in await ledger.read_thread(thread)]
        assert sorted(inline["usage_hourly"], key=rollup_order) == expected_rollup(every_event)

        views = Projections(ledger)
        for thread in thread_ids:
            in_order = [row[1] for row in sorted(inline["messages"], key=lambda r: (r[2], r[3])) if row[0] == thread]
            forward, backward = await walk(views, thread, limit)
            assert forward == in_order and backward == in_order
            calls = [row for row in inline["llm_calls"] if row[0] == thread]
            totals = await views.token_usage(thread_id=thread)
            assert totals.calls == len(calls)
            assert totals.unknown_usage_calls == sum(1 for row in calls if not row[7])
            for i, name in enumerate(usage_fold.TOKEN_FIELDS):
                assert totals.tokens[name] == sum(row[8 + i] or 0 for row in calls)
            by_status = await views.usage_by("status", thread_id=thread)
            assert sum(t.calls for t in by_status.values()) == totals.calls

        everything = await table_rows(conn)
        await rebuild(conn)
        assert await table_rows(conn) == everything
    finally:
        await conn.close()
        await ledger.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(threads=histories, limit=st.integers(1, 4))
def test_inline_equals_folds_and_rebuild(dsn: str, threads: list[list[Any]], limit: int) -> None:
    in_own_loop(check(dsn, threads, limit))
