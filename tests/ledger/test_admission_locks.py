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
