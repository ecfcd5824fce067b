"""The append statement: conditional on the head, nothing after the terminal event, durable on return."""

from __future__ import annotations

import asyncpg
import pytest

from graphledger.ledger import (
    Conflict,
    Ledger,
    RunFinished,
)
from tests.ledger.helpers import count_events, new_run


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


async def test_lifecycle_append_is_durable_on_return(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    event = await ledger.append(ref, "run.started", {"worker": "w1"})
    row = await conn.fetchrow("SELECT kind, data::text AS data FROM events WHERE run_id = $1 AND seq = $2", ref.run_id, event.seq)
    assert (row["kind"], row["data"]) == ("run.started", '{"worker":"w1"}')
    assert await conn.fetchval("SELECT status FROM runs WHERE run_id = $1", ref.run_id) == "running"


async def test_the_projected_append_statement_stays_prepared(dsn: str) -> None:
    """The append statement with every projection's merge is about 15 kB, asyncpg's default limit for its
    statement cache: past it, each append is parsed and planned again. On a pool of one connection, the
    second append must find it prepared under a name (unnamed statements are not listed; this query is short)."""
    from graphledger import projections
    from graphledger.ledger.statement import Statement
    from graphledger.ledger.store import CACHEABLE_STATEMENT_BYTES
    from graphledger.projections.project import Projector

    assert len(Statement(Projector()).projected_sql) < CACHEABLE_STATEMENT_BYTES // 4  # room to grow
    async with await projections.connect(dsn, pool_size=1, tail=False) as led:
        for _ in range(2):
            await new_run(led)
        async with led.session() as session:
            prepared = await session.connection.fetchval(
                "SELECT count(*) FROM pg_prepared_statements WHERE length(statement) > 10000 AND statement LIKE '%INSERT INTO events%'"
            )
        assert prepared >= 1


async def test_a_warm_pool_has_every_connection_open_and_its_appends_planned(dsn: str, conn: asyncpg.Connection) -> None:
    """PostgreSQL plans a prepared statement's first five executions for their values before it keeps a generic
    plan; a warm pool (``serve``'s) has done that on every connection before it serves, and written nothing."""
    from graphledger import projections
    from graphledger.ledger.store import PLANNED_EXECUTIONS

    before = await count_events(conn)
    runs = await conn.fetchval("SELECT count(*) FROM runs")
    async with await projections.connect(dsn, pool_size=3, tail=False, warm=True) as led:
        plans = []
        async with led.session() as first, led.session() as second, led.session() as third:  # three connections, none opened now
            for session in (first, second, third):
                plans.append(await session.connection.fetch(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%INSERT INTO events%' AND length(statement) > 10000"
                ))
            assert len({id(s.connection) for s in (first, second, third)}) == 3
        assert all(
            len(rows) == 2 and all(r["custom_plans"] == 5 and r["generic_plans"] == PLANNED_EXECUTIONS - 5 for r in rows) for rows in plans
        ), plans
        await new_run(led)  # and it serves
    assert await count_events(conn) == before + 1
    assert await conn.fetchval("SELECT count(*) FROM runs") == runs + 1
