"""The group-commit writer: many runs' appends batched into one append statement per flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from graphledger.ledger import chain
from graphledger.ledger.errors import UNAVAILABLE, LedgerError, RunFinished
from graphledger.ledger.events import TERMINAL_KINDS, Event, NewEvent, RunRef
from graphledger.ledger.heads import Heads
from graphledger.ledger.read import hashes_at
from graphledger.ledger.statement import Batch, Head, Statement, chain_onto, refusal

_log = logging.getLogger("graphledger.append")
@dataclass(slots=True)
class _Pending:
    kind: str
    data: str
    ts: datetime
    future: asyncio.Future[Event] | None  # None: fed without waiting (see Writer.feed)
    event: Event | None = None  # chained onto the run's tip at submit, when the tip is known


def _chained(pending: _Pending) -> Event:
    """A waiting event as numbered and hashed onto its run's head (every event of a run with a known head is)."""
    assert pending.event is not None
    return pending.event


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
    # log, read again, tells whether it committed (see Writer._load_heads).
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


RETRYABLE: tuple[type[BaseException], ...] = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, *UNAVAILABLE)
"""Failures after which a flush is tried again, as often as it takes: its outcome is settled from the log."""


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
        min_backoff: float = 0.05,
        max_backoff: float = 2.0,
        on_commit: Callable[[list[Event]], None] | None = None,
        on_flight: Callable[[list[Event], bool], None] | None = None,
        statement: Statement | None = None,
    ) -> None:
        self._connect = connect  # makes the writer's own connections (one per flush in flight), anew after any failure
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.max_inflight = max_inflight
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff  # the longest wait between two tries while the database is away
        self._backoff = min_backoff
        self.retries = 0
        self._on_commit = on_commit
        self._on_flight = on_flight  # (events, True) as a flush is sent, (events, False) once it has answered
        self._statement = statement or Statement()
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

    async def sync(self, ref: RunRef) -> None:
        """Wait until every event queued for ``ref`` so far is committed; raise why one never will be.

        A transaction that appends to a run this writer was fed events for
        must call this first: the events go in ``seq`` order, and a head moved
        by the transaction would otherwise be followed by the older events.
        """
        queue = self._runs.get(ref)
        if queue is not None and queue.items:
            last = queue.items[-1]
            if last.future is None:  # a fed chunk: give it a future to wait on
                last.future = asyncio.get_running_loop().create_future()
            self._urgent.set()
            await asyncio.shield(last.future)
        error = self._errors.pop(ref, None)
        if error is not None:
            raise error

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
            # The database may be restarting or away for minutes: back off, never give up.
            # Nothing is lost meanwhile; the events wait in memory and their futures stay pending.
            self.retries += 1
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.max_backoff)
            _log.warning("append flush failed (%s: %s); retrying in %.2f s on a new connection", type(exc).__name__, exc, delay)
            if conn is not None:
                conn.terminate()  # its state is unknown: never reuse it
                conn = None
            await asyncio.sleep(delay)
        except (asyncpg.PostgresError, LedgerError) as exc:
            # Counted per run in _flush; a run's events fail after max_attempts.
            _log.warning("append flush rejected: %s", exc)
            await asyncio.sleep(0.05)
        else:
            self._backoff = self.min_backoff
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
        """Reload heads; settle flushes of unknown outcome; chain what waits. Returns events found committed.

        A flush of unknown outcome committed if the run's log holds its last
        event's hash at its last seq: the chain makes that one hash stand for
        all of the flush's events. The head alone does not say so once another
        writer (a cancel, a note, the reaper) appended after the flush
        committed; the events would then be written a second time.
        """
        heads = await Heads(conn).load([q.ref for q in queues])
        moved_on = []
        for queue in queues:
            head = heads.get(queue.ref)
            if queue.inflight is not None and head is not None and head.seq > queue.inflight[1].seq:
                moved_on.append((queue.ref, queue.inflight[1].seq))
        stored = await hashes_at(conn, moved_on) if moved_on else {}
        committed: list[Event] = []
        for queue in queues:
            head = heads.get(queue.ref)
            if queue.inflight is not None:
                n, after = queue.inflight
                queue.inflight = None
                if (head is not None and (head.seq, head.hash) == (after.seq, after.hash)) or stored.get(queue.ref) == after.hash:
                    committed.extend(self._resolve(queue, n, after))
                    if not queue.items:
                        continue
            queue.head = head
            if head is None or head.terminal:
                self._fail(queue, refusal(queue.ref, head))
                continue
            queue.rechain()
        return committed

    async def _flush(self, conn: asyncpg.Connection, queues: list[_RunQueue]) -> None:
        unknown = [q for q in queues if q.tip is None]
        committed = await self._load_heads(conn, unknown) if unknown else []
        batch = Batch()
        planned: list[tuple[_RunQueue, int, Head]] = []
        flushed: list[Event] = []
        budget = self.max_batch
        for queue in queues:
            if budget <= 0 or not queue.items or queue.head is None:
                continue
            n = min(len(queue.items), budget)
            budget -= n
            events = [_chained(queue.items[i]) for i in range(n)]
            flushed.extend(events)
            planned.append((queue, n, batch.add(queue.ref, queue.head, events)))
        if not planned:
            self._committed(committed)
            return
        sql, args = self._statement.plan(batch, flushed)
        if self._on_flight is not None:
            self._on_flight(flushed, True)
        try:
            rows = await self._execute(conn, sql, args)
        except RETRYABLE:
            # The commit may or may not have happened: reload the heads and keep
            # the events of every run whose log does not hold them.
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
