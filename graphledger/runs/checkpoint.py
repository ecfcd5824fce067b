"""LangGraph's PostgreSQL checkpointer on the ledger's database, in its own schema.

Thread state lives where LangGraph keeps it: the tables of
``langgraph-checkpoint-postgres``, created and migrated by its own ``setup()``
in the schema ``langgraph`` (made by migration 0003), so they never mix with
the ledger's tables. Every run passes its id as ``config["metadata"]["run_id"]``,
which LangGraph copies into each checkpoint's metadata: a rollback deletes the
checkpoints a run wrote, which restores the thread's state from before it.

No secret is written to those tables (:class:`ResilientSaver`): values under
secret keys and URL passwords of the config LangGraph copies into a
checkpoint's metadata are replaced by ``[redacted]``, and so is every known
secret value of the run (:func:`scrubbing`) in the metadata, the channel
values and the pending writes. The graph itself keeps its config and state
as they are while it runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from graphledger.ledger.errors import DatabaseUnavailable
from graphledger.ledger.read import Connection
from graphledger.runs.secrets import REDACTED, Scrubber, is_secret_key, split_secrets, without_url_passwords
from graphledger.runs.secrets import strings as secret_strings

_log = logging.getLogger("graphledger.runs")
T = TypeVar("T")

TRANSIENT = (psycopg.OperationalError, PoolTimeout)
"""The checkpointer's failures that a database restart or outage causes (connection lost, refused, shutting down)."""
DEFAULT_OUTAGE_SECONDS = 600.0
"""How long a run waits out a database outage before the checkpointer's error reaches its graph."""

SCHEMA = "langgraph"
SETUP_LOCK = 7_426_017_314  # one setup at a time per database (servers may start together)

SNAPSHOTS = "thread_snapshots"
"""The snapshot documents of the checkpoints (:mod:`graphledger.runs.snapshots`): they go with their checkpoints."""
ROLLBACK_SQL = f"""
WITH gone AS (
    DELETE FROM {SCHEMA}.checkpoints WHERE thread_id = $1 AND metadata ->> 'run_id' = $2
    RETURNING checkpoint_ns, checkpoint_id
), writes AS (
    DELETE FROM {SCHEMA}.checkpoint_writes w USING gone g
    WHERE w.thread_id = $1 AND w.checkpoint_ns = g.checkpoint_ns AND w.checkpoint_id = g.checkpoint_id
)
DELETE FROM {SNAPSHOTS} s USING gone g
WHERE s.thread_id = $1 AND s.checkpoint_ns = g.checkpoint_ns AND s.checkpoint_id = g.checkpoint_id
"""
FORGET_SQL = [
    *(f"DELETE FROM {SCHEMA}.{table} WHERE thread_id = $1" for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints")),
    f"DELETE FROM {SNAPSHOTS} WHERE thread_id = $1",
]
COUNT_SQL = f"SELECT count(*) FROM {SCHEMA}.checkpoints WHERE thread_id = $1 AND metadata ->> 'run_id' = $2"
EXISTS_SQL = f"SELECT 1 FROM {SCHEMA}.checkpoints WHERE thread_id = $1 AND checkpoint_ns = '' AND checkpoint_id = $2"

_OPTIONS = f"-c search_path={SCHEMA}"


async def setup_locked(dsn: str, owner: Callable[[AsyncConnection[Any]], Any]) -> None:
    """Run ``owner(conn).setup()`` (a LangGraph package creating or migrating its tables in :data:`SCHEMA`) under :data:`SETUP_LOCK`."""
    async with await AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row, options=_OPTIONS) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK,))
        try:
            await owner(conn).setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))


async def setup(dsn: str) -> None:
    """Create or migrate the checkpointer's tables (idempotent; safe with concurrent callers)."""
    await setup_locked(dsn, AsyncPostgresSaver)


class ResilientSaver(AsyncPostgresSaver):
    """LangGraph's checkpointer, waiting out a database restart or outage instead of failing the run.

    Each call that fails with a connection error is tried again, backing off
    from ``min_backoff`` to ``max_backoff`` seconds, for up to
    ``outage_seconds``; only then does the error reach the graph. A retried
    write is safe: every statement of ``aput`` and ``aput_writes`` is an
    upsert keyed by the checkpoint's (or the write's) own id, so a write that
    committed before its reply was lost is written again to the same effect.
    """

    def __init__(
        self, pool: Any, *, outage_seconds: float = DEFAULT_OUTAGE_SECONDS, min_backoff: float = 0.1, max_backoff: float = 2.0
    ) -> None:
        super().__init__(pool)
        self.outage_seconds = outage_seconds
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.retries = 0

    async def _retried(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.outage_seconds
        delay = self.min_backoff
        while True:
            try:
                return await call()
            except TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise
                self.retries += 1
                _log.warning("checkpointer %s failed (%s); retrying in %.2f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._retried("read", functools.partial(AsyncPostgresSaver.aget_tuple, self, config))

    async def aput(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        scrubber = scrubber_of(config)
        config, metadata = scrubbed_config(config, scrubber), scrubbed_metadata(metadata, scrubber)
        if scrubber is not None:
            values = checkpoint["channel_values"]
            scrubbed = scrubber.object(values)
            if scrubbed is not values:
                checkpoint = {**checkpoint, "channel_values": scrubbed}
        return await self._retried("write", functools.partial(AsyncPostgresSaver.aput, self, config, checkpoint, metadata, new_versions))

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        scrubber = scrubber_of(config)
        if scrubber is not None:
            writes = [(channel, scrubber.object(value)) for channel, value in writes]
        config = scrubbed_config(config, scrubber)
        await self._retried("write", functools.partial(AsyncPostgresSaver.aput_writes, self, config, writes, task_id, task_path))


_scrubbers: dict[str, Scrubber] = {}
"""The scrubbers of the runs executing in this process, by run id (see :func:`scrubbing`)."""


@contextmanager
def scrubbing(run_id: UUID, scrubber: Scrubber | None) -> Iterator[None]:
    """While the block runs, what :class:`ResilientSaver` writes for run ``run_id`` has ``scrubber``'s values replaced.

    The saver finds the run by the ``run_id`` the run's config carries in
    ``configurable`` (every run's does, and its subgraphs inherit it).
    """
    if scrubber is None:
        yield
        return
    key = str(run_id)
    _scrubbers[key] = scrubber
    try:
        yield
    finally:
        if _scrubbers.get(key) is scrubber:
            del _scrubbers[key]


def scrubber_of(config: RunnableConfig) -> Scrubber | None:
    """The scrubber of the run a checkpointer call belongs to, with the values under secret keys of its config."""
    configurable = config.get("configurable") or {}
    run_id = configurable.get("run_id")
    registered = _scrubbers.get(str(run_id)) if run_id is not None else None
    found = [
        value for source in (configurable, config.get("metadata") or {})
        for key, value in source.items() if isinstance(key, str) and is_secret_key(key)
    ]
    if not found:
        return registered
    return Scrubber.of([*(registered.values if registered is not None else ()), *secret_strings(found)]) or registered


def _without_secrets(values: Mapping[str, Any], scrubber: Scrubber | None) -> dict[str, Any]:
    """Top-level ``values`` (which LangGraph copies into a checkpoint's metadata) without secrets."""
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(key, str) and is_secret_key(key) and not key.startswith("__"):
            value = REDACTED
        elif isinstance(value, str):
            value = without_url_passwords(value)
            if scrubber is not None:
                value = scrubber.string(value)
        kept[key] = value
    return kept


def scrubbed_config(config: RunnableConfig, scrubber: Scrubber | None) -> RunnableConfig:
    """A checkpointer call's config as the checkpointer may store it (the graph keeps the original)."""
    scrubbed = dict(config)
    for name in ("configurable", "metadata"):
        values = config.get(name)
        if isinstance(values, Mapping):
            scrubbed[name] = _without_secrets(values, scrubber)
    return scrubbed  # type: ignore[return-value]  # the same keys as the TypedDict it came from


def scrubbed_metadata(metadata: CheckpointMetadata, scrubber: Scrubber | None) -> CheckpointMetadata:
    kept, _, _ = split_secrets(dict(metadata))
    if scrubber is not None:
        kept = scrubber.object(kept)
    return kept  # type: ignore[no-any-return]  # the same keys as the TypedDict it came from


@asynccontextmanager
async def saver(dsn: str, *, max_size: int = 10, outage_seconds: float = DEFAULT_OUTAGE_SECONDS) -> AsyncIterator[ResilientSaver]:
    """A checkpointer on a pool of ``dsn`` (set up by :func:`setup`) that waits out outages of up to ``outage_seconds``.

    The pool checks a connection before handing it out, so one that died in
    an outage is replaced rather than failing the first call after it.
    """
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row, "options": _OPTIONS}
    pool = AsyncConnectionPool(
        dsn, min_size=1, max_size=max_size, kwargs=kwargs, open=False,
        check=AsyncConnectionPool.check_connection, reconnect_timeout=max(outage_seconds, 60.0),
    )
    async with pool:
        yield ResilientSaver(pool, outage_seconds=outage_seconds)


async def current_values(checkpointer: AsyncPostgresSaver, thread_id: UUID, *, timeout: float = 2.0) -> Any:
    """The thread's current state values (None without a checkpoint), for a request: no waiting out outages.

    Raises :class:`~graphledger.ledger.errors.DatabaseUnavailable` when the
    checkpointer cannot answer within ``timeout``.
    """
    config: RunnableConfig = {"configurable": {"thread_id": str(thread_id)}}
    try:
        async with asyncio.timeout(timeout):
            state = await AsyncPostgresSaver.aget_tuple(checkpointer, config)
    except (*TRANSIENT, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
    return state.checkpoint["channel_values"] if state is not None else None


async def rollback(conn: Connection, thread_id: UUID, run_id: UUID) -> int:
    """Delete the checkpoints run ``run_id`` wrote on its thread; return how many there were."""
    async with conn.transaction():
        count: int = await conn.fetchval(COUNT_SQL, str(thread_id), str(run_id))
        await conn.execute(ROLLBACK_SQL, str(thread_id), str(run_id))
    return count


async def written_by(conn: Connection, thread_id: UUID, run_id: UUID) -> int:
    """How many checkpoints run ``run_id`` has written on its thread (a released run with some resumes from them)."""
    count: int = await conn.fetchval(COUNT_SQL, str(thread_id), str(run_id))
    return count


async def exists(conn: Connection, thread_id: UUID, checkpoint_id: str) -> bool:
    """Whether the thread's graph has checkpoint ``checkpoint_id`` (a run may start from it)."""
    return await conn.fetchval(EXISTS_SQL, str(thread_id), checkpoint_id) is not None


async def forget(conn: Connection, thread_id: UUID) -> None:
    """Delete every checkpoint of a thread (its state), in the caller's transaction."""
    for sql in FORGET_SQL:
        await conn.execute(sql, str(thread_id))


# A copy names the new thread in every row; in the checkpoints' metadata too,
# where LangGraph keeps the config's thread_id. Checkpoint ids are kept, so a
# copy's history names the same checkpoints as its source's.
COPY_SQL = [
    f"""INSERT INTO {SCHEMA}.checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
    SELECT $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
           CASE WHEN metadata ? 'thread_id' THEN jsonb_set(metadata, '{{thread_id}}', to_jsonb($2::text)) ELSE metadata END
    FROM {SCHEMA}.checkpoints WHERE thread_id = $1""",
    f"""INSERT INTO {SCHEMA}.checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT $2, checkpoint_ns, channel, version, type, blob FROM {SCHEMA}.checkpoint_blobs WHERE thread_id = $1""",
    f"""INSERT INTO {SCHEMA}.checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path)
    SELECT $2, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path
    FROM {SCHEMA}.checkpoint_writes WHERE thread_id = $1""",
]
LATEST_SQL = f"SELECT max(checkpoint_id) FROM {SCHEMA}.checkpoints WHERE thread_id = $1 AND checkpoint_ns = ''"


async def copy(conn: Connection, source: UUID, target: UUID) -> int:
    """Copy every checkpoint of thread ``source`` (with its blobs and pending writes) to ``target``, in the caller's transaction.

    Returns how many checkpoints were copied.
    """
    copied = 0
    for n, sql in enumerate(COPY_SQL):
        status = await conn.execute(sql, str(source), str(target))
        if n == 0:
            copied = int(status.rsplit(" ", 1)[-1])
    return copied


async def latest_id(conn: Connection, thread_id: UUID) -> str | None:
    """The id of the thread's latest root checkpoint (None: it has none)."""
    found: str | None = await conn.fetchval(LATEST_SQL, str(thread_id))
    return found
