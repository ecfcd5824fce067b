"""LangGraph's PostgreSQL store on the ledger's database, beside the checkpointer in the ``langgraph`` schema.

The store holds items a graph keeps across threads (memories, preferences,
documents), under a namespace (a tuple of labels) and a key. Its tables
(``store``, ``store_migrations``) are created and migrated by
``AsyncPostgresStore.setup()``, run by :func:`setup` in ``graphledger
migrate`` and ``serve`` after the Alembic migrations, under the checkpointer's
setup lock: the store package owns its schema and its versions, as the
checkpointer does. Every run's graph gets the store (``store: BaseStore`` in
a node, ``get_store()``) unless it was compiled with its own, and the
``/store`` routes read and write the same items.

Items written with a ``ttl`` (minutes) expire: expired items are no longer
returned (``omit_expired``), a read refreshes an item's expiry unless it asks
not to, and a sweeper of each server process deletes expired rows every
:data:`SWEEP_MINUTES` minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from langgraph.store.base import InvalidNamespaceError, TTLConfig
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from graphledger.ledger.errors import DatabaseUnavailable
from graphledger.runs.checkpoint import SCHEMA, TRANSIENT, setup_locked
from graphledger.runs.errors import InvalidRequest

T = TypeVar("T")

SWEEP_MINUTES = 5
TTL = TTLConfig(refresh_on_read=True, omit_expired=True, sweep_interval_minutes=SWEEP_MINUTES)
_OPTIONS = f"-c search_path={SCHEMA}"
REQUEST_TIMEOUT = 10.0
"""Seconds a request's store operation may take before the database is reported unavailable."""


async def setup(dsn: str) -> None:
    """Create or migrate the store's tables (idempotent; safe with concurrent callers and with the checkpointer's setup)."""
    await setup_locked(dsn, AsyncPostgresStore)


@asynccontextmanager
async def store(dsn: str, *, max_size: int = 5, sweep: bool = True) -> AsyncIterator[AsyncPostgresStore]:
    """The store on a pool of ``dsn`` (set up by :func:`setup`), with its TTL sweeper running while open (unless not ``sweep``)."""
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row, "options": _OPTIONS}
    pool: AsyncConnectionPool[AsyncConnection[dict[str, object]]] = AsyncConnectionPool(
        dsn, min_size=1, max_size=max_size, kwargs=kwargs, open=False, check=AsyncConnectionPool.check_connection
    )
    async with pool:
        found = AsyncPostgresStore(pool, ttl=TTL)
        if sweep:
            await found.start_ttl_sweeper()
        try:
            yield found
        finally:
            await found.stop_ttl_sweeper(timeout=5.0)


async def call(operation: Awaitable[T], *, timeout: float = REQUEST_TIMEOUT) -> T:
    """A request's store operation, its failures translated.

    An invalid namespace becomes :class:`InvalidRequest`; a lost, refused or
    slow database becomes :class:`DatabaseUnavailable`.
    """
    try:
        async with asyncio.timeout(timeout):
            return await operation
    except InvalidNamespaceError as exc:
        raise InvalidRequest(str(exc)) from exc
    except (*TRANSIENT, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
