"""Read models folded from the log: run status, token usage, messages.

Open the ledger through :func:`connect` so every append writes them inline.
"""

from __future__ import annotations

from typing import Any

from graphledger.ledger import Ledger
from graphledger.projections.errors import (
    InvalidArgument,
    InvalidCursor,
    RebuildRunning,
)
from graphledger.projections.project import Projector
from graphledger.projections.read import MessagePage, Projections
from graphledger.projections.rebuild import RebuildReport, rebuild


async def connect(dsn: str, **options: Any) -> Ledger:
    """A :class:`~graphledger.ledger.Ledger` whose appends keep the projections current.

    ``options`` are those of :meth:`Ledger.connect <graphledger.ledger.Ledger.connect>`.
    """
    return await Ledger.connect(dsn, projector=Projector(), **options)


__all__ = [
    "InvalidArgument",
    "InvalidCursor",
    "MessagePage",
    "Projections",
    "Projector",
    "RebuildReport",
    "RebuildRunning",
    "connect",
    "rebuild",
]
