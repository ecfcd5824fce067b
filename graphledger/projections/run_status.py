"""Run status as a fold over a run's events, and a thread's status over its runs.

Payloads read (all keys optional):

- ``run.created``: ``assistant_id``
- ``run.started``: ``worker``, ``attempt``
- ``run.failed`` / ``run.timed_out`` / ``run.interrupted``: ``error`` as
  ``{"type": str, "message": str}``
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from graphledger.ledger.events import (
    RUN_CREATED,
    RUN_STARTED,
    STATUS_AFTER,
    TERMINAL_KINDS,
    Event,
)

ACTIVE = frozenset({"pending", "running"})


@dataclass(frozen=True, slots=True)
class RunStatus:
    """What a run's events say about it so far."""

    thread_id: UUID
    run_id: UUID
    status: str = "pending"
    assistant_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 0
    worker: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    last_seq: int = 0

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def fold(state: RunStatus | None, event: Event) -> RunStatus:
    """The run's status after ``event`` (``state`` is None before the first event)."""
    if state is None:
        state = RunStatus(event.thread_id, event.run_id)
    changes: dict[str, Any] = {"last_seq": event.seq}
    if event.kind in STATUS_AFTER:
        changes["status"] = STATUS_AFTER[event.kind]
        payload = event.value if isinstance(event.value, dict) else {}
        if event.kind == RUN_CREATED:
            changes["created_at"] = event.ts
            changes["assistant_id"] = _text(payload.get("assistant_id"))
        elif event.kind == RUN_STARTED:
            changes["started_at"] = event.ts
            attempt = payload.get("attempt")
            changes["attempt"] = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else state.attempt + 1
            changes["worker"] = _text(payload.get("worker"))
        elif event.kind in TERMINAL_KINDS:
            changes["finished_at"] = event.ts
            error = payload.get("error")
            if isinstance(error, dict):
                changes["error_type"] = _text(error.get("type"))
                changes["error_message"] = _text(error.get("message"))
    return replace(state, **changes)


def replay(events: Iterable[Event]) -> RunStatus | None:
    """Fold a run's events from the start."""
    state: RunStatus | None = None
    for event in events:
        state = fold(state, event)
    return state


def thread_status(runs: Iterable[RunStatus]) -> str:
    """A thread's status from its runs: busy while one is active, else what its latest run ended as."""
    latest: RunStatus | None = None
    for run in runs:
        if run.status in ACTIVE:
            return "busy"
        if latest is None or (run.finished_at, run.last_seq) > (latest.finished_at, latest.last_seq):  # type: ignore[operator]
            latest = run
    if latest is None or latest.status == "success":
        return "idle"
    if latest.status == "interrupted":
        return "interrupted"
    return "error"
