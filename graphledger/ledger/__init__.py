"""The write side and the log: schema, append, read, tail, hash chain."""

from __future__ import annotations

from graphledger.ledger.errors import (
    Conflict,
    InvalidEvent,
    InvalidPayload,
    LedgerError,
    RunFinished,
    RunNotFound,
    ThreadNotFound,
)
from graphledger.ledger.events import Event, NewEvent, RunRef
from graphledger.ledger.store import Ledger

__all__ = [
    "Conflict",
    "Event",
    "InvalidEvent",
    "InvalidPayload",
    "Ledger",
    "LedgerError",
    "NewEvent",
    "RunFinished",
    "RunNotFound",
    "RunRef",
    "ThreadNotFound",
]
