"""Rebuilding projections from the log gives what was written inline, even while appends go on."""

from __future__ import annotations

import asyncio
import random
from uuid import uuid4

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunRef
from graphledger.projections import (
    InvalidArgument,
    Projections,
    RebuildRunning,
    rebuild,
)
from graphledger.projections.rebuild import REBUILD_LOCK

from .conftest import table_rows


async def workload(ledger: Ledger, runs: int, steps: int, seed: int) -> list[RunRef]:
    """Runs that start, stream, report usage, write messages (some replaced) and end."""
    rng = random.Random(seed)
    threads = [await ledger.create_thread() for _ in range(max(1, runs // 3))]
    refs = []
    for i in range(runs):
        thread = threads[i % len(threads)]
        created = await ledger.create_run(thread, payload={"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": f"q{i}", "id": f"h{i}"}]}})
        refs.append(RunRef(thread, created.run_id))

    async def drive(ref: RunRef) -> None:
        await ledger.append(ref, "run.started", {"worker": "w"})
        if rng.random() < 0.5:  # handed over to another worker mid-run
            ledger.feed(ref, "stream:messages", [{"content": "tok"}, {}])
            await ledger.append(ref, "run.released", {"worker": "w", "reason": "shutdown", "attempt": 1})
            await ledger.append(ref, "run.started", {"worker": "w2", "attempt": 2})
        for step in range(steps):
            ledger.feed(ref, "stream:messages", [{"content": "tok"}, {}])
            if step % 3 == 0:
                message_id = f"a{rng.randrange(4)}-{ref.run_id}"
                ledger.feed(ref, "stream:updates", {"agent": {"messages": [{"type": "ai", "content": f"v{step}", "id": message_id}]}})
            if step % 4 == 0:
                ledger.feed(ref, "llm.usage", {"call_id": f"c{rng.randrange(3)}", "model": rng.choice(["a", "b"]), "usage": {"input_tokens": step, "output_tokens": 1}})
            await asyncio.sleep(0)
        await ledger.append(ref, rng.choice(["run.succeeded", "run.interrupted", "run.failed"]), {})

    await asyncio.gather(*(drive(ref) for ref in refs))
    return refs


async def test_rebuild_equals_inline(projected: Ledger, conn: asyncpg.Connection) -> None:
    await workload(projected, runs=9, steps=30, seed=1)
    inline = await table_rows(conn)
    assert all(inline.values())
    report = await rebuild(conn)
    assert report.folded > 0 and report.events >= report.folded and report.projections == ("run_status", "token_usage", "messages")
    assert await table_rows(conn) == inline
    # The swapped-in tables are exactly what the migrations declare (names of keys and indexes included).
    constraints = await conn.fetch(
        "SELECT conname FROM pg_constraint WHERE contype IN ('p', 'u', 'c', 'f')"
        " AND conrelid::regclass::text IN ('run_status', 'llm_calls', 'messages') ORDER BY 1"
    )
    indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename IN ('run_status', 'llm_calls', 'messages') ORDER BY 1")
    assert [r[0] for r in constraints] == ["llm_calls_pkey", "messages_pkey", "messages_thread_position_key", "run_status_pkey"]
    assert [r[0] for r in indexes] == [
        "llm_calls_pkey", "llm_calls_ts_idx", "messages_pkey", "messages_run_position_idx", "messages_thread_position_key",
        "run_status_created_idx", "run_status_pkey",
    ]
    assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'graphledger_rebuild'") == 0


async def test_rebuild_of_one_projection_leaves_the_others(projected: Ledger, conn: asyncpg.Connection) -> None:
    await workload(projected, runs=3, steps=10, seed=2)
    before = await table_rows(conn)
    await conn.execute("SET session_replication_role = replica")  # a damaged read model, for the test
    await conn.execute("DELETE FROM messages WHERE position % 2 = 0")
    await conn.execute("UPDATE llm_calls SET input_tokens = 0")
    seen = []
    report = await rebuild(conn, ["messages"], progress=lambda done, total: seen.append((done, total)))
    after = await table_rows(conn)
    assert report.projections == ("messages",)
    assert after["messages"] == before["messages"]
    assert after["llm_calls"] != before["llm_calls"]  # not rebuilt: still damaged
    assert seen and seen[-1][0] == seen[-1][1]
    await rebuild(conn, ["token_usage"])
    assert await table_rows(conn) == before


async def test_rebuild_racing_live_appends(projected: Ledger, conn: asyncpg.Connection, dsn: str) -> None:
    await workload(projected, runs=6, steps=20, seed=3)
    stop = asyncio.Event()

    async def keep_appending() -> int:
        rounds = 0
        while not stop.is_set() or rounds < 3:
            await workload(projected, runs=3, steps=15, seed=100 + rounds)
            rounds += 1
        return rounds

    appender = asyncio.create_task(keep_appending())
    reports = []
    for _ in range(3):
        reports.append(await rebuild(conn))
        await asyncio.sleep(0.05)
    stop.set()
    await appender
    # Every event was folded once: the tables equal a rebuild made with nothing running.
    raced = await table_rows(conn)
    quiet = await asyncpg.connect(dsn)
    try:
        await rebuild(quiet)
    finally:
        await quiet.close()
    assert await table_rows(conn) == raced
    assert sum(report.caught_up for report in reports) > 0  # appends did land mid-rebuild


async def test_only_one_rebuild_at_a_time(conn: asyncpg.Connection, dsn: str) -> None:
    other = await asyncpg.connect(dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK)
        with pytest.raises(RebuildRunning):
            await rebuild(conn)
    finally:
        await other.close()


async def test_unknown_projection_is_refused_and_nothing_changes(projected: Ledger, conn: asyncpg.Connection) -> None:
    await workload(projected, runs=2, steps=5, seed=4)
    before = await table_rows(conn)
    for only in (["nonsense"], [], ["messages", "colour"]):
        with pytest.raises(InvalidArgument, match="projection"):
            await rebuild(conn, only)
    assert await table_rows(conn) == before


async def test_reads_work_after_a_swap(projected: Ledger, conn: asyncpg.Connection) -> None:
    refs = await workload(projected, runs=3, steps=6, seed=5)
    views = Projections(projected)
    before = await views.messages(refs[0].thread_id)
    await rebuild(conn)
    assert await views.messages(refs[0].thread_id) == before
    ref = RunRef(refs[0].thread_id, (await projected.create_run(refs[0].thread_id)).run_id)  # prepared statements re-plan
    await projected.append(ref, "stream:updates", {"agent": {"messages": [{"type": "ai", "content": "after", "id": str(uuid4())}]}})
    assert (await views.messages(refs[0].thread_id, last=True, limit=1)).messages[0].data["content"] == "after"

