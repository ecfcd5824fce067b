"""The access log: entries chained in order, concurrent readers recorded once each, tampering found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from graphledger.ledger import Ledger
from graphledger.ledger.access import link
from graphledger.ledger.chain import GENESIS
from tests.conftest import drop_database, fresh_database, with_database


async def record(ledger: Ledger, identity: str | None, action: str = "export", **resource: str) -> None:
    async with ledger.transaction() as tx:
        actor = {"identity": identity, "permissions": []} if identity else None
        await tx.access.record(actor=actor, action=action, resource=resource, client="127.0.0.1")


async def verify(ledger: Ledger) -> tuple[bool, int, int | None, str | None]:
    async with ledger.transaction(isolation="repeatable_read", readonly=True) as tx:
        report = await tx.access.verify()
    return report.ok, report.entries, report.first_bad, report.reason


async def test_concurrent_entries_take_consecutive_positions_and_chain(ledger: Ledger, conn: asyncpg.Connection) -> None:
    before = await conn.fetchval("SELECT position FROM access_log_head")
    await asyncio.gather(*(record(ledger, f"user-{i % 3}", run_id=str(i)) for i in range(40)))
    rows = await conn.fetch("SELECT position, ts, data::text AS data, hash FROM access_log WHERE position > $1 ORDER BY position", before)
    assert [r["position"] for r in rows] == list(range(before + 1, before + 41))
    previous = bytes(await conn.fetchval("SELECT hash FROM access_log WHERE position = $1", before)) if before else GENESIS
    for row in rows:
        assert link(previous, row["position"], row["ts"], row["data"]) == bytes(row["hash"])
        previous = bytes(row["hash"])
    assert await verify(ledger) == (True, before + 40, None, None)
    async with ledger.session() as session:
        mine = await session.access.list(identity="user-1", limit=1000)
    assert mine and all(e.data["actor"]["identity"] == "user-1" for e in mine)
    assert [e.position for e in mine] == sorted((e.position for e in mine), reverse=True)


async def test_the_log_is_append_only(ledger: Ledger, conn: asyncpg.Connection) -> None:
    await record(ledger, "alice")
    for statement in ("UPDATE access_log SET data = '{}'", "DELETE FROM access_log", "TRUNCATE access_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)


@pytest.fixture
async def own(server_dsn: str, template_db: str) -> AsyncIterator[tuple[str, Ledger]]:
    """A database of this test's own: tampering must not leak into another test's log."""
    name = await fresh_database(server_dsn, template_db)
    dsn = with_database(server_dsn, name)
    try:
        async with await Ledger.connect(dsn, tail=False) as ledger:
            yield dsn, ledger
    finally:
        await drop_database(server_dsn, name)


@pytest.mark.parametrize("tamper", ["edit", "delete-last", "delete-middle"])
async def test_tampering_with_the_trigger_disabled_is_found(own: tuple[str, Ledger], tamper: str) -> None:
    dsn, ledger = own
    for i in range(5):
        await record(ledger, "mallory", run_id=str(i))
    assert (await verify(ledger))[0]
    conn = await asyncpg.connect(dsn)
    try:
        last = await conn.fetchval("SELECT max(position) FROM access_log")
        await conn.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_append_only")
        if tamper == "edit":
            await conn.execute("""UPDATE access_log SET data = '{"action":"nothing"}' WHERE position = $1""", last - 2)
        elif tamper == "delete-last":
            await conn.execute("DELETE FROM access_log WHERE position = $1", last)
        else:
            await conn.execute("DELETE FROM access_log WHERE position = $1", last - 2)
        ok, _, first_bad, reason = await verify(ledger)
        assert not ok and first_bad == (last if tamper == "delete-last" else last - 2), reason
    finally:
        await conn.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_append_only")
        await conn.close()
