"""``GET /threads/{thread_id}/stream``: every run of a thread as it happens, resumable from any process.

The frames are rendered by :mod:`graphledger.runs.thread_sse` from the
thread's part of the global feed (:mod:`graphledger.ledger.thread_tail`);
each frame's ``id`` is its event's place in that feed, ``tx:position``, so
``Last-Event-ID`` resumes exactly after it on any process. Without it the
stream starts at the present (a run already streaming is followed from
there); ``-1`` or ``0`` replays the thread from its start. The modes are the
LangGraph API's ``run_modes`` (the default), ``lifecycle`` and
``state_update``, named by ``stream_modes`` (comma-separated, as the
reference reads it) or ``stream_mode`` (repeated, as the SDK sends it).
The stream never ends by itself: the client closes it (a stopping server
ends it after a whole frame, and the client resumes elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import StreamingResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError, path_uuid, record_access, require
from graphledger.http.sse import Streams
from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.errors import InvalidEvent
from graphledger.ledger.read import FeedCursor
from graphledger.ledger.thread_tail import follow_thread
from graphledger.runs.sse import HEARTBEAT
from graphledger.runs.thread_sse import THREAD_STREAM_MODES, ThreadFrames

_END = object()


def thread_modes(request: Request) -> set[str]:
    """The modes asked for (``stream_modes``, comma-separated, or ``stream_mode``, repeated); 422 for an unknown one."""
    named = [m.strip() for text in request.query_params.getlist("stream_modes") for m in text.split(",")]
    named += [m.strip() for m in request.query_params.getlist("stream_mode")]
    modes = {m for m in named if m}  # the SDK sends an empty value for the default
    for mode in sorted(modes):
        if mode not in THREAD_STREAM_MODES:
            raise HTTPError(422, f"stream mode must be one of {', '.join(THREAD_STREAM_MODES)}, not {mode[:50]!r}")
    return modes or {"run_modes"}


def feed_cursor(request: Request) -> FeedCursor | None:
    """``Last-Event-ID`` as a place in the feed; ``-1`` or ``0``: the start; None when absent or blank; 422 when malformed."""
    text = (request.headers.get("last-event-id") or "").strip()
    if not text:
        return None
    if text in ("-1", "0"):
        return FeedCursor()
    try:
        cursor = FeedCursor.parse(text)
    except InvalidEvent:
        raise HTTPError(422, f"Last-Event-ID must be an id of this thread's stream (tx:position), not {text[:50]!r}") from None
    if cursor.tx >= 2**63 or cursor.position >= 2**63:
        raise HTTPError(422, f"Last-Event-ID {text[:50]!r} names no event of this thread")
    return cursor


async def _pump(ledger: Ledger, thread_id: UUID, after: FeedCursor | None, queue: asyncio.Queue[Any]) -> None:
    try:
        async for event in follow_thread(ledger, thread_id, after):
            await queue.put(event)
    finally:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(_END)


async def thread_frames(
    ledger: Ledger, thread_id: UUID, after: FeedCursor | None, frames: ThreadFrames, *, heartbeat: float, streams: Streams | None
) -> AsyncIterator[bytes]:
    """The frames of the thread's events after ``after``, heartbeats while idle, until the client or the server stops."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
    if streams is not None:
        streams._open(queue)
    loop = asyncio.get_running_loop()
    pump = loop.create_task(_pump(ledger, thread_id, after, queue))
    last_sent = loop.time()
    try:
        while streams is None or not streams.closing:
            try:
                # A heartbeat after ``heartbeat`` seconds without a byte, even
                # while events this stream does not carry keep arriving.
                async with asyncio.timeout(max(last_sent + heartbeat - loop.time(), 0)):
                    item = await queue.get()
            except TimeoutError:
                yield HEARTBEAT
                last_sent = loop.time()
                continue
            if item is _END:
                await asyncio.wait({pump})
                if not pump.cancelled() and pump.exception() is not None:
                    raise pump.exception()  # type: ignore[misc]
                return
            if not isinstance(item, Event):
                continue  # a stopping server's wake-up: checked above
            if not frames.knows(item.run_id) and item.kind != "run.created":
                async with ledger.session() as session:
                    created = await session.first_events([RunRef(item.thread_id, item.run_id)])
                frames.learn(created[RunRef(item.thread_id, item.run_id)])
            data = frames.frame(item)
            if data is None and loop.time() - last_sent >= heartbeat:
                data = HEARTBEAT  # events keep coming, none of them for this stream
            if data is not None:
                yield data
                last_sent = loop.time()
    finally:
        if streams is not None:
            streams._done(queue)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


async def stream_thread(request: Request) -> StreamingResponse:
    thread_id = path_uuid(request, "thread_id")
    modes = thread_modes(request)
    after = feed_cursor(request)
    visible = await authorize(request, {"thread_id": thread_id})
    ledger: Ledger = request.app.state.ledger
    await require(ledger, thread_id, visible=visible)
    if after is not None and after != FeedCursor():
        async with ledger.session() as session:
            if not await session.feed_event_exists(thread_id, after):
                # Ids are sent only for committed events of this thread: this one never came from this ledger.
                raise HTTPError(422, f"Last-Event-ID {after} names no event of thread {thread_id}")
    await record_access(request, "thread.stream", thread_id=thread_id, after=after)
    if after is None:
        # The stream starts here, before the answer's first byte: a client that
        # has the answer's headers gets every run created from then on.
        async with ledger.session() as session:
            after = await session.feed_now()
    frames = thread_frames(
        ledger, thread_id, after, ThreadFrames(thread_id, modes),
        heartbeat=request.app.state.heartbeat, streams=request.app.state.streams,
    )
    return StreamingResponse(frames, media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


routes = [guarded("/threads/{thread_id}/stream", stream_thread, methods=["GET"], action="read")]
