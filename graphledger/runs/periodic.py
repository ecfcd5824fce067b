"""A coroutine a process runs every few seconds for as long as it lives: lease renewal, reaping."""

from __future__ import annotations

import asyncio
import logging

from graphledger.ledger.tasks import cancel_and_wait

_log = logging.getLogger("graphledger.runs")


class Periodic:
    """Runs :meth:`tick` every ``interval`` seconds in a task of its own, surviving any one failure.

    With ``delay_first`` the first tick comes after one interval, not at once.
    """

    name = "periodic task"

    def __init__(self, interval: float, *, delay_first: bool = False) -> None:
        self.interval = interval
        self.delay_first = delay_first
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"graphledger {self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        if self.delay_first:
            await asyncio.sleep(self.interval)
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the loop must outlive any one failure
                _log.warning("%s failed (%s: %s); retrying", self.name, type(exc).__name__, exc)
            await asyncio.sleep(self.interval)
