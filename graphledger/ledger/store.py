"""The ledger: one object that owns the pool, the group-commit writer and the tail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg

from graphledger.ledger import chain, read
from graphledger.ledger.errors import RunNotFound, translate
from graphledger.ledger.events import (
    EXECUTOR_CALLER,
    Event,
    NewEvent,
    RunRef,
    is_note,
    validate_kind,
)
from graphledger.ledger.hints import Hints
from graphledger.ledger.read import FeedCursor
from graphledger.ledger.session import Session, Transaction
from graphledger.ledger.statement import Batch, Head, Projector, Statement, chain_onto, utcnow
from graphledger.ledger.tail import Hub
from graphledger.ledger.writer import Writer

Isolation = Literal["read_committed", "repeatable_read", "serializable"]
APPLICATION_NAME = "graphledger"
CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection: a database that does not answer is unavailable, not slow."""
CACHEABLE_STATEMENT_BYTES = 256 * 1024
"""Statements up to this size stay prepared on their connection (asyncpg's default is 15 kB). The append
statement with its projections' merges is about that size, and one prepared on every execution costs a
parse and a plan per append: admissions and the writer's flushes then took twice as long."""
PLANNED_EXECUTIONS = 6
"""Executions of each append statement on a new connection of a warm pool (``Ledger.connect(warm=True)``).

PostgreSQL plans a prepared statement's first five executions for their
parameter values (custom plans) and only then compares them with one generic
plan, which it keeps. For the append statement with its projections' merges a
custom plan costs about 1.5 ms more than an execution of the generic one: a
fresh server's first burst of admissions paid that five times on every
connection of its pool at once. Six executions plan the five and the generic."""
ACQUIRE_TIMEOUT = 30.0
"""Seconds a caller waits for a free connection of the pool before it is told the database is unavailable."""


async def _plan_appends(conn: asyncpg.Connection, statements: Sequence[Statement]) -> None:
    """Execute ``statements`` (append statements) on a new connection until PostgreSQL keeps their generic plans.

    The batch is what an admission appends, one ``run.created`` event, for a
    run that does not exist: the conditional append writes nothing, and the
    transaction is rolled back anyway.
    """
    ref = RunRef(uuid4(), uuid4())
    head = Head(0, chain.GENESIS, None)
    events = chain_onto(ref, head, [("run.created", NewEvent.of("run.created", {}).data, utcnow())])
    batch = Batch()
    batch.add(ref, head, events)
    transaction = conn.transaction()
    await transaction.start()
    try:
        for statement in statements:
            sql, args = statement.plan(batch, events)
            for _ in range(PLANNED_EXECUTIONS):
                await conn.fetch(sql, *args)
    finally:
        await transaction.rollback()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to send.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release, a round trip before the next waiter gets
    the connection: the longest step of an admission's hold under load.
    Nothing here leaves session state on a pooled connection (no SET, LISTEN
    or advisory lock; cursors live inside transactions), and code that ever
    does must undo it itself. A transaction left open is still rolled back:
    asyncpg does that before calling this.
    """


class Ledger:
    """Append to, read, tail and verify the event log of one database.

    Code above the ledger reaches the database only through :meth:`session`
    and :meth:`transaction` and the methods below; the pool, the writer and
    the hub are the ledger's own.
    """

    def __init__(self, dsn: str, pool: asyncpg.Pool, writer: Writer, hub: Hub | None, statement: Statement) -> None:
        self.dsn = dsn
        self._pool = pool
        self._writer = writer
        self._hub = hub
        self._statement = statement
        # Transactions opened with notify=False (admissions) append without
        # notifications; their hints are sent after the commit.
        self._quiet_statement = Statement(statement.projector, notify=False)
        self._hints = Hints(lambda: asyncpg.connect(dsn, server_settings={"application_name": APPLICATION_NAME}, timeout=CONNECT_TIMEOUT))

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
        warm: bool = False,
    ) -> Ledger:
        """Open a pool on ``dsn`` (already migrated), start the writer and, with ``tail``, the hub.

        A ``projector`` writes read models in the same statement as every
        append (``graphledger.projections.connect`` passes the project's own).
        With ``warm`` (what ``graphledger serve`` uses), every connection of
        the pool is opened at once and kept open, and each connection, the
        writer's too, plans the append statements before it serves
        (:data:`PLANNED_EXECUTIONS`): a burst of admissions on a fresh server
        then costs what it costs on one that has been serving.
        """
        settings = {"application_name": APPLICATION_NAME}
        statement = Statement(projector)
        appends = (statement, Statement(projector, notify=False))  # the writer's and other transactions', admissions'

        async def open_warm(conn: asyncpg.Connection) -> None:
            await _plan_appends(conn, appends)

        async def writer_connection() -> asyncpg.Connection:
            conn = await asyncpg.connect(
                dsn, server_settings=settings, timeout=CONNECT_TIMEOUT, max_cacheable_statement_size=CACHEABLE_STATEMENT_BYTES
            )
            if warm:
                await _plan_appends(conn, appends[:1])
            return conn

        with translate():
            pool = await asyncpg.create_pool(
                dsn, min_size=pool_size if warm else 1, max_size=pool_size, reset=_keep_session, server_settings=settings,
                timeout=CONNECT_TIMEOUT, max_cacheable_statement_size=CACHEABLE_STATEMENT_BYTES,
                init=open_warm if warm else None,
                max_inactive_connection_lifetime=0 if warm else 300.0,  # 0: a warm connection is never closed for being idle
            )
        hub = Hub(dsn, poll_interval=poll_interval) if tail else None
        writer = writer_class(
            writer_connection,
            max_batch=max_batch,
            max_delay=max_delay,
            on_commit=hub.publish if hub else None,
            on_flight=hub.in_flight if hub else None,
            statement=statement,
        )
        ledger = cls(dsn, pool, writer, hub, statement)
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
        await self._hints.close()
        await self._writer.close()
        if self._hub is not None:
            await self._hub.close()
        await self._pool.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def hub(self) -> Hub | None:
        """The process's tail (None when connected with ``tail=False``)."""
        return self._hub

    @property
    def listening(self) -> bool:
        """Whether this process's tail is listening now (False while it reconnects, or without a tail)."""
        return self._hub is not None and self._hub.listening.is_set()

    async def on_hint(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every notification on ``channel`` (and after each reconnect of the tail's listener)."""
        if self._hub is None:
            raise RuntimeError("this ledger was connected with tail=False")
        await self._hub.on_hint(channel, callback)

    @property
    def writer(self) -> Writer:
        """The group-commit writer (its counters are read by benchmarks and tests)."""
        return self._writer

    @property
    def pool_size(self) -> int:
        return self._pool.get_max_size()

    # -- the door --------------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """One connection of the pool; driver errors leave it as ledger errors."""
        with translate():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield Session(conn, self._statement)

    @asynccontextmanager
    async def transaction(
        self, *, isolation: Isolation = "read_committed", readonly: bool = False, notify: bool = True
    ) -> AsyncIterator[Transaction]:
        """A transaction; once it commits, its appends reach this process's subscribers and writer.

        With ``notify=False`` its appends notify other processes only after
        the commit, coalesced with other such transactions' (see
        :class:`~graphledger.ledger.hints.Hints`): for transactions that come
        in bursts, such as admissions.
        """
        with translate():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                tx = Transaction(conn, self._statement if notify else self._quiet_statement)
                async with conn.transaction(isolation=isolation, readonly=readonly):
                    yield tx
        if not notify and tx.appended:
            self._hints.send(tx.appended)
        self._committed(tx)

    def _committed(self, tx: Transaction) -> None:
        for ref, head in tx.heads_after.items():
            last = next(e for e in reversed(tx.appended) if e.run_id == ref.run_id and e.thread_id == ref.thread_id)
            self._writer.seed(ref, last, head.status)
        if tx.appended and self._hub is not None:
            self._hub.publish(tx.appended)

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise :class:`~graphledger.ledger.errors.DatabaseUnavailable` unless the database answers within ``timeout``."""
        with translate():
            async with asyncio.timeout(timeout):
                async with self.session() as session:
                    await session.connection.fetchval("SELECT 1")

    # -- writing ---------------------------------------------------------------------

    async def create_thread(self, thread_id: UUID | None = None, metadata: Mapping[str, Any] | None = None) -> UUID:
        """Create a thread (a no-op if it exists); return its id."""
        thread_id = thread_id or uuid4()
        async with self.session() as session:
            await session.threads.insert(thread_id, metadata)
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
        """Create a run that the caller executes itself, and append its ``run.created`` event (durable on return).

        ``assistant_id`` and ``metadata`` are recorded in the payload, which is
        where the run's head row takes them from. The payload says
        ``"executor": "caller"``: no worker of ``graphledger serve`` ever claims
        such a run (only runs admitted for a served graph are claimed).
        """
        created = dict(payload or {})
        if assistant_id is not None:
            created["assistant_id"] = assistant_id
        if metadata is not None:
            created["metadata"] = dict(metadata)
        created["executor"] = EXECUTOR_CALLER
        async with self.transaction() as tx:
            return await tx.create_run(RunRef(thread_id, run_id or uuid4()), created)

    async def append(self, ref: RunRef, kind: str, payload: Any, *, expected_seq: int | None = None) -> Event:
        """Append one event and wait until it is durable.

        With ``expected_seq`` the append is conditional on the run's head being
        exactly there (:class:`~graphledger.ledger.errors.Conflict` otherwise);
        without it, the event goes after whatever the head is, through the
        group-commit writer, flushed at once.
        """
        event = NewEvent.of(kind, payload)
        if expected_seq is None:
            return await self._writer.append(ref, event)
        async with self.transaction() as tx:
            (stored,) = await tx.append(ref, [event], expected_seq=expected_seq)
        return stored

    def submit(self, ref: RunRef, kind: str, payload: Any) -> asyncio.Future[Event]:
        """Queue an event for the next group commit; await the result to know it is durable."""
        return self._writer.submit(ref, NewEvent.of(kind, payload))

    def feed(self, ref: RunRef, kind: str, payload: Any) -> None:
        """Queue a stream chunk without waiting; it is durable once a later awaited event of the run is."""
        self._writer.feed(ref, NewEvent.of(kind, payload))

    def feed_encoded(self, ref: RunRef, kind: str, data: str) -> None:
        """:meth:`feed` a payload already encoded as canonical JSON text (by :func:`~graphledger.ledger.events.encode_json`)."""
        self._writer.feed(ref, NewEvent(validate_kind(kind), data))

    async def sync(self, ref: RunRef) -> None:
        """Wait until every event fed or submitted for the run so far is durable (or raise why it is not)."""
        await self._writer.sync(ref)

    # -- reading ---------------------------------------------------------------------

    async def run_ref(self, run_id: UUID) -> RunRef:
        async with self.session() as session:
            found = await session.heads.locate(run_id)
        if found is None:
            raise RunNotFound(f"run {run_id} not found")
        return found.ref

    async def read_run(self, ref: RunRef, after_seq: int = 0, limit: int = 10_000, *, kinds: Sequence[str] | None = None) -> list[Event]:
        async with self.session() as session:
            return await session.read_run(ref, after_seq, limit, kinds=kinds)

    async def iter_run(self, ref: RunRef, after_seq: int = 0) -> AsyncIterator[Event]:
        """Every stored event of a run after ``after_seq``, in order, in pages: for runs of any length."""
        async with self.session() as session:
            async for event in session.iter_run(ref, after_seq):
                yield event

    async def read_thread(self, thread_id: UUID, after_position: int = 0, limit: int = 10_000) -> list[Event]:
        async with self.session() as session:
            return await read.read_thread(session.connection, thread_id, after_position, limit)

    async def read_feed(self, after: FeedCursor = FeedCursor(), limit: int = 10_000) -> tuple[list[Event], FeedCursor]:
        async with self.session() as session:
            return await read.read_feed(session.connection, after, limit)

    async def tail(self, run: UUID | RunRef, after_seq: int = 0, *, live: bool = False) -> AsyncIterator[Event]:
        """Every event of a run after ``after_seq``: stored ones first, then live ones, ending after the terminal event.

        ``live=True`` (with a :class:`RunRef`) says the caller knows the run
        exists and that event ``after_seq`` is not terminal (it appended or
        received that event itself: it admitted or started the run), so the
        run's end is still to come: the head is then not looked up, a round
        trip on the tail's one shared connection that a burst of new streams
        would queue for.
        """
        if self._hub is None:
            raise RuntimeError("this ledger was connected with tail=False")
        if live and isinstance(run, RunRef):
            async for event in self._hub.follow(run, after_seq):
                yield event
            return
        with translate():
            ref, last_seq, finished = await self._hub.head(run.run_id if isinstance(run, RunRef) else run)
        if isinstance(run, RunRef) and run.thread_id != ref.thread_id:
            raise RunNotFound(f"run {run.run_id} not found in thread {run.thread_id}")
        if finished:
            # Everything up to the terminal event is stored, and only notes may
            # follow it, which a tail never carries: read, never wait. A note
            # is held until an event of the run follows it (then it came
            # before the terminal event), and dropped at the end.
            held: list[Event] = []
            while after_seq < last_seq:
                events = await self.read_run(ref, after_seq, 1_000)
                for event in events:
                    after_seq = event.seq
                    if is_note(event.kind):
                        held.append(event)
                        continue
                    for note in held:
                        yield note
                    held.clear()
                    yield event
                    if event.is_terminal:
                        return
                if not events:
                    return
            return
        async for event in self._hub.follow(ref, after_seq):
            yield event

    async def verify(self, run: UUID | RunRef) -> chain.ChainReport:
        """Recompute a run's hash chain from the stored events; report the first bad event."""
        ref = run if isinstance(run, RunRef) else await self.run_ref(run)
        async with self.transaction(isolation="repeatable_read", readonly=True) as tx:
            head = await tx.heads.require(ref)
            events = [e async for e in tx.iter_run(ref)]
        return chain.check(ref.run_id, events, head_hash=head.hash)
