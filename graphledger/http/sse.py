"""Server-Sent Events over HTTP: a run's frames as they are appended, with heartbeats, resumable.

The frames themselves are rendered by :mod:`graphledger.runs.sse` (``graphledger
replay --sse`` prints the same bytes). Here they are sent: stored events first,
then live ones from the process's tail, a heartbeat comment after
``heartbeat`` idle seconds, the stream closing after the terminal event.
``Last-Event-ID: n`` resumes after ``seq`` n on any run, live or finished,
from any process; ``-1`` or ``0`` replays from the start.

A process that is stopping ends its open streams (:meth:`Streams.close`)
without a terminal event, right after a frame: a client sees a clean end, finds
the run still pending or running, and reconnects with ``Last-Event-ID``, to
another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from graphledger.http.common import HTTPError
from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.errors import LedgerError
from graphledger.runs import cancel
from graphledger.runs.sse import HEARTBEAT, frame

_log = logging.getLogger("graphledger.http")

HEARTBEAT_SECONDS = 5.0
MAX_FRAMES_PER_WRITE = 256
_HEARTBEAT = object()  # queued by a stream's idle timer
_CLOSE = object()  # queued by Streams.close
_background: set[asyncio.Task[None]] = set()  # cancels of abandoned streams, kept referenced until done


class Streams:
    """The SSE streams open in this process, so that a stopping process can end them all."""

    def __init__(self) -> None:
        self.stopping = False  # the process is handing its work over: a stream it cuts was not left by its client
        self.closing = False
        self._queues: set[asyncio.Queue[Any]] = set()

    def __len__(self) -> int:
        return len(self._queues)

    def stop(self) -> None:
        """The process is stopping: streams go on, but one that ends early now cancels no run (see :func:`sse_stream`)."""
        self.stopping = True

    def close(self) -> None:
        """End every open stream after its current write, and every stream opened from now on at once."""
        self.stopping = self.closing = True
        for queue in self._queues:
            # A full queue's stream is busy writing and checks ``closing``
            # before its next write; it needs no wake-up.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(_CLOSE)

    def _open(self, queue: asyncio.Queue[Any]) -> None:
        self._queues.add(queue)

    def _done(self, queue: asyncio.Queue[Any]) -> None:
        self._queues.discard(queue)


async def _pump(ledger: Ledger, ref: RunRef, after_seq: int, queue: asyncio.Queue[Event | None | object], live: bool) -> None:
    try:
        async for event in ledger.tail(ref, after_seq, live=live):
            await queue.put(event)
    finally:
        # The end marker; when cancelled with a full queue, no one reads it anyway.
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)


async def sse_stream(
    ledger: Ledger,
    ref: RunRef,
    *,
    after_seq: int,
    modes: set[str],
    metadata_first: Event | None = None,
    live: bool = False,
    on_disconnect: str = "continue",
    heartbeat: float = HEARTBEAT_SECONDS,
    streams: Streams | None = None,
    actor: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """The frames of a run's events after ``after_seq``, heartbeats while idle, until the terminal event.

    ``metadata_first`` is sent before them; ``live`` as in :meth:`Ledger.tail`.

    With ``streams``, the stream is one of them and ends early, without a
    terminal event, when they are closed. ``actor`` (the client's identity)
    is recorded in the cancel that ``on_disconnect="cancel"`` appends when
    the client goes away mid-run. A stream cut by its own server (stopping:
    its runs are finished or handed over) or ended by a failure of its tail
    was not left by its client, and cancels nothing.
    """
    finished = False  # ended as it should: after the terminal event, or closed by this server
    failed = False  # ended by a failure of its tail, not by its client
    queue: asyncio.Queue[Event | None | object] = asyncio.Queue(maxsize=1000)
    if streams is not None:
        streams._open(queue)
    loop = asyncio.get_running_loop()
    pump = loop.create_task(_pump(ledger, ref, after_seq, queue, live))
    last_sent = loop.time()

    timer: asyncio.TimerHandle

    def beat() -> None:
        # One timer per idle period (no task per wait): a heartbeat after
        # ``heartbeat`` seconds without a byte sent, even while events the
        # stream does not carry (other modes, usage) keep arriving.
        nonlocal timer
        remaining = last_sent + heartbeat - loop.time()
        if remaining <= 0 and queue.empty():
            queue.put_nowait(_HEARTBEAT)
            remaining = heartbeat
        timer = loop.call_later(max(remaining, heartbeat / 10), beat)

    timer = loop.call_later(heartbeat, beat)
    try:
        if metadata_first is not None:
            first = frame(metadata_first, modes)
            if first:
                yield first
                last_sent = loop.time()
        while True:
            if streams is not None and streams.closing:
                finished = True
                return
            event = await queue.get()
            if event is _CLOSE:
                continue  # seen above
            if event is _HEARTBEAT:
                yield HEARTBEAT
                last_sent = loop.time()
                continue
            # This event and everything already queued behind it go out as one write.
            frames: list[bytes] = []
            end = False
            failure: BaseException | None = None
            while True:
                if event is None:  # the tail ended: normally after the terminal event, else on an error
                    await asyncio.wait({pump})
                    failure = None if pump.cancelled() else pump.exception()
                    end = True
                    break
                if event is not _HEARTBEAT and event is not _CLOSE:
                    assert isinstance(event, Event)
                    data = frame(event, modes)
                    if data is not None:
                        frames.append(data)
                    if event.is_terminal:
                        end = True
                        break
                if queue.empty() or len(frames) >= MAX_FRAMES_PER_WRITE:
                    break
                event = queue.get_nowait()
            if frames:
                yield b"".join(frames)
                last_sent = loop.time()
            if failure is not None:
                failed = True
                raise failure
            if end:
                finished = True
                return
    finally:
        if streams is not None:
            streams._done(queue)
        timer.cancel()
        pump.cancel()
        # Not cancel_and_wait: a stream is stopped inside an anyio cancel scope,
        # which cancels every await again; the cancel below must still be sent.
        with contextlib.suppress(asyncio.CancelledError, LedgerError):
            await pump
        if not finished and not failed and on_disconnect == "cancel" and not (streams is not None and streams.stopping):
            # The client went away mid-run: cancel it, outliving this cancelled generator.
            task = asyncio.get_running_loop().create_task(_cancel_quietly(ledger, ref, actor))
            _background.add(task)
            task.add_done_callback(_background.discard)


async def _cancel_quietly(ledger: Ledger, ref: RunRef, actor: dict[str, Any] | None) -> None:
    with contextlib.suppress(LedgerError):
        await cancel(ledger, ref, reason="client disconnected", actor=actor)


def sse_response(frames: AsyncIterator[bytes], ref: RunRef, *, created: bool = False) -> StreamingResponse:
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    if created:
        headers["Location"] = f"/threads/{ref.thread_id}/runs/{ref.run_id}/stream"
        headers["Content-Location"] = f"/threads/{ref.thread_id}/runs/{ref.run_id}"
    return StreamingResponse(frames, media_type="text/event-stream", headers=headers)


def last_event_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` header as a seq (``-1`` is read as 0); None when absent or blank; 422 when not a seq."""
    text = request.headers.get("last-event-id")
    if text is None or text.strip() == "":
        return None
    digits = text.strip()
    if _EVENT_ID.fullmatch(digits) is None:
        raise HTTPError(422, f"Last-Event-ID must be an event id (a seq), not {text[:50]!r}")
    value = int(digits) if len(digits) <= 20 else int(digits[:21])  # beyond any seq either way
    if value < -1:
        raise HTTPError(422, "Last-Event-ID must be -1 or more")
    return max(value, 0)


_EVENT_ID = re.compile(r"-?[0-9]+")


async def check_resumable(ledger: Ledger, ref: RunRef, after: int) -> None:
    """422 unless the run has an event ``after`` (or ``after`` is 0).

    An id is sent only once its event is committed, and the head moves in the
    same commit: an id past the head never came from this ledger, and a stream
    after it would wait for events that never come.
    """
    async with ledger.session() as session:
        head = (await session.heads.require(ref)).seq
    if after > head:
        raise HTTPError(422, f"Last-Event-ID {after} is past the run's last event ({head})")
