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
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import asyncpg

from graphledger.ledger import chain
from graphledger.ledger.errors import Conflict, LedgerError, RunFinished, RunNotFound
from graphledger.ledger.events import STATUS_AFTER, TERMINAL_KINDS, Event, NewEvent, RunRef

_log = logging.getLogger("graphledger.append")

CHANNEL = "graphledger_events"
NOTIFY_RUNS_PER_MESSAGE = 100  # keeps each payload far below PostgreSQL's 8000-byte limit
_TERMINAL_KINDS_SQL = ", ".join(f"'{kind}'" for kind in sorted(TERMINAL_KINDS))

APPEND_SQL = f"""
WITH batch AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::bytea[], $6::text[], $7::text[])
        AS b(thread_id, run_id, expected_seq, last_seq, last_hash, last_kind, status)
), locked AS (
    SELECT r.thread_id, r.run_id
    FROM runs r JOIN batch b ON r.thread_id = b.thread_id AND r.run_id = b.run_id
    WHERE r.last_seq = b.expected_seq AND coalesce(r.last_kind, '') <> ALL (ARRAY[{_TERMINAL_KINDS_SQL}])
    ORDER BY r.thread_id, r.run_id
    FOR UPDATE OF r
), head AS (
    UPDATE runs r
    SET last_seq = b.last_seq, last_hash = b.last_hash, last_kind = b.last_kind,
        status = coalesce(b.status, r.status), updated_at = now()
    FROM batch b JOIN locked l ON l.thread_id = b.thread_id AND l.run_id = b.run_id
    WHERE r.thread_id = b.thread_id AND r.run_id = b.run_id
    RETURNING r.thread_id, r.run_id, r.last_seq
), inserted AS (
    INSERT INTO events (thread_id, run_id, seq, kind, data, ts, hash)
    SELECT e.thread_id, e.run_id, e.seq, e.kind, e.data::json, e.ts, e.hash
    FROM unnest($8::uuid[], $9::uuid[], $10::int[], $11::text[], $12::text[], $13::timestamptz[], $14::bytea[])
        WITH ORDINALITY AS e(thread_id, run_id, seq, kind, data, ts, hash, ord)
    JOIN head h ON h.thread_id = e.thread_id AND h.run_id = e.run_id
    ORDER BY e.ord
    RETURNING global_position
), notified AS (
    SELECT pg_notify('{CHANNEL}', string_agg(n.run_id::text || ':' || n.last_seq, ','))
    FROM (SELECT run_id, last_seq, (row_number() OVER ()) / {NOTIFY_RUNS_PER_MESSAGE} AS part FROM head) n
    GROUP BY n.part
)
SELECT h.run_id, h.last_seq, (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM notified) AS notified
FROM head h
"""

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
    """A run's stream head as the writer last saw it."""

    seq: int
    hash: bytes
    kind: str | None
    status: str = "pending"

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class _Batch:
    """Column arrays of one append statement."""

    heads: list[list[Any]] = field(default_factory=lambda: [[] for _ in range(7)])
    events: list[list[Any]] = field(default_factory=lambda: [[] for _ in range(7)])

    def add_run(self, ref: RunRef, head: Head, items: Sequence[tuple[str, str, datetime]]) -> tuple[list[Event], Head]:
        """Chain ``items`` onto ``head``; return the events and the head after them."""
        seq, digest, status = head.seq, head.hash, None
        out: list[Event] = []
        for kind, data, ts in items:
            seq += 1
            digest = chain.link(digest, ref.thread_id, ref.run_id, seq, kind, ts, data)
            status = STATUS_AFTER.get(kind, status)
            out.append(Event(ref.thread_id, ref.run_id, seq, kind, data, ts, digest))
            for column, value in zip(self.events, (ref.thread_id, ref.run_id, seq, kind, data, ts, digest)):
                column.append(value)
        last_kind = items[-1][0]
        for column, value in zip(self.heads, (ref.thread_id, ref.run_id, head.seq, seq, digest, last_kind, status)):
            column.append(value)
        return out, Head(seq, digest, last_kind, status or head.status)

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
    conn: asyncpg.Connection, ref: RunRef, new: Sequence[NewEvent], expected_seq: int, *, ts: datetime | None = None
) -> list[Event]:
    """Append ``new`` to a run whose head must be at ``expected_seq``; durable on return.

    Raises :class:`Conflict` when the head moved, :class:`RunFinished` after a
    terminal event, :class:`RunNotFound` for an unknown run. Writes nothing then.
    """
    if not new:
        return []
    heads = await load_heads(conn, [ref])
    head = heads.get(ref)
    if head is None or head.terminal or head.seq != expected_seq:
        raise _refuse(ref, head, expected_seq)
    ts = ts or utcnow()
    batch = _Batch()
    events, _ = batch.add_run(ref, head, [(e.kind, e.data, ts) for e in new])
    rows = await conn.fetch(APPEND_SQL, *batch.args())
    if not rows:
        raise _refuse(ref, (await load_heads(conn, [ref])).get(ref), expected_seq)
    return events


async def insert_run(
    conn: asyncpg.Connection, ref: RunRef, created: NewEvent, *, assistant_id: str | None, metadata: str
) -> Event:
    """Insert a run's head and its first event in one transaction."""
    async with conn.transaction():
        await conn.execute(INSERT_RUN_SQL, ref.thread_id, ref.run_id, assistant_id, metadata)
        (event,) = await append_at(conn, ref, [created], 0)
    return event


# -- group commit ---------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    kind: str
    data: str
    ts: datetime
    future: asyncio.Future[Event]


@dataclass(slots=True)
class _RunQueue:
    ref: RunRef
    head: Head | None = None
    items: deque[_Pending] = field(default_factory=deque)
    closed: bool = False  # a terminal event is queued: nothing more is accepted
    failures: int = 0
    # Sent in a statement whose outcome is unknown (the connection died): the
    # head, once reloaded, tells whether it committed.
    inflight: tuple[int, list[Event], Head] | None = None


RETRYABLE = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    OSError,
)


class Writer:
    """Batches appends of many concurrent runs into one statement per flush.

    A flush starts when ``max_delay`` has passed since the first waiting event,
    when ``max_batch`` events wait, or at once when an event is ``urgent``
    (lifecycle transitions: durable before their caller is answered). One flush
    runs at a time; events that arrive meanwhile form the next one. Every future
    returned by :meth:`submit` resolves once its event is committed, or fails
    with the reason it never will be.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 512,
        max_delay: float = 0.004,
        max_attempts: int = 5,
        on_commit: Callable[[list[Event]], None] | None = None,
    ) -> None:
        self._pool = pool
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self._on_commit = on_commit
        self._runs: dict[RunRef, _RunQueue] = {}
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

    def submit(self, ref: RunRef, event: NewEvent, *, urgent: bool = False, ts: datetime | None = None) -> asyncio.Future[Event]:
        """Queue ``event`` for ``ref``; the future resolves when it is committed."""
        if self._closing:
            raise LedgerError("the writer is closed")
        queue = self._runs.get(ref)
        if queue is None:
            queue = self._runs[ref] = _RunQueue(ref)
        if queue.closed or (queue.head is not None and queue.head.terminal):
            raise RunFinished(ref.run_id, queue.head.status if queue.head else "finished", "queued terminal event")
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        queue.items.append(_Pending(event.kind, event.data, ts or utcnow(), future))
        if event.kind in TERMINAL_KINDS:
            queue.closed = True
        self._waiting += 1
        self._wake.set()
        if urgent or self._waiting >= self.max_batch:
            self._urgent.set()
        return future

    async def append(self, ref: RunRef, event: NewEvent, *, urgent: bool = True) -> Event:
        """Append one event and wait until it is committed."""
        return await self.submit(ref, event, urgent=urgent)

    def forget(self, ref: RunRef) -> None:
        """Drop the cached head of a run that has nothing waiting (a finished run)."""
        queue = self._runs.get(ref)
        if queue is not None and not queue.items:
            del self._runs[ref]

    async def _run(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while True:
                await self._wake.wait()
                if not self._waiting:
                    self._wake.clear()
                    if self._closing:
                        return
                    continue
                if not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), self.max_delay)
                self._urgent.clear()
                try:
                    if conn is None:
                        conn = await self._pool.acquire()
                    await self._flush(conn)
                except RETRYABLE as exc:
                    _log.warning("append flush failed, retrying on a new connection: %s", exc)
                    if conn is not None:
                        await self._pool.release(conn)
                        conn = None
                    await asyncio.sleep(0.05)
                except (asyncpg.PostgresError, LedgerError) as exc:
                    # Counted per run in _flush; a run's events fail after max_attempts.
                    _log.warning("append flush rejected: %s", exc)
                    await asyncio.sleep(0.05)
        finally:
            if conn is not None:
                await self._pool.release(conn)

    def _take(self) -> list[tuple[_RunQueue, int]]:
        taken: list[tuple[_RunQueue, int]] = []
        budget = self.max_batch
        for queue in self._runs.values():
            if queue.items and budget > 0:
                n = min(len(queue.items), budget)
                taken.append((queue, n))
                budget -= n
        return taken

    def _fail(self, queue: _RunQueue, error: BaseException) -> None:
        while queue.items:
            pending = queue.items.popleft()
            self._waiting -= 1
            if not pending.future.done():
                pending.future.set_exception(error)
        self._runs.pop(queue.ref, None)

    def _resolve(self, queue: _RunQueue, n: int, events: list[Event], after: Head) -> None:
        queue.head = after
        queue.failures = 0
        queue.inflight = None
        for event in events:
            pending = queue.items.popleft()
            self._waiting -= 1
            if not pending.future.done():
                pending.future.set_result(event)
        if after.terminal:
            queue.closed = False
            if not queue.items:
                del self._runs[queue.ref]

    async def _flush(self, conn: asyncpg.Connection) -> None:
        taken = self._take()
        unknown = [q.ref for q, _ in taken if q.head is None]
        committed: list[Event] = []
        if unknown:
            heads = await load_heads(conn, unknown)
            for queue, _ in taken:
                if queue.head is None:
                    queue.head = heads.get(queue.ref)
                    if queue.inflight is not None:
                        n, events, after = queue.inflight
                        queue.inflight = None
                        if queue.head is not None and (queue.head.seq, queue.head.hash) == (after.seq, after.hash):
                            self._resolve(queue, n, events, after)
                            committed.extend(events)
            taken = [(q, min(n, len(q.items))) for q, n in taken if q.items]
        batch = _Batch()
        planned: list[tuple[_RunQueue, int, list[Event], Head]] = []
        for queue, n in taken:
            if queue.head is None or queue.head.terminal:
                self._fail(queue, _refuse(queue.ref, queue.head))
                continue
            items = [(p.kind, p.data, p.ts) for p in list(queue.items)[:n]]
            events, after = batch.add_run(queue.ref, queue.head, items)
            planned.append((queue, n, events, after))
        if not planned:
            self._committed(committed)
            return
        try:
            rows = await self._execute(conn, batch.args())
        except RETRYABLE:
            # The commit may or may not have happened: reload the heads and keep
            # the events of every run whose head does not show them.
            for queue, n, events, after in planned:
                queue.head = None
                queue.inflight = (n, events, after)
            self._committed(committed)
            raise
        except (asyncpg.PostgresError, LedgerError) as exc:
            for queue, *_ in planned:
                queue.failures += 1
                queue.head = None
                if queue.failures >= self.max_attempts:
                    self._fail(queue, LedgerError(f"append failed: {exc}"))
            raise
        self.flushes += 1
        accepted = {row["run_id"] for row in rows}
        for queue, n, events, after in planned:
            if queue.ref.run_id not in accepted:
                # Another writer moved the head: reload it and try again next flush.
                self.conflicts += 1
                queue.head = None
                self._wake.set()
                self._urgent.set()
                continue
            self._resolve(queue, n, events, after)
            committed.extend(events)
        self._committed(committed)
        if self._waiting:
            self._wake.set()

    async def _execute(self, conn: asyncpg.Connection, args: list[Any]) -> list[asyncpg.Record]:
        return await conn.fetch(APPEND_SQL, *args)

    def _committed(self, events: list[Event]) -> None:
        if events and self._on_commit is not None:
            self._on_commit(events)
