"""A thread's stream rendered from its part of the log: the SSE frames of every run of the thread.

The modes of ``GET /threads/{id}/stream`` are the LangGraph API's:

* ``run_modes`` (the default): each run's frames as its own stream sends them
  (the modes it asked for, :func:`graphledger.runs.sse.frame`), and after its
  terminal event ``metadata`` ``{"status": "run_done", "run_id"}``;
* ``lifecycle``: only the ``metadata`` frames (a run's start, a later
  attempt, ``run_done``);
* ``state_update``: ``state_update`` ``{"state": {"values", "checkpoint"},
  "thread_id"}`` when an update of the thread's state (``POST
  /threads/{id}/state``, a run of its own) succeeds.

Commands recorded as runs (a state update, a copy, a deletion) are not runs a
client follows: they send no run frames. Every frame's ``id`` is its event's
place in the global feed, ``tx:position``: a ``Last-Event-ID`` any process
can resume after.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from graphledger.ledger.events import RUN_CREATED, RUN_STARTED, RUN_SUCCEEDED, STREAM_ERROR, STREAM_PREFIX, Event
from graphledger.ledger.read import FeedCursor
from graphledger.runs.recorder import stream_kind
from graphledger.runs.request import STREAM_MODES
from graphledger.runs.sse import attempt_of, metadata, sse_modes
from graphledger.runs.state import UPDATE_STATE

THREAD_STREAM_MODES = ("run_modes", "lifecycle", "state_update")



def event_id(event: Event) -> str:
    """The SSE id of a thread stream's frame: the event's place in the global feed."""
    return str(FeedCursor(event.tx, event.global_position))


def _frame(name: str, data: str, event: Event) -> bytes:
    return f"event: {name}\ndata: {data}\nid: {event_id(event)}\n\n".encode()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ThreadFrames:
    """Renders a thread's events in the chosen modes; learns each run from its ``run.created``."""

    def __init__(self, thread_id: UUID, modes: set[str]) -> None:
        unknown = modes - set(THREAD_STREAM_MODES)
        if unknown:
            raise ValueError(f"unknown thread stream modes {sorted(unknown)}")
        self.thread_id = thread_id
        self.modes = modes
        self._runs: dict[UUID, tuple[str | None, set[str]]] = {}  # run -> (command, SSE modes)
        self._values: dict[UUID, str] = {}  # a state update's values, until it succeeds

    def knows(self, run_id: UUID) -> bool:
        return run_id in self._runs

    def learn(self, created: Event) -> None:
        """Take a run's ``run.created``: whether it is a command, and the modes its stream sends."""
        request = created.value if isinstance(created.value, Mapping) else {}
        command = request.get("command")
        requested = request.get("stream_mode") or ["values"]
        if isinstance(requested, str):
            requested = [requested]
        modes = sse_modes([m for m in requested if m in STREAM_MODES])
        self._runs[created.run_id] = (command if isinstance(command, str) else None, modes)

    def frame(self, event: Event) -> bytes | None:
        """The frame of ``event`` (a run :meth:`learn` has seen), or None when the stream does not carry it."""
        if event.kind == RUN_CREATED:
            self.learn(event)
        command, modes = self._runs[event.run_id]
        if command is not None:
            return self._command_frame(command, event)
        lifecycle = "lifecycle" in self.modes or "run_modes" in self.modes
        if event.kind == RUN_CREATED or (event.kind == RUN_STARTED and attempt_of(event) > 1):
            if not lifecycle:
                return None
            attempt = 1 if event.kind == RUN_CREATED else attempt_of(event)
            return _frame("metadata", metadata(event.run_id, attempt), event)
        if event.is_terminal:
            self._runs.pop(event.run_id, None)
            if not lifecycle:
                return None
            return _frame("metadata", _json({"status": "run_done", "run_id": str(event.run_id)}), event)
        if "run_modes" not in self.modes:
            return None
        if event.kind == STREAM_ERROR:
            return _frame("error", event.data, event)
        if event.kind.startswith(STREAM_PREFIX):
            name = event.kind[len(STREAM_PREFIX):]
            return _frame(name, event.data, event) if name.partition("|")[0] in modes else None
        return None

    def _command_frame(self, command: str, event: Event) -> bytes | None:
        if command != UPDATE_STATE or "state_update" not in self.modes:
            if event.is_terminal:
                self._runs.pop(event.run_id, None)
            return None
        if event.kind == stream_kind("values"):
            self._values[event.run_id] = event.data
            return None
        if not event.is_terminal:
            return None
        self._runs.pop(event.run_id, None)
        values = self._values.pop(event.run_id, None)
        if event.kind != RUN_SUCCEEDED or values is None:
            return None  # a refused update changed nothing
        payload = event.value if isinstance(event.value, Mapping) else {}
        checkpoint = _json(payload.get("checkpoint"))
        data = f'{{"state":{{"values":{values},"checkpoint":{checkpoint}}},"thread_id":"{self.thread_id}"}}'
        return _frame("state_update", data, event)
