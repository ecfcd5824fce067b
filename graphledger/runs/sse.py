"""A run's stream rendered from its log: the SSE frame of each stored event.

The HTTP layer sends these frames live and on resume; ``graphledger replay
--sse`` prints the same bytes from the stored events. ``run.created`` is sent
as ``metadata`` (attempt 1), ``stream:<mode>[|<ns>]`` as ``<mode>[|<ns>]`` (only
the modes the run asked for), ``stream:error`` as ``error``; the ``run.started``
of a later attempt (a released run resumed) is sent as ``metadata`` with its
attempt. Every frame's ``id`` is the event's ``seq``. Other events (lifecycle,
LLM usage) are not part of the stream.
"""

from __future__ import annotations

import json

from graphledger.ledger.events import RUN_CREATED, RUN_STARTED, STREAM_ERROR, STREAM_PREFIX, Event
from graphledger.runs.request import STREAM_MODES

HEARTBEAT = b": heartbeat\n\n"
"""An SSE comment sent while a stream is idle; clients ignore it."""


def sse_modes(requested: list[str]) -> set[str]:
    """The stored stream modes a run's SSE stream sends, for the modes it asked for."""
    return {STREAM_MODES[m] for m in requested}


def metadata(run_id: object, attempt: int) -> str:
    """The data of a ``metadata`` frame."""
    return json.dumps({"run_id": str(run_id), "attempt": attempt}, separators=(",", ":"))


def attempt_of(event: Event) -> int:
    """The attempt a ``run.started`` event begins (1 when it does not say)."""
    value = event.value
    attempt = value.get("attempt") if isinstance(value, dict) else None
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1


def frame(event: Event, modes: set[str]) -> bytes | None:
    """The SSE frame of a stored event, or None when the stream does not carry it."""
    if event.kind == RUN_CREATED:
        name, data = "metadata", metadata(event.run_id, 1)
    elif event.kind == RUN_STARTED:
        attempt = attempt_of(event)
        if attempt == 1:
            return None  # the first attempt was announced by run.created
        name, data = "metadata", metadata(event.run_id, attempt)
    elif event.kind == STREAM_ERROR:
        name, data = "error", event.data
    elif event.kind.startswith(STREAM_PREFIX):
        name = event.kind[len(STREAM_PREFIX):]
        if name.partition("|")[0] not in modes:
            return None
        data = event.data
    else:
        return None
    return f"event: {name}\ndata: {data}\nid: {event.seq}\n\n".encode()
