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
