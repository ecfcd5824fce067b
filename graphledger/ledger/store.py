"""The ledger: one object that owns the pool, the group-commit writer and the tail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from graphledger.ledger import chain, read
from graphledger.ledger.append import Projector, Writer, append_at, insert_run, load_heads
from graphledger.ledger.errors import InvalidEvent, RunNotFound, ThreadNotFound, translate
from graphledger.ledger.events import RUN_CREATED, Event, NewEvent, RunRef, jsonb_text, validate_kind
from graphledger.ledger.read import FeedCursor
from graphledger.ledger.tail import Hub

INSERT_THREAD_SQL = """
INSERT INTO threads (thread_id, metadata) VALUES ($1, $2::jsonb)
ON CONFLICT (thread_id) DO NOTHING
RETURNING thread_id
"""

APPLICATION_NAME = "graphledger"


class Ledger:
    """Append to, read, tail and verify the event log of one database."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, writer: Writer, hub: Hub | None, projector: Projector | None = None) -> None:
        self.dsn = dsn
        self.pool = pool
        self.writer = writer
        self.hub = hub
        self.projector = projector

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        pool_size: int = 10,
        tail: bool = True,
        max_batch: int = 4096,
        max_delay: float = 0.0,
        poll_interval: float = 2.0,
        writer_class: type[Writer] = Writer,
        projector: Projector | None = None,
    ) -> Ledger:
        """Open a pool on ``dsn`` (already migrated), start the writer and, with ``tail``, the hub.

        A ``projector`` writes read models in the same statement as every
        append (``graphledger.projections.connect`` passes the project's own).
        """
        settings = {"application_name": APPLICATION_NAME}
        with translate():
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size, server_settings=settings)
        hub = Hub(dsn, poll_interval=poll_interval) if tail else None
        writer = writer_class(
            lambda: asyncpg.connect(dsn, server_settings=settings),
            max_batch=max_batch,
            max_delay=max_delay,
            on_commit=hub.publish if hub else None,
            on_flight=hub.in_flight if hub else None,
            projector=projector,
        )
        ledger = cls(dsn, pool, writer, hub, projector)
        try:
            writer.start()
            if hub is not None:
                with translate():
                    await hub.start()
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def close(self) -> None:
        await self.writer.close()
        if self.hub is not None:
            await self.hub.close()
        await self.pool.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing ---------------------------------------------------------------------

    async def create_thread(self, thread_id: UUID | None = None, metadata: Mapping[str, Any] | None = None) -> UUID:
        """Create a thread (a no-op if it exists); return its id."""
        thread_id = thread_id or uuid4()
        async with self.pool.acquire() as conn:
            await conn.execute(INSERT_THREAD_SQL, thread_id, jsonb_text(dict(metadata or {}), "thread metadata"))
        return thread_id

    async def create_run(
        self,
        thread_id: UUID,
        run_id: UUID | None = None,
        *,
        assistant_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Event:
        """Create a run and append its ``run.created`` event (durable on return)."""
        ref = RunRef(thread_id, run_id or uuid4())
        created = NewEvent.of(RUN_CREATED, dict(payload or {}))
        async with self.pool.acquire() as conn:
            try:
                with translate():
                    event = await insert_run(
                        conn, ref, created, assistant_id=assistant_id, metadata=jsonb_text(dict(metadata or {}), "run metadata"), projector=self.projector
                    )
                self.writer.seed(ref, event)
                if self.hub is not None:
                    self.hub.publish([event])
                return event
            except asyncpg.ForeignKeyViolationError:
                raise ThreadNotFound(f"thread {thread_id} not found") from None
            except asyncpg.UniqueViolationError:
                raise InvalidEvent(f"run {ref.run_id} already exists") from None

    async def append(self, ref: RunRef, kind: str, payload: Any, *, expected_seq: int | None = None) -> Event:
        """Append one event and wait until it is durable.

        With ``expected_seq`` the append is conditional on the run's head being
        exactly there (:class:`~graphledger.ledger.errors.Conflict` otherwise);
        without it, the event goes after whatever the head is, through the
        group-commit writer, flushed at once.
        """
        event = NewEvent.of(kind, payload)
        if expected_seq is None:
            with translate():
                return await self.writer.append(ref, event)
        async with self.pool.acquire() as conn:
            with translate():
                (stored,) = await append_at(conn, ref, [event], expected_seq, projector=self.projector)
        if self.hub is not None:
            self.hub.publish([stored])
        return stored

    def submit(self, ref: RunRef, kind: str, payload: Any) -> asyncio.Future[Event]:
        """Queue an event for the next group commit; await the result to know it is durable."""
        return self.writer.submit(ref, NewEvent.of(kind, payload))

    def feed(self, ref: RunRef, kind: str, payload: Any) -> None:
        """Queue a stream chunk without waiting; it is durable once a later awaited event of the run is."""
        self.writer.feed(ref, NewEvent.of(kind, payload))

    def feed_encoded(self, ref: RunRef, kind: str, data: str) -> None:
        """:meth:`feed` a payload already encoded as canonical JSON text (by :func:`~graphledger.ledger.events.encode_json`)."""
        self.writer.feed(ref, NewEvent(validate_kind(kind), data))

    # -- reading ---------------------------------------------------------------------

    async def run_ref(self, run_id: UUID) -> RunRef:
        async with self.pool.acquire() as conn:
            thread_id = await read.thread_of(conn, run_id)
        if thread_id is None:
            raise RunNotFound(f"run {run_id} not found")
        return RunRef(thread_id, run_id)

    async def read_run(self, ref: RunRef, after_seq: int = 0, limit: int = 10_000, *, kinds: Sequence[str] | None = None) -> list[Event]:
        async with self.pool.acquire() as conn:
            return await read.read_run(conn, ref, after_seq, limit, kinds=kinds)

    async def iter_run(self, ref: RunRef, after_seq: int = 0) -> AsyncIterator[Event]:
        """Every stored event of a run after ``after_seq``, in order, in pages: for runs of any length."""
        async with self.pool.acquire() as conn:
            async for event in read.iter_run(conn, ref, after_seq):
                yield event

    async def read_thread(self, thread_id: UUID, after_position: int = 0, limit: int = 10_000) -> list[Event]:
        async with self.pool.acquire() as conn:
            return await read.read_thread(conn, thread_id, after_position, limit)

    async def read_feed(self, after: FeedCursor = FeedCursor(), limit: int = 10_000) -> tuple[list[Event], FeedCursor]:
        async with self.pool.acquire() as conn:
            return await read.read_feed(conn, after, limit)

    async def tail(self, run: UUID | RunRef, after_seq: int = 0) -> AsyncIterator[Event]:
        """Every event of a run after ``after_seq``: stored ones first, then live ones, ending after the terminal event."""
        if self.hub is None:
            raise RuntimeError("this ledger was connected with tail=False")
        ref, last_seq, finished = await self.hub.head(run.run_id if isinstance(run, RunRef) else run)
        if isinstance(run, RunRef) and run.thread_id != ref.thread_id:
            raise RunNotFound(f"run {run.run_id} not found in thread {run.thread_id}")
        if finished and after_seq >= last_seq:
            return  # nothing after the terminal event, ever
        async for event in self.hub.follow(ref, after_seq):
            yield event

    async def verify(self, run: UUID | RunRef) -> chain.ChainReport:
        """Recompute a run's hash chain from the stored events; report the first bad event."""
        ref = run if isinstance(run, RunRef) else await self.run_ref(run)
        async with self.pool.acquire() as conn:
            head = (await load_heads(conn, [ref])).get(ref)
            if head is None:
                raise RunNotFound(f"run {ref.run_id} not found")
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                events = [e async for e in read.iter_run(conn, ref)]
        return chain.check(ref.run_id, events, head_hash=head.hash)

