"""Notifications for events committed without them: sent after the commit, coalesced, off the caller's path.

An append made inside a longer transaction, such as an admission, can leave
its notifications out of the append statement (``Statement(...,
notify=False)``, used by ``Ledger.transaction(notify=False)``). PostgreSQL takes one database-wide lock at the commit of a
transaction that notified and holds it until that commit is flushed to disk,
so notifying commits are flushed one after another, never several in one
flush; a burst of admissions queued for it. :class:`Hints` sends those
notifications once the transaction has committed, on a connection of its own,
and everything queued while one statement is in flight goes into the next:
the caller neither waits for it nor holds a pooled connection meanwhile.

The notifications stay hints. They are never sent before the rows are
visible, and one that is lost (the process dies after the commit, the
connection fails) costs other processes latency, not events: their tails
and workers poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from uuid import UUID

import asyncpg

from graphledger.ledger.events import STATUS_AFTER, Event
from graphledger.ledger.statement import CHANNEL, NOTIFY_RUNS_PER_MESSAGE, RUNS_CHANNEL
from graphledger.ledger.tasks import cancel_and_wait

_log = logging.getLogger("graphledger.writer")

NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', $1::text), CASE WHEN $2::bool THEN pg_notify('{RUNS_CHANNEL}', '') END"


def payloads(events: Iterable[Event]) -> tuple[list[str], bool]:
    """The events channel payloads (``run_id:last_seq,...``) of ``events``, and whether the run queue changed.

    The same hints the append statement sends: each run's last seq, and a
    run-queue hint when a run was admitted or ended.
    """
    last: dict[UUID, int] = {}
    queue_changed = False
    for event in events:
        last[event.run_id] = max(event.seq, last.get(event.run_id, 0))
        status = STATUS_AFTER.get(event.kind)
        queue_changed = queue_changed or (status is not None and status != "running")
    items = [f"{run_id}:{seq}" for run_id, seq in last.items()]
    parts = [",".join(items[i : i + NOTIFY_RUNS_PER_MESSAGE]) for i in range(0, len(items), NOTIFY_RUNS_PER_MESSAGE)]
    return parts, queue_changed


class Hints:
    """Sends the notifications of committed events in the background, many in one statement."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._pending: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def send(self, events: Iterable[Event]) -> None:
        """Queue the notifications of ``events``, whose transaction has committed; returns at once."""
        if self._closed:
            return
        self._pending.extend(events)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="graphledger-hints")

    async def _run(self) -> None:
        while self._pending:
            events, self._pending = self._pending, []
            parts, queue_changed = payloads(events)
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                for part in parts:
                    await self._conn.execute(NOTIFY_SQL, part, queue_changed)
                    queue_changed = False
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                _log.warning("notifications for %d events not sent (%s); other processes find them by polling", len(events), exc)
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout`` seconds: the database may be gone), then close the connection."""
        self._closed = True
        try:
            if self._task is not None:
                await asyncio.wait({self._task}, timeout=timeout)
        finally:
            await cancel_and_wait(self._task)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
