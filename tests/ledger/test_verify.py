"""The hash chain catches tampering with stored events."""

from __future__ import annotations

import asyncio

import asyncpg

from graphledger.ledger import Ledger, RunRef


async def finished_run(ledger: Ledger, n: int = 8) -> RunRef:
    thread = await ledger.create_thread()
    ref = RunRef(thread, (await ledger.create_run(thread, payload={"input": 1})).run_id)
    await asyncio.gather(*(ledger.submit(ref, "stream:values", {"i": i}) for i in range(n)))
    await ledger.append(ref, "run.succeeded", {"ok": True})
    return ref


async def tamper(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """Change stored events behind the ledger's back, as a superuser or table owner could."""
    async with conn.transaction():
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(sql, *args)
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


async def test_intact_run_verifies(ledger: Ledger) -> None:
    ref = await finished_run(ledger)
    report = await ledger.verify(ref.run_id)
    assert report.ok and report.events == 10 and report.first_bad_seq is None


async def test_edited_payload_is_caught(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await finished_run(ledger)
    await tamper(conn, "UPDATE events SET data = '{\"i\":999}' WHERE run_id = $1 AND seq = 5", ref.run_id)
    report = await ledger.verify(ref)
    assert not report.ok and report.first_bad_seq == 5


async def test_edited_kind_or_timestamp_is_caught(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await finished_run(ledger)
    await tamper(conn, "UPDATE events SET kind = 'run.failed' WHERE run_id = $1 AND seq = 10", ref.run_id)
    assert (await ledger.verify(ref)).first_bad_seq == 10
    other = await finished_run(ledger)
    await tamper(conn, "UPDATE events SET ts = ts - interval '1 second' WHERE run_id = $1 AND seq = 2", other.run_id)
    assert (await ledger.verify(other)).first_bad_seq == 2


async def test_removed_events_are_caught(ledger: Ledger, conn: asyncpg.Connection) -> None:
    middle = await finished_run(ledger)
    await tamper(conn, "DELETE FROM events WHERE run_id = $1 AND seq = 4", middle.run_id)
    assert (await ledger.verify(middle)).first_bad_seq == 5
    end = await finished_run(ledger)
    await tamper(conn, "DELETE FROM events WHERE run_id = $1 AND seq = 10", end.run_id)
    report = await ledger.verify(end)
    assert not report.ok and report.first_bad_seq == 10 and "missing" in (report.reason or "")


async def test_rehashed_forgery_is_caught_by_the_next_link(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await finished_run(ledger)
    # Replace the stored hash too: the next event's link no longer matches.
    await tamper(conn, "UPDATE events SET data = '{\"i\":1}', hash = sha256('x') WHERE run_id = $1 AND seq = 3", ref.run_id)
    assert (await ledger.verify(ref)).first_bad_seq == 3
