"""Run status as a fold over a run's lifecycle events, and a thread's status over its runs.

Payloads read (all keys optional):

- ``run.created``: ``assistant_id``
- ``run.started``: ``worker`` (each start is one more attempt)
- ``run.failed`` / ``run.timed_out`` / ``run.interrupted``: ``error`` as
  ``{"type": str, "message": str}``

Each lifecycle event becomes a :class:`StatusPatch`; the status is the patches
applied in ``seq`` order. Patches compose (:meth:`StatusPatch.then`), so the
writer folds the events of one flush into one patch per run and merges it into
the stored row with the same rule in SQL (``projections/project.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from graphledger.ledger.events import (
    RUN_CREATED,
    RUN_STARTED,
    STATUS_AFTER,
    TERMINAL_KINDS,
    Event,
)
from graphledger.projections._text import text as _text

ACTIVE = frozenset({"pending", "running"})


@dataclass(frozen=True, slots=True)
class RunStatus:
    """What a run's lifecycle events say about it so far."""

    thread_id: UUID
    run_id: UUID
    status: str = "pending"
    status_seq: int = 0
    assistant_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt: int = 0
    worker: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    identity: str | None = None  # who asked for the run
    metadata: Any = None  # the run's metadata, as its run.created recorded it

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True, slots=True)
class StatusPatch:
    """What some lifecycle events of one run change: fields they set (None: unchanged), attempts they add."""

    thread_id: UUID
    run_id: UUID
    status: str
    status_seq: int
    assistant_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    starts: int = 0  # attempts begun
    worker: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    identity: str | None = None
    metadata: Any = None

    def then(self, later: StatusPatch) -> StatusPatch:
        """This patch followed by ``later`` (of the same run)."""
        return StatusPatch(
            self.thread_id,
            self.run_id,
            later.status,
            later.status_seq,
            _last(self.assistant_id, later.assistant_id),
            _last(self.created_at, later.created_at),
            _last(self.started_at, later.started_at),
            _last(self.finished_at, later.finished_at),
            self.starts + later.starts,
            _last(self.worker, later.worker),
            _last(self.error_type, later.error_type),
            _last(self.error_message, later.error_message),
            _last(self.identity, later.identity),
            _last(self.metadata, later.metadata),
        )


def _last(earlier: Any, later: Any) -> Any:
    return earlier if later is None else later


def patch_of(event: Event) -> StatusPatch | None:
    """The change a lifecycle event makes (None for every other event)."""
    status = STATUS_AFTER.get(event.kind)
    if status is None:
        return None
    payload = event.value if isinstance(event.value, dict) else {}
    fields: dict[str, Any] = {}
    if event.kind == RUN_CREATED:
        fields["created_at"] = event.ts
        fields["assistant_id"] = _text(payload.get("assistant_id"))
        actor = payload.get("actor")
        fields["identity"] = _text(actor.get("identity")) if isinstance(actor, dict) else None
        fields["metadata"] = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else None
    elif event.kind == RUN_STARTED:
        fields["started_at"] = event.ts
        fields["starts"] = 1
        fields["worker"] = _text(payload.get("worker"))
    elif event.kind in TERMINAL_KINDS:
        fields["finished_at"] = event.ts
        error = payload.get("error")
        if isinstance(error, dict):
            fields["error_type"] = _text(error.get("type"))
            fields["error_message"] = _text(error.get("message"))
    return StatusPatch(event.thread_id, event.run_id, status, event.seq, **fields)


def apply(state: RunStatus | None, patch: StatusPatch) -> RunStatus:
    """The status after ``patch`` (``state`` is None before the run's first lifecycle event).

    A patch no newer than the state (``status_seq``) changes nothing, so
    applying one twice is harmless.
    """
    if state is not None and patch.status_seq <= state.status_seq:
        return state
    if state is None:
        state = RunStatus(patch.thread_id, patch.run_id)
    return replace(
        state,
        status=patch.status,
        status_seq=patch.status_seq,
        assistant_id=_last(state.assistant_id, patch.assistant_id),
        created_at=_last(state.created_at, patch.created_at),
        started_at=_last(state.started_at, patch.started_at),
        finished_at=_last(state.finished_at, patch.finished_at),
        attempt=state.attempt + patch.starts,
        worker=_last(state.worker, patch.worker),
        error_type=_last(state.error_type, patch.error_type),
        error_message=_last(state.error_message, patch.error_message),
        identity=_last(state.identity, patch.identity),
        metadata=_last(state.metadata, patch.metadata),
    )


def fold(state: RunStatus | None, event: Event) -> RunStatus | None:
    """The run's status after ``event`` (unchanged by events that are not lifecycle transitions)."""
    patch = patch_of(event)
    return state if patch is None else apply(state, patch)


def replay(events: Iterable[Event]) -> RunStatus | None:
    """Fold a run's events from the start."""
    state: RunStatus | None = None
    for event in events:
        state = fold(state, event)
    return state


THREAD_STATUSES = ("idle", "busy", "interrupted", "error")


def thread_status(runs: Iterable[RunStatus]) -> str:
    """A thread's status from its runs: busy while one is active, else what its latest finished run ended as."""
    latest: RunStatus | None = None
    for run in runs:
        if run.status in ACTIVE:
            return "busy"
        if latest is None or _finish_order(run) > _finish_order(latest):
            latest = run
    if latest is None or latest.status == "success":
        return "idle"
    if latest.status == "interrupted":
        return "interrupted"
    return "error"


_NEVER = datetime.min.replace(tzinfo=timezone.utc)


def _finish_order(run: RunStatus) -> tuple[datetime, datetime, str]:
    return (run.finished_at or _NEVER, run.created_at or _NEVER, str(run.run_id))
