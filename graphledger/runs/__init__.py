"""Run execution on top of the log: admission, cancel, workers with leases, the reaper, the recorder, graphs."""

from __future__ import annotations

from graphledger.runs.errors import (
    GraphLoadError,
    InvalidRequest,
    NotCancellable,
    NotPending,
    ThreadBusy,
    UnknownAssistant,
)
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.leases import LeaseKeeper, Reaper
from graphledger.runs.lifecycle import (
    Admitted,
    Cancelled,
    admit,
    cancel,
    delete_thread,
    join,
)
from graphledger.runs.recorder import Recorder, Recording
from graphledger.runs.request import RunRequest
from graphledger.runs.runtime import RunSettings, Runtime
from graphledger.runs.worker import Worker

__all__ = [
    "Admitted",
    "Cancelled",
    "GraphLoadError",
    "GraphRegistry",
    "InvalidRequest",
    "LeaseKeeper",
    "NotCancellable",
    "NotPending",
    "Reaper",
    "Recorder",
    "Recording",
    "RunRequest",
    "RunSettings",
    "Runtime",
    "ThreadBusy",
    "UnknownAssistant",
    "Worker",
    "admit",
    "cancel",
    "delete_thread",
    "join",
]
