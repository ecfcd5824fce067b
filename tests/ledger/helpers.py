"""Runs and checks the ledger tests share."""

from __future__ import annotations

from typing import Any

import asyncpg

from graphledger.ledger import Ledger, RunRef


async def new_run(ledger: Ledger) -> RunRef:
    thread = await ledger.create_thread()
    created = await ledger.create_run(thread, payload={"input": "hi"})
    return RunRef(thread, created.run_id)


async def count_events(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM events")


def assert_gapless(events: list[Any]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
