"""Stopping background tasks."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel ``tasks`` and wait until they have ended; raise the first exception one ended with.

    Unlike awaiting each one under ``suppress(CancelledError)``, this never
    swallows a cancellation of the caller itself: a ``close()`` built on it
    can still be cancelled (a shutdown with a time limit, ``wait_for``).
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    if not pending:
        return
    await asyncio.wait(pending)
    errors = [task.exception() for task in pending if not task.cancelled()]  # taken, so never reported as unhandled
    for error in errors:
        if error is not None:
            raise error
