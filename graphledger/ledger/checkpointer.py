"""Keeping the Merkle log current: growing its tiles and signing checkpoints, on demand or periodically.

Runs beside the writers, never on the append path: ``graphledger serve``
starts a :class:`Checkpointer` that grows the tree every ``grow_interval``
seconds and, given a signing key, signs a checkpoint every ``interval``
seconds. Each checkpoint is kept in the ``checkpoints`` table and, with a
directory, written there too, outside the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from graphledger.ledger.errors import LedgerError
from graphledger.ledger.note import Checkpoint, Signer

if TYPE_CHECKING:
    from graphledger.ledger.store import Ledger

_log = logging.getLogger("graphledger.checkpoints")


def write_checkpoint(directory: Path, checkpoint: Checkpoint, note: str) -> Path:
    """Write ``note`` to ``directory`` as ``checkpoint-<size>-<time>`` (atomically; never overwrites)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = checkpoint.time.replace(":", "").replace("-", "")
    target = directory / f"checkpoint-{checkpoint.size:012d}-{stamp}"
    partial = target.with_name(target.name + ".partial")
    partial.write_text(note, encoding="utf-8")
    os.replace(partial, target)
    return target


async def sign_checkpoint(ledger: Ledger, signer: Signer, directory: Path | None = None) -> tuple[Checkpoint, str, Path | None]:
    """Grow the tree, sign a checkpoint of it, keep it in the database and (with ``directory``) in a file."""
    async with ledger.session() as session:
        checkpoint, note = await session.log.sign(signer)
    path = write_checkpoint(directory, checkpoint, note) if directory is not None else None
    return checkpoint, note, path


class Checkpointer:
    """The background task of ``graphledger serve``: grow the tree, sign checkpoints at an interval."""

    def __init__(
        self,
        ledger: Ledger,
        signer: Signer | None = None,
        *,
        interval: float = 60.0,
        directory: Path | None = None,
        grow_interval: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.signer = signer
        self.interval = interval
        self.directory = directory
        self.grow_interval = grow_interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="graphledger-checkpointer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_signature = loop.time() + (self.interval if self.signer is not None else float("inf"))
        while True:
            try:
                if self.signer is not None and loop.time() >= next_signature:
                    next_signature = loop.time() + self.interval
                    checkpoint, _, path = await sign_checkpoint(self.ledger, self.signer, self.directory)
                    _log.info("signed checkpoint of %d leaves%s", checkpoint.size, f" ({path})" if path else "")
                else:
                    async with self.ledger.session() as session:
                        await session.log.grow()
            except (LedgerError, OSError) as exc:  # the database or the directory is away: try again next round
                _log.warning("checkpointer: %s", exc)
            except Exception:
                _log.exception("checkpointer failed; trying again")
            await asyncio.sleep(min(self.grow_interval, max(0.0, next_signature - loop.time())))
