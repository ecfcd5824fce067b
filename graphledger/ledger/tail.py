"""Following the log live: one listener and one reader per process, fanned out in memory.

A process holds two connections for tailing, however many subscribers it has:

* the *listener* LISTENs on ``graphledger_events``. A notification is a hint
  (``run_id:last_seq,...``), never the data; a lost one costs latency, not
  events, because
* the *reader* reads the events from the table: one statement per wake-up for
  every run that has subscribers and may be behind (``seq > cursor``), and the
  rows are handed to each subscriber of that run in order.

Events committed by this process's writer are handed over right after commit
(:meth:`Hub.publish`) without a read. Every ``poll_interval`` all subscribed
runs are re-read anyway, which covers notifications lost while the listener
reconnects. A subscriber takes an event only if its ``seq`` is exactly one past
the last it took, so the three sources can overlap freely without duplicates,
gaps or reordering. A subscriber that stops consuming holds at most
``queue_size`` events; the rest wait in the table until it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from uuid import UUID

import asyncpg

from graphledger.ledger import read
from graphledger.ledger.errors import UNAVAILABLE, RunNotFound
from graphledger.ledger.events import Event, RunRef
from graphledger.ledger.heads import Heads
from graphledger.ledger.statement import CHANNEL
from graphledger.ledger.tasks import cancel_and_wait

_log = logging.getLogger("graphledger.tail")

_CLOSED = object()
CONNECT_TIMEOUT = 2.0
_RECONNECT: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncpg.PostgresError)
APPLICATION_NAME = "graphledger-tail"
"""Prefix of the application_name both tail connections of a hub carry (see pg_stat_activity)."""

_hubs = itertools.count(1)


class Subscription:
    """One consumer of one run's events, from ``after_seq`` on; iterate it."""

    def __init__(self, hub: Hub, ref: RunRef, after_seq: int, queue_size: int) -> None:
        self.hub = hub
        self.ref = ref
        self.cursor = after_seq  # seq of the last event queued
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.queue_size = queue_size
        self.done = False  # the terminal event is queued
        self.stalled = False  # an event was held back because the queue was full

    @property
    def wants_more(self) -> bool:
        return not self.done and not self.stalled

    def offer(self, event: Event) -> bool:
        """Queue ``event`` if it is the next one; False when a gap shows a read is needed."""
        if self.done or self.stalled or event.seq <= self.cursor:
            return True  # a stalled subscription reads on by itself once drained
        if event.seq != self.cursor + 1:
            return False
        if self.queue.qsize() >= self.queue_size:
            self.stalled = True
            return True
        self.queue.put_nowait(event)
        self.cursor = event.seq
        self.done = event.is_terminal
        return True

    def close(self, error: BaseException | None = None) -> None:
        self.done = True
        self.queue.put_nowait(error if error is not None else _CLOSED)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self.done and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if self.stalled and self.queue.qsize() <= self.queue_size // 2:
            self.stalled = False
            self.hub.poke(self.ref)
        if item is _CLOSED:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, Event)
        return item


class Hub:
    """The process-wide tail: subscribe to runs and receive their events in order."""

    def __init__(
        self,
        dsn: str,
        *,
        poll_interval: float = 2.0,
        read_limit: int = 1000,
        queue_size: int = 1000,
        ping_interval: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.poll_interval = poll_interval
        self.read_limit = read_limit
        self.queue_size = queue_size
        self.ping_interval = ping_interval
        self._subs: dict[RunRef, set[Subscription]] = {}
        self._refs: dict[UUID, RunRef] = {}  # run_id -> ref, for notifications
        self._dirty: set[RunRef] = set()
        self._sending: dict[UUID, int] = {}  # run_id -> last seq of this process's flush in flight
        self._wake = asyncio.Event()
        self._reader: asyncpg.Connection | None = None
        self._reader_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._hints: dict[str, list[Callable[[], None]]] = {}  # other channels: callbacks
        self._watchers: set[Callable[[UUID, int], None]] = set()  # every hint of the events channel
        self._listener: asyncpg.Connection | None = None
        self.listening = asyncio.Event()
        self._closed = False
        self.reads = 0
        self.reconnects = 0
        self.listener_pid: int | None = None
        self.application_name = f"{APPLICATION_NAME} {os.getpid()}.{next(_hubs)}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name="graphledger-tail-listener"),
            loop.create_task(self._read_loop(), name="graphledger-tail-reader"),
            loop.create_task(self._poll(), name="graphledger-tail-poll"),
        ]
        async with asyncio.timeout(30):
            await self.listening.wait()

    async def close(self) -> None:
        # The flag as well as the cancel: on Python 3.11 a cancellation that
        # meets a finishing wait_for (asyncpg.connect uses one) can be lost,
        # and the listener must still stop at its next turn.
        self._closed = True
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        for subs in self._subs.values():
            for sub in subs:
                sub.close()
        self._subs.clear()
        self._refs.clear()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    # -- subscribers -------------------------------------------------------------

    async def head(self, run_id: UUID) -> tuple[RunRef, int, bool]:
        """A run's ref, last seq and whether it is finished, read on the tail's own connection."""
        async with self._reader_lock:
            try:
                found = await Heads(await self._connection()).locate(run_id)
            except UNAVAILABLE:
                if self._reader is not None:
                    self._reader.terminate()
                    self._reader = None
                raise
        if found is None:
            raise RunNotFound(f"run {run_id} not found")
        return found.ref, found.last_seq, found.finished

    def subscribe(self, ref: RunRef, after_seq: int = 0) -> Subscription:
        """Follow ``ref`` from ``after_seq``; the subscription ends after the terminal event."""
        sub = Subscription(self, ref, after_seq, self.queue_size)
        self._subs.setdefault(ref, set()).add(sub)
        self._refs[ref.run_id] = ref
        self.poke(ref)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.ref)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.ref]
                self._refs.pop(sub.ref.run_id, None)
                self._sending.pop(sub.ref.run_id, None)
                self._dirty.discard(sub.ref)

    async def follow(self, ref: RunRef, after_seq: int = 0) -> AsyncIterator[Event]:
        """Iterate a run's events after ``after_seq``, live, until its terminal event."""
        sub = self.subscribe(ref, after_seq)
        try:
            async for event in sub:
                yield event
        finally:
            self.unsubscribe(sub)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def poke(self, ref: RunRef) -> None:
        """Ask the reader to read ``ref`` again."""
        if ref in self._subs:
            self._dirty.add(ref)
            self._wake.set()

    def publish(self, events: Iterable[Event]) -> None:
        """Hand events committed by this process to local subscribers (called after commit)."""
        for event in events:
            subs = self._subs.get(RunRef(event.thread_id, event.run_id))
            if not subs:
                continue
            for sub in subs:
                if not sub.offer(event):
                    self.poke(sub.ref)

    def in_flight(self, events: list[Event], sending: bool) -> None:
        """The writer of this process is committing ``events`` (``sending``), or has had its answer.

        While a flush is in flight, its own notification is no reason to read:
        :meth:`publish` hands its events over right after the commit.
        """
        if sending:
            for event in events:
                if event.run_id in self._refs:
                    self._sending[event.run_id] = event.seq  # events of a run come in seq order
        elif self._sending:
            for event in events:
                self._sending.pop(event.run_id, None)

    async def on_hint(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every notification on ``channel``, and after each reconnect of the listener.

        Like the events channel, such a channel only carries hints: the
        callback is also called whenever notifications may have been missed.
        """
        first = channel not in self._hints
        self._hints.setdefault(channel, []).append(callback)
        if first and self._listener is not None and not self._listener.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._listener.add_listener(channel, self._on_hint)
        callback()

    def watch(self, callback: Callable[[UUID, int], None]) -> Callable[[], None]:
        """Call ``callback(run_id, last_seq)`` for every hint of the events channel, of any run; return the unwatch.

        For followers of more than one run (a thread's stream), which read the
        events themselves: a hint is a wake-up, never the data, and may be lost
        while the listener reconnects (they poll as well).
        """
        self._watchers.add(callback)
        return lambda: self._watchers.discard(callback)

    def _on_hint(self, _conn: object, _pid: int, channel: str, _payload: object) -> None:
        for callback in self._hints.get(channel, ()):
            callback()

    # -- the two connections -------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for item in str(payload).split(","):
            run_text, _, seq_text = item.partition(":")
            try:
                run_id, last_seq = UUID(run_text), int(seq_text)
            except ValueError:
                continue
            for watcher in tuple(self._watchers):
                watcher(run_id, last_seq)
            ref = self._refs.get(run_id)
            if self._sending.get(run_id, 0) >= last_seq:
                continue  # committed by this process: publish() delivers it
            if ref is not None and any(s.wants_more and s.cursor < last_seq for s in self._subs[ref]):
                self.poke(ref)

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                if self._closed:
                    return
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())  # this connection's own event
                await conn.add_listener(CHANNEL, self._on_notify)
                for channel in list(self._hints):
                    await conn.add_listener(channel, self._on_hint)
                self._listener = conn
                self.listener_pid = conn.get_server_pid()
                # Anything committed while no one listened is found by reading again.
                self._dirty.update(self._subs)
                self._wake.set()
                for callbacks in list(self._hints.values()):
                    for callback in callbacks:
                        callback()
                self.listening.set()
                backoff = 0.05
                while not lost.is_set() and not self._closed:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                    # the cancellation that close() sends, and this loop would run on.
                    try:
                        async with asyncio.timeout(self.ping_interval):
                            await lost.wait()
                    except TimeoutError:
                        async with asyncio.timeout(self.ping_interval):
                            await conn.fetchval("SELECT 1")
            except _RECONNECT as exc:
                _log.warning("tail listener lost its connection (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                self._listener = None
                if conn is not None:
                    conn.terminate()
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, server_settings={"application_name": self.application_name}, timeout=CONNECT_TIMEOUT)

    async def _connection(self) -> asyncpg.Connection:
        if self._reader is None or self._reader.is_closed():
            self._reader = await self._connect()
        return self._reader

    async def _poll(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            if self._subs:
                self._dirty.update(self._subs)
                self._wake.set()

    async def _read_loop(self) -> None:
        backoff = 0.1
        while not self._closed:
            await self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            refs, self._dirty = self._dirty, set()
            cursors = []
            for ref in refs:
                active = [s.cursor for s in self._subs.get(ref, ()) if s.wants_more]
                if active:
                    cursors.append((ref, min(active)))
            if not cursors:
                continue
            try:
                async with self._reader_lock:
                    events = await read.read_runs(await self._connection(), cursors, self.read_limit)
                self.reads += 1
            except _RECONNECT as exc:
                # Subscribers wait (their streams keep their heartbeats) and get every
                # event once the database answers again.
                _log.warning("tail reader failed (%s); retrying in %.2f s", exc, backoff)
                if self._reader is not None:
                    self._reader.terminate()
                    self._reader = None
                self._dirty.update(refs)
                self._wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            counts: dict[RunRef, int] = {}
            for event in events:
                ref = RunRef(event.thread_id, event.run_id)
                counts[ref] = counts.get(ref, 0) + 1
                for sub in self._subs.get(ref, ()):
                    sub.offer(event)
            for ref, n in counts.items():
                if n >= self.read_limit:
                    self.poke(ref)  # more than one read's worth behind: read on
