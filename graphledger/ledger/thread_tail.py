"""Following one thread live: its part of the global feed, resumable from any process.

A thread's runs interleave (a cancel, a state update, a copy or a deletion
is a run of its own, and may commit while another run streams), so a place
in a thread is not a run's ``seq``: it is a place in the global feed,
``(tx, global_position)``, the cursor :class:`~graphledger.ledger.read.FeedCursor`
prints as ``"tx:position"``. The feed's rule (only rows of transactions
older than every running one, ``tx < xmin``) makes it gap-safe: a row whose
transaction commits late is never skipped, so any process can resume after
any cursor and get exactly the rows after it.

Waking up. The hub's listener already hears every append's hint
(``run_id:last_seq``); a follower watches those of the runs it knows to be
its thread's, and the run queue's hint (a run was admitted anywhere) for runs
it does not know yet. A hint only wakes the follower, which reads the table.
A committed row waits until no older transaction is running; while a run it
knows was hinted past what it has read, it reads again soon (backing off),
and it polls anyway, for hints lost while the listener reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING
from uuid import UUID

from graphledger.ledger.errors import DatabaseUnavailable
from graphledger.ledger.events import Event
from graphledger.ledger.read import FeedCursor
from graphledger.ledger.statement import RUNS_CHANNEL

if TYPE_CHECKING:
    from graphledger.ledger.store import Ledger
    from graphledger.ledger.tail import Hub

_log = logging.getLogger("graphledger.tail")

POLL_SECONDS = 1.0
FIRST_RETRY_SECONDS = 0.02
READ_LIMIT = 500

_run_queue_watchers: weakref.WeakKeyDictionary[Hub, set[Callable[[], None]]] = weakref.WeakKeyDictionary()


async def _watch_run_queue(ledger: Ledger, hub: Hub, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` whenever a run is admitted or ends anywhere; return the unwatch (one hint callback per hub)."""
    watchers = _run_queue_watchers.get(hub)
    if watchers is None:
        watchers = _run_queue_watchers[hub] = set()
        registered = watchers

        def dispatch() -> None:
            for watcher in tuple(registered):
                watcher()

        await ledger.on_hint(RUNS_CHANNEL, dispatch)
    watchers.add(callback)
    return lambda: watchers.discard(callback)


async def follow_thread(
    ledger: Ledger,
    thread_id: UUID,
    after: FeedCursor | None = None,
    *,
    poll_seconds: float = POLL_SECONDS,
    limit: int = READ_LIMIT,
) -> AsyncIterator[Event]:
    """The thread's events after ``after`` in feed order, live, forever (the caller stops).

    Without ``after``, from the feed's present: events of transactions still
    running or committed since the oldest running one began (a run already
    streaming is followed from there on).
    """
    hub = ledger.hub
    if hub is None:
        raise RuntimeError("this ledger was connected with tail=False")
    wake = asyncio.Event()
    read: dict[UUID, int] = {}  # runs of the thread: the last seq read
    hinted: dict[UUID, int] = {}  # runs of the thread: the last seq a hint named

    def on_append(run_id: UUID, last_seq: int) -> None:
        if run_id in read:
            hinted[run_id] = max(hinted.get(run_id, 0), last_seq)
            wake.set()

    unwatch = hub.watch(on_append)
    unwatch_queue = await _watch_run_queue(ledger, hub, wake.set)
    try:
        floor = 0
        first = True
        backoff = FIRST_RETRY_SECONDS
        while True:
            wake.clear()
            try:
                async with ledger.session() as session:
                    if after is None:
                        after = await session.feed_now()
                    if first:
                        first = False
                        for ref, _ in await session.heads.active(thread_id):
                            read.setdefault(ref.run_id, 0)  # hints of runs already under way wake it too
                    events, floor = await session.read_thread_feed(thread_id, after, floor, limit)
            except DatabaseUnavailable as exc:
                _log.warning("thread stream of %s cannot read (%s); retrying", thread_id, exc)
                await asyncio.sleep(min(backoff, poll_seconds))
                backoff = min(backoff * 2, poll_seconds)
                continue
            for event in events:
                read[event.run_id] = max(read.get(event.run_id, 0), event.seq)
                after = FeedCursor(event.tx, event.global_position)
                yield event
            if len(events) >= limit:
                continue
            # A run hinted past what was read: its rows are committed but wait
            # for an older transaction to end (tx < xmin); read again soon.
            behind = any(seq > read.get(run_id, 0) for run_id, seq in hinted.items())
            wait = min(backoff, poll_seconds) if behind else poll_seconds
            backoff = min(backoff * 2, poll_seconds) if behind else FIRST_RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()
    finally:
        unwatch()
        unwatch_queue()
