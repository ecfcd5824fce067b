"""Everything a server process runs besides HTTP: the checkpointer, the store, the workers, the reaper and the webhook deliverer."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from langgraph.store.postgres.aio import AsyncPostgresStore

from graphledger.ledger import Ledger
from graphledger.runs import checkpoint, store
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.leases import Reaper
from graphledger.runs.webhooks import Webhooks, WebhookSettings
from graphledger.runs.worker import Admissions, Worker

_log = logging.getLogger("graphledger.runs")


@dataclass(slots=True)
class RunSettings:
    """How a server executes runs."""

    workers: int = 10  # runs executed at once by this process; 0: none (HTTP only)
    lease_seconds: float = 30.0
    lease_grace_seconds: float = 10.0
    run_timeout: float | None = None
    drain_seconds: float = 10.0
    poll_interval: float = 1.0
    outage_seconds: float = checkpoint.DEFAULT_OUTAGE_SECONDS  # how long runs wait out a database outage
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)


class Runtime:
    """Starts and stops the checkpointer, the store, the worker (unless ``workers`` is 0) and the reaper of one process.

    The reaper runs in every process, workers or not: any live server ends
    the runs of a dead one.
    """

    def __init__(self, ledger: Ledger, graphs: GraphRegistry, settings: RunSettings | None = None) -> None:
        self.ledger = ledger
        self.graphs = graphs
        self.settings = settings or RunSettings()
        self.worker: Worker | None = None
        self.reaper: Reaper | None = None
        self.webhooks: Webhooks | None = None
        self.checkpointer: Any = None
        self.store: AsyncPostgresStore | None = None
        self.admissions = Admissions()
        self._stack = AsyncExitStack()
        # drain() may be called by the server's shutdown and by close() at
        # once: the second caller waits for the first, and finds nothing left.
        self._draining = asyncio.Lock()

    async def start(self) -> None:
        s = self.settings
        try:
            # Also without workers: reads of a thread's state (a join's answer) come from it.
            self.checkpointer = await self._stack.enter_async_context(checkpoint.saver(self.ledger.dsn, outage_seconds=s.outage_seconds))
            self.store = await self._stack.enter_async_context(store.store(self.ledger.dsn))
            if s.workers > 0:
                self.worker = Worker(
                    self.ledger,
                    self.graphs,
                    checkpointer=self.checkpointer,
                    store=self.store,
                    concurrency=s.workers,
                    lease_seconds=s.lease_seconds,
                    poll_interval=s.poll_interval,
                    run_timeout=s.run_timeout,
                    admissions=self.admissions,
                )
                await self.worker.start()
                _log.info("executing up to %d runs at once as %s; graphs: %s", s.workers, self.worker.owner, ", ".join(self.graphs.names))
            self.reaper = Reaper(
                self.ledger,
                grace_seconds=s.lease_grace_seconds,
                idle_seconds=s.lease_seconds,
                interval=max(0.2, min(5.0, s.lease_grace_seconds / 2)),
            )
            self.reaper.start()
            # Like the reaper, in every process: a delivery left by a process that died is taken up by any other.
            self.webhooks = Webhooks(self.ledger, s.webhooks)
            self.webhooks.start()
        except BaseException:
            await self.close()
            raise

    async def drain(self) -> None:
        """Stop executing: running runs get ``drain_seconds`` to finish, the rest are released to other processes."""
        async with self._draining:
            if self.worker is not None:
                await self.worker.stop(self.settings.drain_seconds)
                self.worker = None

    async def close(self) -> None:
        await self.drain()
        if self.reaper is not None:
            await self.reaper.close()
            self.reaper = None
        if self.webhooks is not None:
            await self.webhooks.close()
            self.webhooks = None
        await self._stack.aclose()
