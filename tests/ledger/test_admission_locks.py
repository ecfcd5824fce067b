"""An admission's locks in one statement: the thread's row, then its active runs; none of them while a budget is defined."""

from __future__ import annotations

from uuid import uuid4

import asyncpg
import pytest

from graphledger.ledger import Ledger, ThreadNotFound
from graphledger.ledger.threads import Visibility
from tests.ledger.helpers import new_run


async def _locked(conn: asyncpg.Connection, sql: str, *args: object) -> bool:
    """Whether another transaction holds the row lock ``sql`` (a ``FOR UPDATE NOWAIT`` select) asks for."""
    try:
        async with conn.transaction():
            await conn.fetch(sql, *args)
    except asyncpg.LockNotAvailableError:
        return True
    return False


async def test_the_thread_and_its_active_runs_are_locked_and_returned(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)  # pending: active
    async with ledger.transaction() as tx:
        deleted, active = await tx.heads.admission_locks(ref.thread_id)
        assert (deleted, [(r.run_id, s) for r, s in active]) == (False, [(ref.run_id, "pending")])
        assert await _locked(conn, "SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE NOWAIT", ref.thread_id)
        assert await _locked(conn, "SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE NOWAIT", ref.run_id)
        assert await tx.heads.admission_locks_unbudgeted(ref.thread_id) == (deleted, active)
    with pytest.raises(ThreadNotFound):
        async with ledger.transaction() as tx:
            await tx.heads.admission_locks(uuid4())
    with pytest.raises(ThreadNotFound):
        async with ledger.transaction() as tx:
            await tx.heads.admission_locks_unbudgeted(uuid4())
    hidden = Visibility(contains='{"owner": "someone else"}', exact=None)
    with pytest.raises(ThreadNotFound):
        async with ledger.transaction() as tx:
            await tx.heads.admission_locks_unbudgeted(ref.thread_id, hidden)


class _RolledBack(Exception):
    pass


async def test_with_a_budget_defined_nothing_is_locked(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    with pytest.raises(_RolledBack):
        async with ledger.transaction() as tx:  # the budget is this transaction's own, and rolled back
            await tx.connection.execute(
                "INSERT INTO budgets (name, definition, set_by) VALUES ('locks-test', '{\"limit\": 1}'::jsonb, 'test')"
            )
            assert await tx.heads.admission_locks_unbudgeted(ref.thread_id) is None
            assert not await _locked(conn, "SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE NOWAIT", ref.thread_id)
            assert not await _locked(conn, "SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE NOWAIT", ref.run_id)
            assert await tx.heads.admission_locks_unbudgeted(uuid4()) is None  # not even looked for
            raise _RolledBack
    assert await conn.fetchval("SELECT count(*) FROM budgets") == 0


@pytest.mark.parametrize("method", ["admission_locks", "admission_locks_unbudgeted"])
async def test_an_admission_that_waited_for_the_thread_sees_the_run_admitted_before_it(
    ledger: Ledger, conn: asyncpg.Connection, method: str
) -> None:
    """The active runs are read after the thread's row is locked, so a run committed while this waited is among them."""
    import asyncio

    from graphledger.ledger import RunRef

    first = await new_run(ledger)
    await ledger.append(first, "run.succeeded", {})  # the thread is idle
    second = RunRef(first.thread_id, uuid4())
    waiting: asyncio.Task[tuple[bool, list[tuple[RunRef, str]]] | None]

    async def locks() -> tuple[bool, list[tuple[RunRef, str]]] | None:
        async with ledger.transaction() as tx:
            found: tuple[bool, list[tuple[RunRef, str]]] | None = await getattr(tx.heads, method)(first.thread_id)
            return found

    async with ledger.transaction() as tx:  # an admission in flight on the thread
        await tx.heads.admission_locks(first.thread_id)
        await tx.create_run(second, {"input": "hi"})
        waiting = asyncio.create_task(locks())
        for _ in range(200):
            if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid' AND datname = current_database()"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the second admission should be waiting for the thread's row")
    found = await asyncio.wait_for(waiting, 10)
    assert found is not None
    deleted, active = found
    assert not deleted and active == [(second, "pending")]
