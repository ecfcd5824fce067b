"""The migrations build exactly the Core metadata, and the log is append-only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import uuid4

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

import graphledger.projections.schema  # noqa: F401  (registers the projection tables)
from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.migrate import sqlalchemy_url, upgrade
from graphledger.ledger.schema import metadata


async def test_upgrade_head_equals_the_metadata(dsn: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_upgrade_is_idempotent(dsn: str) -> None:
    upgrade(dsn)  # already at head: nothing to do, no error


async def test_update_delete_and_truncate_are_rejected(ledger: Ledger, conn: asyncpg.Connection) -> None:
    thread = await ledger.create_thread()
    created = await ledger.create_run(thread)
    ref = RunRef(thread, created.run_id)
    for statement in (
        "UPDATE events SET data = '{}' WHERE run_id = $1",
        "UPDATE events SET kind = 'run.failed' WHERE run_id = $1",
        "DELETE FROM events WHERE run_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement, ref.run_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("TRUNCATE events")
    assert [e.data for e in await ledger.read_run(ref)] == [created.data]


async def test_every_unique_key_names_the_thread(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        """
        SELECT c.conrelid::regclass::text AS tbl, c.conname, array_agg(a.attname::text) AS cols
        FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.contype IN ('p', 'u') AND c.conrelid::regclass::text IN ('threads', 'runs', 'events', 'run_status', 'llm_calls', 'messages', 'run_secrets')
        GROUP BY 1, 2
        """
    )
    assert {row["tbl"] for row in rows} == {"threads", "runs", "events", "run_status", "llm_calls", "messages", "run_secrets"}
    assert all("thread_id" in row["cols"] for row in rows), rows


async def test_run_needs_an_existing_thread(ledger: Ledger) -> None:
    from graphledger.ledger import ThreadNotFound

    with pytest.raises(ThreadNotFound):
        await ledger.create_run(uuid4())


@asynccontextmanager
async def database_at(server_dsn: str, revision: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A database of its own, migrated to ``revision``, and a connection to it; dropped afterwards."""
    from tests.conftest import _admin, drop_database, with_database

    name = f"graphledger_m{revision}_{uuid4().hex[:8]}"
    await _admin(server_dsn, f"CREATE DATABASE {name}")
    dsn = with_database(server_dsn, name)
    try:
        upgrade(dsn, revision)
        conn = await asyncpg.connect(dsn)
        try:
            yield dsn, conn
        finally:
            await conn.close()
    finally:
        await drop_database(server_dsn, name)


async def test_migration_0013_rolls_up_the_calls_already_projected(server_dsn: str) -> None:
    from datetime import datetime, timezone

    async with database_at(server_dsn, "0012") as (dsn, conn):
        thread, run = uuid4(), uuid4()
        at = datetime(2026, 3, 1, 10, 20, tzinfo=timezone.utc)
        await conn.execute(
            "INSERT INTO run_status (thread_id, run_id, status, status_seq, assistant_id, attempt) VALUES ($1, $2, 'success', 9, 'agent', 1)",
            thread, run,
        )
        for call, seq, tokens in (("a", 3, 10), ("b", 5, None)):
            await conn.execute(
                "INSERT INTO llm_calls (thread_id, run_id, call_id, seq, ts, model, caller, usage_known, input_tokens) "
                "VALUES ($1, $2, $3, $4, $5, 'm', 'agent', $6, $7)",
                thread, run, call, seq, at, tokens is not None, tokens,
            )
        upgrade(dsn)
        rows = [dict(r) for r in await conn.fetch("SELECT * FROM usage_hourly")]
    assert rows == [{
        "hour": datetime(2026, 3, 1, 10, tzinfo=timezone.utc), "model": "m", "provider": None, "caller": "agent", "assistant_id": "agent",
        "status": "success", "identity": None, "calls": 2, "unknown_usage_calls": 1, "runs": 1, "input_tokens": 10, "output_tokens": 0,
        "total_tokens": 0, "cache_read": 0, "cache_creation": 0, "reasoning": 0,
    }]


async def test_migration_0018_carries_the_leaves_over_and_back(server_dsn: str) -> None:
    from alembic import command

    from graphledger.ledger.migrate import alembic_config

    columns = "leaf_index, tx::text AS tx, global_position, thread_id, run_id, seq, hash"
    async with database_at(server_dsn, "0017") as (dsn, conn):
        runs = [(uuid4(), uuid4()) for _ in range(3)]
        for i in range(200):  # 600 events, three runs interleaved: leaves in three tiles, the last partial
            for n, (thread, run) in enumerate(runs):
                await conn.execute(
                    "INSERT INTO events (thread_id, run_id, seq, kind, data, ts, hash) VALUES ($1, $2, $3, 'stream:messages', '{}', now(), $4)",
                    thread, run, i + 1, bytes([n, i % 256]) * 16,
                )
        await conn.execute(
            "INSERT INTO merkle_leaves SELECT row_number() OVER (ORDER BY tx, global_position) - 1, tx, global_position, thread_id, run_id, seq, hash FROM events"
        )
        before = [dict(r) for r in await conn.fetch(f"SELECT {columns} FROM merkle_leaves ORDER BY leaf_index")]
        upgrade(dsn)
        rows = await conn.fetch("SELECT first_leaf, leaves, last_position FROM merkle_entries ORDER BY first_leaf")
        assert [(r["first_leaf"], r["leaves"]) for r in rows] == [(0, 256), (256, 256), (512, 88)]
        assert [r["last_position"] for r in rows] == [before[255]["global_position"], before[511]["global_position"], before[599]["global_position"]]
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM merkle_entries")
        ledger = await Ledger.connect(dsn, tail=False, pool_size=1)
        try:
            async with ledger.session() as session:
                for leaf in (0, 1, 255, 256, 599):
                    assert await session.log.leaf(before[leaf]["thread_id"], before[leaf]["run_id"], before[leaf]["seq"]) == leaf
        finally:
            await ledger.close()
        await asyncio.to_thread(command.downgrade, alembic_config(dsn), "0017")  # alembic runs its own event loop
        after = [dict(r) for r in await conn.fetch(f"SELECT {columns} FROM merkle_leaves ORDER BY leaf_index")]
    assert after == before


async def test_migration_0019_marks_the_threads_stateless_runs_left_behind(server_dsn: str) -> None:
    """Threads not deleted whose only user run asked for ``on_completion: delete`` are due for deletion; no others."""
    from alembic import command

    from graphledger.ledger.migrate import alembic_config

    async with database_at(server_dsn, "0018") as (dsn, conn):
        async def thread(*runs: tuple[str | None, str | None], deleted: bool = False) -> tuple[object, list[object]]:
            """A thread with runs given as (on_completion, command); a command's run records the first run, as a webhook's does."""
            thread_id = uuid4()
            await conn.execute("INSERT INTO threads (thread_id, deleted_at) VALUES ($1, CASE WHEN $2 THEN now() END)", thread_id, deleted)
            ids: list[object] = []
            for on_completion, record in runs:
                run_id = uuid4()
                record_of = ids[0] if record == "deliver_webhook" else None
                await conn.execute(
                    "INSERT INTO runs (thread_id, run_id, status, command, record_of) VALUES ($1, $2, 'success', $3, $4)",
                    thread_id, run_id, record, record_of,
                )
                data = {"assistant_id": "demo", **({"on_completion": on_completion} if on_completion else {}), **({"command": record} if record else {})}
                await conn.execute(
                    "INSERT INTO events (thread_id, run_id, seq, kind, data, ts, hash) VALUES ($1, $2, 1, 'run.created', $3::json, now(), $4)",
                    thread_id, run_id, json.dumps(data), bytes(32),
                )
                ids.append(run_id)
            return thread_id, ids

        left, (run,) = await thread(("delete", None))
        with_record, (recorded, _) = await thread(("delete", None), (None, "deliver_webhook"))
        deleted, _ = await thread(("delete", None), deleted=True)
        kept, _ = await thread(("delete", None), (None, None))
        updated, _ = await thread(("delete", None), (None, "update_state"))
        keep, _ = await thread(("keep", None))
        bound, _ = await thread((None, None))
        upgrade(dsn)
        marks = dict(await conn.fetch("SELECT thread_id, delete_after_run FROM threads"))
        assert marks == {left: run, with_record: recorded, deleted: None, kept: None, updated: None, keep: None, bound: None}
        await asyncio.to_thread(command.downgrade, alembic_config(dsn), "0018")
        assert "delete_after_run" not in {r["column_name"] for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'threads'")}
