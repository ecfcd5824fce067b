"""LangGraph's PostgreSQL checkpointer on the ledger's database, in its own schema.

Thread state lives where LangGraph keeps it: the tables of
``langgraph-checkpoint-postgres``, created and migrated by its own ``setup()``
in the schema ``langgraph`` (made by migration 0003), so they never mix with
the ledger's tables. Every run passes its id as ``config["metadata"]["run_id"]``,
which LangGraph copies into each checkpoint's metadata: a rollback deletes the
checkpoints a run wrote, which restores the thread's state from before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

SCHEMA = "langgraph"
SETUP_LOCK = 7_426_017_314  # one setup at a time per database (servers may start together)

ROLLBACK_SQL = f"""
WITH gone AS (
    DELETE FROM {SCHEMA}.checkpoints WHERE thread_id = $1 AND metadata ->> 'run_id' = $2
    RETURNING checkpoint_ns, checkpoint_id
)
DELETE FROM {SCHEMA}.checkpoint_writes w USING gone g
WHERE w.thread_id = $1 AND w.checkpoint_ns = g.checkpoint_ns AND w.checkpoint_id = g.checkpoint_id
"""
FORGET_SQL = [f"DELETE FROM {SCHEMA}.{table} WHERE thread_id = $1" for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints")]
COUNT_SQL = f"SELECT count(*) FROM {SCHEMA}.checkpoints WHERE thread_id = $1 AND metadata ->> 'run_id' = $2"

_OPTIONS = f"-c search_path={SCHEMA}"


async def setup(dsn: str) -> None:
    """Create or migrate the checkpointer's tables (idempotent; safe with concurrent callers)."""
    async with await AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row, options=_OPTIONS) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK,))
        try:
            await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))


@asynccontextmanager
async def saver(dsn: str, *, max_size: int = 10) -> AsyncIterator[AsyncPostgresSaver]:
    """A checkpointer on a pool of ``dsn`` (set up by :func:`setup`)."""
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row, "options": _OPTIONS}
    async with AsyncConnectionPool(dsn, min_size=1, max_size=max_size, kwargs=kwargs, open=False) as pool:
        yield AsyncPostgresSaver(pool)  # type: ignore[arg-type]


async def rollback(conn: asyncpg.Connection, thread_id: UUID, run_id: UUID) -> int:
    """Delete the checkpoints run ``run_id`` wrote on its thread; return how many there were."""
    async with conn.transaction():
        count: int = await conn.fetchval(COUNT_SQL, str(thread_id), str(run_id))
        await conn.execute(ROLLBACK_SQL, str(thread_id), str(run_id))
    return count


async def forget(conn: asyncpg.Connection, thread_id: UUID) -> None:
    """Delete every checkpoint of a thread (its state), in the caller's transaction."""
    for sql in FORGET_SQL:
        await conn.execute(sql, str(thread_id))
