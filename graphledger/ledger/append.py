"""The append path: one conditional statement, and a group-commit writer on top.

Concurrency, in short. The ``runs`` row of a run is its stream head
(``last_seq``, ``last_hash``, ``last_kind``). Every append names the head it
expects and the statement only writes when the head is still there and the run
has no terminal event::

    lock heads (FOR UPDATE, in (thread_id, run_id) order)
      WHERE last_seq = expected AND last_kind is not terminal
    update heads to the new last seq/hash/kind
    insert the events of exactly the runs whose heads were locked
    pg_notify('graphledger_events', 'run_id:last_seq,...')
    pg_notify('graphledger_runs', '') if a run was created or ended

all in one statement, so one round trip and one implicit transaction. Two
writers on one run cannot interleave: the second waits for the first's row
lock, then re-evaluates ``last_seq = expected`` against the committed head
(READ COMMITTED re-checks the locked row), finds it moved and writes nothing
for that run; it reloads the head and either retries or reports why. Because
the row lock is held until commit, a run's events become visible in ``seq``
order, so a reader of ``seq > n`` never skips one. Locking heads in a fixed
order keeps two multi-run flushes from deadlocking. Notifications are sent at
commit, never before the rows are visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import asyncpg

from graphledger.ledger import chain
from graphledger.ledger.errors import Conflict, LedgerError, RunFinished, RunNotFound
from graphledger.ledger.events import STATUS_AFTER, TERMINAL_KINDS, Event, NewEvent, RunRef

_log = logging.getLogger("graphledger.append")

CHANNEL = "graphledger_events"
RUNS_CHANNEL = "graphledger_runs"
"""Notified (empty payload) when an append admits a run or ends one: the run queue changed."""
NOTIFY_RUNS_PER_MESSAGE = 100  # keeps each payload far below PostgreSQL's 8000-byte limit
_TERMINAL_KINDS_SQL = ", ".join(f"'{kind}'" for kind in sorted(TERMINAL_KINDS))

FIRST_EXTENSION_PARAM = 14
"""The first parameter number free for a :class:`Projector`'s CTEs."""


@functools.lru_cache(maxsize=8)
def append_sql(extension: str = "") -> str:
    """The append statement, with ``extension`` CTEs (a :class:`Projector`'s) written in the same statement."""
    return f"""
WITH batch AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::bytea[], $6::text[], $7::text[])
        WITH ORDINALITY AS b(thread_id, run_id, expected_seq, last_seq, last_hash, last_kind, status, idx)
), locked AS (
    SELECT b.idx
    FROM runs r JOIN batch b ON r.thread_id = b.thread_id AND r.run_id = b.run_id
    WHERE r.last_seq = b.expected_seq AND coalesce(r.last_kind, '') <> ALL (ARRAY[{_TERMINAL_KINDS_SQL}])
    ORDER BY r.thread_id, r.run_id
    FOR UPDATE OF r
), head AS (
    UPDATE runs r
    SET last_seq = b.last_seq, last_hash = b.last_hash, last_kind = b.last_kind,
        status = coalesce(b.status, r.status), updated_at = now()
    FROM batch b JOIN locked l ON l.idx = b.idx
    WHERE r.thread_id = b.thread_id AND r.run_id = b.run_id
    RETURNING r.thread_id, r.run_id, r.last_seq, b.idx
), inserted AS (
    INSERT INTO events (thread_id, run_id, seq, kind, data, ts, hash)
    SELECT h.thread_id, h.run_id, e.seq, e.kind, e.data::json, e.ts, e.hash
    FROM unnest($8::int[], $9::int[], $10::text[], $11::text[], $12::timestamptz[], $13::bytea[])
        WITH ORDINALITY AS e(idx, seq, kind, data, ts, hash, ord)
    JOIN head h ON h.idx = e.idx
    ORDER BY e.ord
    RETURNING thread_id, run_id, seq, global_position
), notified AS (
    SELECT pg_notify('{CHANNEL}', string_agg(n.run_id::text || ':' || n.last_seq, ','))
    FROM (SELECT run_id, last_seq, (row_number() OVER ()) / {NOTIFY_RUNS_PER_MESSAGE} AS part FROM head) n
    GROUP BY n.part
    UNION ALL
    -- A run was admitted or ended: workers may have a run to claim.
    (SELECT pg_notify('{RUNS_CHANNEL}', '') FROM head h JOIN batch b ON b.idx = h.idx
     WHERE b.status IS NOT NULL AND b.status <> 'running' LIMIT 1)
){"," + extension if extension else ""}
SELECT h.run_id, h.last_seq, (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM notified) AS notified
FROM head h
"""


APPEND_SQL = append_sql()


class Projector(Protocol):
    """Read models written in the same statement as the events they come from.

    ``ctes`` are data-modifying CTEs that follow the append statement's own
    and may use the CTE ``inserted(thread_id, run_id, seq, global_position)``
    (the events actually written: none of a run whose head moved) and
    parameters from ``$14`` (:data:`FIRST_EXTENSION_PARAM`) on, which
    :meth:`args` fills for a batch of events, or returns None when the events
    change no read model (the plain statement is used then).
    """

    ctes: str

    def args(self, events: Iterable[Event]) -> list[Any] | None: ...


HEADS_SQL = """
SELECT r.thread_id, r.run_id, r.last_seq, r.last_hash, r.last_kind, r.status
FROM runs r JOIN unnest($1::uuid[], $2::uuid[]) AS k(thread_id, run_id)
    ON r.thread_id = k.thread_id AND r.run_id = k.run_id
"""

INSERT_RUN_SQL = """
INSERT INTO runs (thread_id, run_id, assistant_id, metadata) VALUES ($1, $2, $3, $4::jsonb)
"""


@dataclass(slots=True)
class Head:
    """A run's stream head: the last event's seq, hash and kind, and the run's status."""

    seq: int
    hash: bytes
    kind: str | None
    status: str = "pending"

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def chain_onto(ref: RunRef, head: Head, items: Iterable[tuple[str, str, datetime]]) -> list[Event]:
    """Number and hash ``items`` as the events that follow ``head``."""
    seq, digest = head.seq, head.hash
    prefix = chain.run_prefix(ref.thread_id, ref.run_id)
    events = []
    for kind, data, ts in items:
        seq += 1
        digest = chain.link_with(digest, prefix, seq, kind, ts, data)
        events.append(Event(ref.thread_id, ref.run_id, seq, kind, data, ts, digest))
    return events


@dataclass(slots=True)
class _Batch:
    """Column arrays of one append statement."""

    heads: list[list[Any]] = field(default_factory=lambda: [[] for _ in range(7)])
    events: list[list[Any]] = field(default_factory=lambda: [[] for _ in range(6)])

    def add(self, ref: RunRef, head: Head, events: Sequence[Event]) -> Head:
        """Add ``events`` (already chained onto ``head``); return the head after them."""
        indexes, seqs, kinds, datas, stamps, hashes = self.events
        indexes.extend([len(self.heads[0]) + 1] * len(events))  # the run's ordinality in the head arrays
        seqs.extend([e.seq for e in events])
        kinds.extend([e.kind for e in events])
        datas.extend([e.data for e in events])
        stamps.extend([e.ts for e in events])
        hashes.extend([e.hash for e in events])
        status = None
        for event in events:
            if event.kind in STATUS_AFTER:
                status = STATUS_AFTER[event.kind]
        last = events[-1]
        for column, value in zip(self.heads, (ref.thread_id, ref.run_id, head.seq, last.seq, last.hash, last.kind, status), strict=True):
            column.append(value)
        return Head(last.seq, last.hash, last.kind, status or head.status)

    def args(self) -> list[Any]:
        return [*self.heads, *self.events]


async def load_heads(conn: asyncpg.Connection, refs: Iterable[RunRef]) -> dict[RunRef, Head]:
    refs = list(refs)
    rows = await conn.fetch(HEADS_SQL, [r.thread_id for r in refs], [r.run_id for r in refs])
    return {
        RunRef(row["thread_id"], row["run_id"]): Head(row["last_seq"], bytes(row["last_hash"]), row["last_kind"], row["status"])
        for row in rows
    }


def _refuse(ref: RunRef, head: Head | None, expected_seq: int | None = None) -> LedgerError:
    if head is None:
        return RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
    if head.terminal:
        return RunFinished(ref.run_id, head.status, head.kind)
    return Conflict(ref.run_id, expected_seq if expected_seq is not None else -1, head.seq, head.kind)


async def append_at(
    conn: asyncpg.Connection,
    ref: RunRef,
    new: Sequence[NewEvent],
    expected_seq: int,
    *,
    ts: datetime | None = None,
    projector: Projector | None = None,
) -> list[Event]:
    """Append ``new`` to a run whose head must be at ``expected_seq``; durable on return.

    Raises :class:`Conflict` when the head moved, :class:`RunFinished` after a
    terminal event, :class:`RunNotFound` for an unknown run. Writes nothing then.
    """
    if not new:
        return []
    head = (await load_heads(conn, [ref])).get(ref)
    if head is None or head.terminal or head.seq != expected_seq:
        raise _refuse(ref, head, expected_seq)
    ts = ts or utcnow()
    events = chain_onto(ref, head, [(e.kind, e.data, ts) for e in new])
    batch = _Batch()
    batch.add(ref, head, events)
    extra = projector.args(events) if projector is not None else None
    if extra is None:
        rows = await conn.fetch(APPEND_SQL, *batch.args())
    else:
        rows = await conn.fetch(append_sql(projector.ctes), *batch.args(), *extra)  # type: ignore[union-attr]
    if not rows:
        raise _refuse(ref, (await load_heads(conn, [ref])).get(ref), expected_seq)
    return events


async def insert_run(
    conn: asyncpg.Connection,
    ref: RunRef,
    created: NewEvent,
    *,
    assistant_id: str | None,
    metadata: str,
    projector: Projector | None = None,
) -> Event:
    """Insert a run's head and its first event in one transaction."""
    async with conn.transaction():
        await conn.execute(INSERT_RUN_SQL, ref.thread_id, ref.run_id, assistant_id, metadata)
        (event,) = await append_at(conn, ref, [created], 0, projector=projector)
    return event


# -- group commit ---------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    kind: str
    data: str
    ts: datetime
    future: asyncio.Future[Event] | None  # None: fed without waiting (see Writer.feed)
    event: Event | None = None  # chained onto the run's tip at submit, when the tip is known


@dataclass(slots=True)
class _RunQueue:
    ref: RunRef
    prefix: bytes
    head: Head | None = None  # the committed head, as last seen; None: load it
    tip: tuple[int, bytes] | None = None  # (seq, hash) after every waiting event; None: not chained yet
    items: deque[_Pending] = field(default_factory=deque)
    closed: bool = False  # a terminal event is queued: nothing more is accepted
    failures: int = 0
    busy: bool = False  # in a flush: its events go in no other flush until that one ends
    # Sent in a statement whose outcome is unknown (the connection died): the
    # head, once reloaded, tells whether it committed.
    inflight: tuple[int, Head] | None = None

    def rechain(self) -> None:
        """Number and hash every waiting event again, from the committed head."""
        assert self.head is not None
        events = chain_onto(self.ref, self.head, [(p.kind, p.data, p.ts) for p in self.items])
        for pending, event in zip(self.items, events, strict=True):
            pending.event = event
        self.tip = (events[-1].seq, events[-1].hash) if events else (self.head.seq, self.head.hash)

    def forget_head(self) -> None:
        self.head = self.tip = None


RETRYABLE = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-operation when its backend died
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    OSError,
)


class Writer:
    """Batches appends of many concurrent runs into one statement per flush.

    Each event is numbered and hashed when it is submitted, onto the run's
    *tip* (the head after every event still waiting), so this work is done by
    the producers while earlier flushes are in the database. A flush only
    gathers rows: up to ``max_batch`` events of runs that are in no other
    flush. It starts as soon as events wait and one of ``max_inflight``
    connections is free (after ``max_delay``, if set). While flushes run, the
    next ones fill up. A run is in at most one flush at a time, so its events
    commit in ``seq`` order and two flushes never lock the same head.

    If a run's head moved under it (another writer appended), or a flush's
    outcome is unknown (its connection died), the run's head is reloaded. Its
    waiting events are then numbered and hashed again, or found committed.
    Every future from :meth:`submit` resolves once its event is committed, or
    fails with the reason it never will be. Events given to :meth:`feed` have
    no future; their failure is raised by the next call for that run.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        max_batch: int = 4096,
        max_delay: float = 0.0,
        max_attempts: int = 5,
        max_inflight: int = 2,
        on_commit: Callable[[list[Event]], None] | None = None,
        on_flight: Callable[[list[Event], bool], None] | None = None,
        projector: Projector | None = None,
    ) -> None:
        self._connect = connect  # makes the writer's own connections (one per flush in flight), anew after any failure
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.max_inflight = max_inflight
        self._on_commit = on_commit
        self._on_flight = on_flight  # (events, True) as a flush is sent, (events, False) once it has answered
        self._projector = projector
        self._projected_sql = append_sql(projector.ctes) if projector is not None else APPEND_SQL
        self._runs: dict[RunRef, _RunQueue] = {}
        self._errors: dict[RunRef, BaseException] = {}  # failures of fed events, raised on the next call
        self._clock = chain.Clock()
        self._waiting = 0
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.flushes = 0
        self.conflicts = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="graphledger-writer")

    async def close(self) -> None:
        """Flush what waits, then stop."""
        self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task is not None:
            await self._task
            self._task = None

    def seed(self, ref: RunRef, event: Event, status: str = "pending") -> None:
        """Tell the writer a run's head (after creating it), sparing it a read."""
        if ref not in self._runs:
            head = Head(event.seq, event.hash, event.kind, status)
            self._runs[ref] = _RunQueue(ref, chain.run_prefix(ref.thread_id, ref.run_id), head, (event.seq, event.hash))

    def submit(self, ref: RunRef, event: NewEvent, *, urgent: bool = False, ts: datetime | None = None) -> asyncio.Future[Event]:
        """Queue ``event`` for ``ref``; the future resolves when it is committed."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._enqueue(ref, event, future, urgent, ts)
        return future

    def feed(self, ref: RunRef, event: NewEvent, *, ts: datetime | None = None) -> None:
        """Queue a stream chunk without waiting for it.

        The writer commits a run's events in order, so a chunk is durable once
        any later event of the same run that was awaited (its terminal event,
        say) is. If fed events cannot be written, the next call for that run
        raises the reason.
        """
        self._enqueue(ref, event, None, False, ts)

    def _enqueue(
        self, ref: RunRef, event: NewEvent, future: asyncio.Future[Event] | None, urgent: bool, ts: datetime | None
    ) -> None:
        if self._closing:
            raise LedgerError("the writer is closed")
        error = self._errors.pop(ref, None)
        if error is not None:
            raise error
        queue = self._runs.get(ref)
        if queue is None:
            queue = self._runs[ref] = _RunQueue(ref, chain.run_prefix(ref.thread_id, ref.run_id))
        if queue.closed or (queue.head is not None and queue.head.terminal):
            raise RunFinished(ref.run_id, queue.head.status if queue.head else "finished", "queued terminal event")
        kind, data = event.kind, event.data
        if ts is None:
            ts, stamp = self._clock.now()
        else:
            stamp = chain.format_ts(ts)
        pending = _Pending(kind, data, ts, future)
        if queue.tip is not None:
            seq = queue.tip[0] + 1
            digest = chain.link_with(queue.tip[1], queue.prefix, seq, kind, stamp, data)
            pending.event = Event(ref.thread_id, ref.run_id, seq, kind, data, ts, digest)
            queue.tip = (seq, digest)
        queue.items.append(pending)
        if event.kind in TERMINAL_KINDS:
            queue.closed = True
        self._waiting += 1
        self._wake.set()
        if urgent or self._waiting >= self.max_batch:
            self._urgent.set()

    async def append(self, ref: RunRef, event: NewEvent, *, urgent: bool = True) -> Event:
        """Append one event and wait until it is committed."""
        return await self.submit(ref, event, urgent=urgent)

    async def _run(self) -> None:
        """Start flushes while events wait, at most ``max_inflight`` at once."""
        idle: list[asyncpg.Connection | None] = [None] * self.max_inflight
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if self.max_delay and not running and not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.max_delay):
                            await self._urgent.wait()
                self._urgent.clear()
                self._wake.clear()
                queues = self._select() if idle else []
                if queues:
                    slot = idle.pop()
                    task = asyncio.get_running_loop().create_task(self._flight(slot, queues, idle))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    continue
                if not running and not self._waiting and self._closing:
                    return
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter, *running}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            for conn in idle:
                if conn is not None:
                    await conn.close()

    def _select(self) -> list[_RunQueue]:
        """Runs for the next flush: waiting events, not in a flush already, up to ``max_batch`` events."""
        chosen: list[_RunQueue] = []
        budget = self.max_batch
        for queue in self._runs.values():
            if budget <= 0:
                break
            if queue.items and not queue.busy:
                queue.busy = True
                chosen.append(queue)
                budget -= len(queue.items)
        return chosen

    async def _flight(self, conn: asyncpg.Connection | None, queues: list[_RunQueue], idle: list[asyncpg.Connection | None]) -> None:
        try:
            if conn is None:
                conn = await self._connect()
            await self._flush(conn, queues)
        except RETRYABLE as exc:
            _log.warning("append flush failed, retrying on a new connection: %s", exc)
            if conn is not None:
                conn.terminate()  # its state is unknown: never reuse it
                conn = None
            await asyncio.sleep(0.05)
        except (asyncpg.PostgresError, LedgerError) as exc:
            # Counted per run in _flush; a run's events fail after max_attempts.
            _log.warning("append flush rejected: %s", exc)
            await asyncio.sleep(0.05)
        finally:
            for queue in queues:
                queue.busy = False
            idle.append(conn)
            self._wake.set()

    def _fail(self, queue: _RunQueue, error: BaseException) -> None:
        unheard = False
        while queue.items:
            pending = queue.items.popleft()
            self._waiting -= 1
            if pending.future is None:
                unheard = True
            elif not pending.future.done():
                pending.future.set_exception(error)
        if unheard:
            _log.warning("events of run %s were not written: %s", queue.ref.run_id, error)
            self._errors[queue.ref] = error
        self._runs.pop(queue.ref, None)

    def _resolve(self, queue: _RunQueue, n: int, after: Head) -> list[Event]:
        queue.head = after
        queue.failures = 0
        queue.inflight = None
        events = []
        for _ in range(n):
            pending = queue.items.popleft()
            self._waiting -= 1
            assert pending.event is not None
            events.append(pending.event)
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(pending.event)
        if after.terminal:
            queue.closed = False
            if not queue.items:
                del self._runs[queue.ref]
        return events

    async def _load_heads(self, conn: asyncpg.Connection, queues: list[_RunQueue]) -> list[Event]:
        """Reload heads; settle flushes of unknown outcome; chain what waits. Returns events found committed."""
        heads = await load_heads(conn, [q.ref for q in queues])
        committed: list[Event] = []
        for queue in queues:
            queue.head = heads.get(queue.ref)
            if queue.head is None or queue.head.terminal:
                self._fail(queue, _refuse(queue.ref, queue.head))
                continue
            if queue.inflight is not None:
                n, after = queue.inflight
                queue.inflight = None
                if (queue.head.seq, queue.head.hash) == (after.seq, after.hash):
                    committed.extend(self._resolve(queue, n, after))
                    if not queue.items:
                        continue
            queue.rechain()
        return committed

    async def _flush(self, conn: asyncpg.Connection, queues: list[_RunQueue]) -> None:
        unknown = [q for q in queues if q.tip is None]
        committed = await self._load_heads(conn, unknown) if unknown else []
        batch = _Batch()
        planned: list[tuple[_RunQueue, int, Head]] = []
        flushed: list[Event] = []
        budget = self.max_batch
        for queue in queues:
            if budget <= 0 or not queue.items or queue.head is None:
                continue
            n = min(len(queue.items), budget)
            budget -= n
            events = [queue.items[i].event for i in range(n)]
            flushed.extend(events)  # type: ignore[arg-type]
            planned.append((queue, n, batch.add(queue.ref, queue.head, events)))  # type: ignore[arg-type]
        if not planned:
            self._committed(committed)
            return
        sql, args = APPEND_SQL, batch.args()
        if self._projector is not None:
            extra = self._projector.args(flushed)
            if extra is not None:
                sql, args = self._projected_sql, [*args, *extra]
        if self._on_flight is not None:
            self._on_flight(flushed, True)
        try:
            rows = await self._execute(conn, sql, args)
        except RETRYABLE:
            # The commit may or may not have happened: reload the heads and keep
            # the events of every run whose head does not show them.
            for queue, n, after in planned:
                queue.forget_head()
                queue.inflight = (n, after)
            self._committed(committed)
            raise
        except (asyncpg.PostgresError, LedgerError) as exc:
            for queue, _, _ in planned:
                queue.failures += 1
                queue.forget_head()
                if queue.failures >= self.max_attempts:
                    self._fail(queue, LedgerError(f"append failed: {exc}"))
            self._committed(committed)
            raise
        finally:
            if self._on_flight is not None:
                self._on_flight(flushed, False)
        self.flushes += 1
        accepted = {row["run_id"] for row in rows}
        for queue, n, after in planned:
            if queue.ref.run_id in accepted:
                committed.extend(self._resolve(queue, n, after))
            else:
                # Another writer moved the head: reload it and chain again next flush.
                self.conflicts += 1
                queue.forget_head()
        self._committed(committed)

    async def _execute(self, conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[asyncpg.Record]:
        return await conn.fetch(sql, *args)

    def _committed(self, events: list[Event]) -> None:
        if events and self._on_commit is not None:
            self._on_commit(events)
