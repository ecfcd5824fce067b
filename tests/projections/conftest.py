"""Fixtures for projections over a real database: a ledger that projects inline, and table snapshots."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from graphledger.ledger import Ledger
from graphledger.projections import Projections

TABLE_ORDER = {
    "run_status": "thread_id, run_id",
    "llm_calls": "thread_id, run_id, call_id",
    "messages": "thread_id, message_id",
    "usage_hourly": "hour, model, provider, caller, assistant_id, status, identity",
}
UNTHREADED = {"usage_hourly": "calls <> 0"}
"""Tables without a thread column, and which of their rows count (rollup rows whose calls all moved away are zeros)."""


@pytest.fixture
def views(projected: Ledger) -> Projections:
    return Projections(projected)


async def table_rows(conn: asyncpg.Connection, threads: list[Any] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection row (of ``threads``, or all), in key order, to compare two builds."""
    rows = {}
    for table, order in TABLE_ORDER.items():
        if table in UNTHREADED:
            found = await conn.fetch(f"SELECT * FROM {table} WHERE {UNTHREADED[table]} ORDER BY {order} NULLS FIRST")
        elif threads is None:
            found = await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")
        else:
            found = await conn.fetch(f"SELECT * FROM {table} WHERE thread_id = ANY($1::uuid[]) ORDER BY {order}", threads)
        rows[table] = [tuple(row.values()) for row in found]
    return rows
