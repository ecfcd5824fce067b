"""The loops that keep leases honest: renewal by the holder, reaping by every process.

A worker (or a recorder) holds a lease on each run it executes and renews it
every third of its length (:class:`LeaseKeeper`); every ``graphledger serve``
process, workers or not, ends the runs whose lease expired a grace period
ago (:class:`Reaper`), so no run stays "running" after its process died.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from graphledger.ledger import Ledger
from graphledger.ledger.errors import DatabaseUnavailable
from graphledger.ledger.events import RunRef
from graphledger.runs import lifecycle
from graphledger.runs.periodic import Periodic

_log = logging.getLogger("graphledger.runs")


class LeaseKeeper(Periodic):
    """Renews ``owner``'s leases on the runs it holds, every third of the lease.

    A run missing from a renewal ended or was reaped meanwhile: ``on_lost``
    is called for it, and the holder must stop writing to it. A run the
    holder is ending (:meth:`ending`) stays held until its terminal event is
    written, however long the database takes: a lease given up earlier would
    let the reaper fail a run that succeeded. Its loss is not reported, since
    that end itself may be what took it; the append of the end tells the
    holder whether the run was still its own.
    """

    name = "lease renewal"

    def __init__(
        self, ledger: Ledger, owner: str, lease_seconds: float, on_lost: Callable[[RunRef], None] | None = None
    ) -> None:
        super().__init__(lease_seconds / 3, delay_first=True)
        self.ledger = ledger
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.on_lost = on_lost
        self.held: set[RunRef] = set()
        self._ending: set[RunRef] = set()

    def hold(self, ref: RunRef) -> None:
        self.held.add(ref)

    def ending(self, ref: RunRef) -> None:
        """The holder is writing the run's end: keep its lease renewed, and expect to lose it."""
        if ref in self.held:
            self._ending.add(ref)

    def release(self, ref: RunRef) -> None:
        self.held.discard(ref)
        self._ending.discard(ref)

    async def tick(self) -> None:
        asked = set(self.held)
        kept = await lifecycle.renew(self.ledger, self.owner, asked, lease_seconds=self.lease_seconds)
        for ref in asked - kept:
            if ref in self._ending:  # ended by its holder, or reaped as it ended: the end's append says which
                self.release(ref)
            elif ref in self.held:  # not released while renewing: it was taken from us
                self.held.discard(ref)
                _log.warning("lease on run %s lost: it ended or was reaped", ref.run_id)
                if self.on_lost is not None:
                    self.on_lost(ref)


class Reaper(Periodic):
    """Ends runs whose lease expired ``grace_seconds`` ago, every ``interval`` seconds.

    A lease is not expired by an outage that also stopped its renewal: a
    process reaps only once the database has answered it for
    ``settle_seconds`` (by default a lease and its grace, ``idle_seconds +
    grace_seconds``), the time every live holder needs to renew. Every round
    asks the database first (:meth:`Ledger.ping`, which gives up after 2 s),
    so an outage, or a stall, that falls inside that time starts it again.
    A process that just started waits the same time: it cannot tell whether
    the database was away from the others before it came up. A restart of
    the database is also judged in the database itself (see
    :func:`lifecycle.reap`). Each round that reaps also deletes the threads
    of stateless runs that ended without them (:func:`lifecycle.complete_due`).
    """

    name = "reaping"

    def __init__(
        self,
        ledger: Ledger,
        *,
        grace_seconds: float = 10.0,
        idle_seconds: float = 30.0,
        interval: float = 5.0,
        settle_seconds: float | None = None,
    ) -> None:
        super().__init__(interval)
        self.ledger = ledger
        self.grace_seconds = grace_seconds
        self.idle_seconds = idle_seconds
        # How long the database must have answered before a lease is judged: a lease and its grace.
        self.settle_seconds = idle_seconds + grace_seconds if settle_seconds is None else settle_seconds
        self.reaped = 0
        self.completed = 0  # threads of ended stateless runs deleted here (see lifecycle.complete_due)
        self._reachable_since: float | None = None  # monotonic time since which every round reached the database

    async def tick(self) -> None:
        try:
            await self.ledger.ping()
            if self._reachable_since is None:
                self._reachable_since = time.monotonic()
            if time.monotonic() - self._reachable_since >= self.settle_seconds:
                await self.reap_once()
                self.completed += len(await lifecycle.complete_due(self.ledger))
        except DatabaseUnavailable:
            self._reachable_since = None
            raise

    async def reap_once(self) -> int:
        events = await lifecycle.reap(
            self.ledger, grace_seconds=self.grace_seconds, idle_seconds=self.idle_seconds, settle_seconds=self.settle_seconds
        )
        ended = sum(1 for e in events if e.is_terminal)
        if ended:
            _log.warning("reaped %d runs whose worker stopped renewing its lease", ended)
        self.reaped += ended
        return ended

