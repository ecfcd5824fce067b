"""Runs: create, stream, wait, list, get, cancel, join and join-stream (LangGraph Platform shapes).

A run's stream is its log. Every SSE frame is one stored event, with the
event's ``seq`` as its ``id``: ``run.created`` is sent as ``metadata``,
``stream:<mode>[|<ns>]`` as ``<mode>[|<ns>]`` (only the modes the run asked
for), ``stream:error`` as ``error``. The stream closes after the terminal
event is committed. ``Last-Event-ID: n`` resumes after ``seq`` n on any run,
live or finished, from any process; ``-1`` or ``0`` replays from the start;
a join without it (or with a blank one) sends ``metadata`` and then follows
live events. An id past the run's last committed event, or one that is not a
whole number from -1 up, is refused with 422 before any byte: this server
never sent it, and a stream after it would never end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from graphledger.http.common import HTTPError, iso, json_body, path_uuid, query_bool, query_int, require
from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.append import load_heads
from graphledger.ledger.errors import LedgerError
from graphledger.ledger.events import RUN_CREATED, RUN_STATUSES, STREAM_PREFIX
from graphledger.runs import RunRequest, admit, cancel, join
from graphledger.runs.request import CANCEL_ACTIONS, STREAM_MODES, stream_modes
from graphledger.runs.serialize import to_jsonable

_log = logging.getLogger("graphledger.http")

HEARTBEAT_SECONDS = 5.0
MAX_FRAMES_PER_WRITE = 256
_HEARTBEAT = object()  # queued by a stream's idle timer
_background: set[asyncio.Task[None]] = set()  # cancels of abandoned streams, kept referenced until done
ERROR_KIND = STREAM_PREFIX + "error"
RUN_COLUMNS = """
SELECT r.thread_id, r.run_id, r.assistant_id, r.created_at, r.updated_at, r.status, r.metadata, e.data AS request
FROM runs r JOIN events e ON e.thread_id = r.thread_id AND e.run_id = r.run_id AND e.seq = 1
"""
RUN_SQL = RUN_COLUMNS + "WHERE r.thread_id = $1 AND r.run_id = $2"
LIST_SQL = RUN_COLUMNS + """WHERE r.thread_id = $1 AND ($2::text IS NULL OR r.status = $2)
ORDER BY r.queue_position DESC LIMIT $3 OFFSET $4"""
LAST_VALUES_SQL = """
SELECT data FROM events WHERE thread_id = $1 AND run_id = $2 AND kind = 'stream:values' ORDER BY seq DESC LIMIT 1
"""


def run_json(row: Any) -> dict[str, Any]:
    request = json.loads(row["request"])
    metadata = row["metadata"]
    return {
        "run_id": str(row["run_id"]),
        "thread_id": str(row["thread_id"]),
        "assistant_id": row["assistant_id"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "status": row["status"],
        "metadata": json.loads(metadata) if isinstance(metadata, str) else metadata,
        "multitask_strategy": request.get("multitask_strategy"),
        "kwargs": {k: v for k, v in request.items() if k not in ("assistant_id", "metadata", "multitask_strategy")},
    }


async def fetch_run(ledger: Ledger, ref: RunRef) -> dict[str, Any]:
    async with ledger.pool.acquire() as conn:
        row = await conn.fetchrow(RUN_SQL, ref.thread_id, ref.run_id)
    if row is None:
        raise HTTPError(404, f"run {ref.run_id} not found in thread {ref.thread_id}")
    return run_json(row)


def _ref(request: Request) -> RunRef:
    return RunRef(path_uuid(request, "thread_id"), path_uuid(request, "run_id"))


# -- SSE ------------------------------------------------------------------------


def sse_modes(requested: list[str]) -> set[str]:
    """The stored stream modes a run's SSE stream sends."""
    return {STREAM_MODES[m] for m in requested}


def frame(event: Event, modes: set[str]) -> bytes | None:
    """The SSE frame of a stored event, or None when the stream does not carry it."""
    if event.kind == RUN_CREATED:
        name, data = "metadata", json.dumps({"run_id": str(event.run_id), "attempt": 1}, separators=(",", ":"))
    elif event.kind == ERROR_KIND:
        name, data = "error", event.data
    elif event.kind.startswith(STREAM_PREFIX):
        name = event.kind[len(STREAM_PREFIX):]
        if name.partition("|")[0] not in modes:
            return None
        data = event.data
    else:
        return None
    return f"event: {name}\ndata: {data}\nid: {event.seq}\n\n".encode()


async def _pump(ledger: Ledger, ref: RunRef, after_seq: int, queue: asyncio.Queue[Event | None]) -> None:
    try:
        async for event in ledger.tail(ref, after_seq):
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
    on_disconnect: str = "continue",
    heartbeat: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[bytes]:
    """The frames of a run's events after ``after_seq``, heartbeats while idle, until the terminal event."""
    finished = False
    queue: asyncio.Queue[Event | None | object] = asyncio.Queue(maxsize=1000)
    loop = asyncio.get_running_loop()
    pump = loop.create_task(_pump(ledger, ref, after_seq, queue))  # type: ignore[arg-type]
    last_sent = loop.time()

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
            event = await queue.get()
            if event is _HEARTBEAT:
                yield b": heartbeat\n\n"
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
                if event is not _HEARTBEAT:
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
                raise failure
            if end:
                finished = True
                return
    finally:
        timer.cancel()
        pump.cancel()
        # Not cancel_and_wait: a stream is stopped inside an anyio cancel scope,
        # which cancels every await again; the cancel below must still be sent.
        with contextlib.suppress(asyncio.CancelledError, LedgerError):
            await pump
        if not finished and on_disconnect == "cancel":
            # The client went away mid-run: cancel it, outliving this cancelled generator.
            task = asyncio.get_running_loop().create_task(_cancel_quietly(ledger, ref))
            _background.add(task)
            task.add_done_callback(_background.discard)


async def _cancel_quietly(ledger: Ledger, ref: RunRef) -> None:
    with contextlib.suppress(LedgerError):
        await cancel(ledger, ref, reason="client disconnected")


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
    async with ledger.pool.acquire() as conn:
        head = (await load_heads(conn, [ref]))[ref].seq
    if after > head:
        raise HTTPError(422, f"Last-Event-ID {after} is past the run's last event ({head})")


# -- creating runs ------------------------------------------------------------------


async def _admit(request: Request, *, stateless: bool, wait: bool = False) -> tuple[RunRequest, Event]:
    body = await json_body(request)
    run_request = RunRequest.parse(body)
    if wait and "values" not in run_request.stream_mode:
        run_request.stream_mode.append("values")  # the final state is the last values chunk
    ledger: Ledger = request.app.state.ledger
    thread_id: UUID | None = None if stateless else path_uuid(request, "thread_id")
    admitted = await admit(ledger, run_request, thread_id=thread_id, graphs=request.app.state.graphs)
    return run_request, admitted.created


async def create_run(request: Request) -> JSONResponse:
    _, created = await _admit(request, stateless=False)
    return JSONResponse(await fetch_run(request.app.state.ledger, RunRef(created.thread_id, created.run_id)))


async def _stream_created(request: Request, stateless: bool) -> StreamingResponse:
    run_request, created = await _admit(request, stateless=stateless)
    ref = RunRef(created.thread_id, created.run_id)
    frames = sse_stream(
        request.app.state.ledger, ref, after_seq=0, modes=sse_modes(run_request.stream_mode),
        on_disconnect=run_request.on_disconnect, heartbeat=request.app.state.heartbeat,
    )
    return sse_response(frames, ref, created=True)


async def stream_run(request: Request) -> StreamingResponse:
    return await _stream_created(request, stateless=False)


async def stream_stateless(request: Request) -> StreamingResponse:
    return await _stream_created(request, stateless=True)


async def final_output(request: Request, ref: RunRef, end: Event) -> Any:
    """What ``wait`` and ``join`` answer: the final state values, or ``{"__error__": ...}`` for a failed run.

    The values are the run's last ``values`` chunk; a run that streamed none
    answers with its thread's current state from the checkpointer.
    """
    ledger: Ledger = request.app.state.ledger
    if end.kind in ("run.failed", "run.timed_out"):
        error = end.value.get("error") if isinstance(end.value, dict) else None
        error = error if isinstance(error, dict) else {}
        return {"__error__": {"error": error.get("type", "Error"), "message": error.get("message", "")}}
    async with ledger.pool.acquire() as conn:
        data = await conn.fetchval(LAST_VALUES_SQL, ref.thread_id, ref.run_id)
    if data is not None:
        return json.loads(data)
    checkpointer = request.app.state.runtime.checkpointer
    state = await checkpointer.aget_tuple({"configurable": {"thread_id": str(ref.thread_id)}}) if checkpointer else None
    return to_jsonable(state.checkpoint["channel_values"]) if state is not None else None


async def _wait(request: Request, stateless: bool) -> JSONResponse:
    _, created = await _admit(request, stateless=stateless, wait=True)
    ref = RunRef(created.thread_id, created.run_id)
    ledger: Ledger = request.app.state.ledger
    end = await join(ledger, ref)
    headers = {"Content-Location": f"/threads/{ref.thread_id}/runs/{ref.run_id}"}
    return JSONResponse(await final_output(request, ref, end), headers=headers)


async def wait_run(request: Request) -> JSONResponse:
    return await _wait(request, stateless=False)


async def wait_stateless(request: Request) -> JSONResponse:
    return await _wait(request, stateless=True)


# -- reading, cancelling, joining ---------------------------------------------------


async def list_runs(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    limit = query_int(request, "limit", 10, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    status = request.query_params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise HTTPError(422, f"status must be one of {', '.join(RUN_STATUSES)}")
    async with request.app.state.ledger.pool.acquire() as conn:
        await require(conn, thread_id)
        rows = await conn.fetch(LIST_SQL, thread_id, status, limit, offset)
    return JSONResponse([run_json(row) for row in rows])


async def get_run(request: Request) -> JSONResponse:
    return JSONResponse(await fetch_run(request.app.state.ledger, _ref(request)))


def _action(request: Request) -> str:
    action = request.query_params.get("action") or "interrupt"
    if action not in CANCEL_ACTIONS:
        raise HTTPError(422, f"action must be one of {', '.join(CANCEL_ACTIONS)}, not {action[:50]!r}")
    return action


async def cancel_run(request: Request) -> Response:
    ref = _ref(request)
    ledger: Ledger = request.app.state.ledger
    wait = query_bool(request, "wait")
    await cancel(ledger, ref, _action(request))
    if wait:
        await join(ledger, ref)
        return JSONResponse(await fetch_run(ledger, ref))
    return JSONResponse(await fetch_run(ledger, ref), status_code=202)


async def join_run(request: Request) -> JSONResponse:
    ref = _ref(request)
    ledger: Ledger = request.app.state.ledger
    end = await join(ledger, ref)
    return JSONResponse(await final_output(request, ref, end))


async def join_stream(request: Request) -> StreamingResponse:
    ref = _ref(request)
    ledger: Ledger = request.app.state.ledger
    after = last_event_id(request)
    cancel_on_disconnect = query_bool(request, "cancel_on_disconnect")
    wanted = [m for m in request.query_params.getlist("stream_mode") if m]  # clients send an empty one for "all"
    run = await fetch_run(ledger, ref)  # 404 before any byte
    modes = sse_modes(run["kwargs"].get("stream_mode") or ["values"])
    if wanted:
        modes &= sse_modes(stream_modes(wanted))
    if after is not None:
        await check_resumable(ledger, ref, after)
    if request.method == "POST":
        await cancel(ledger, ref, _action(request))
    metadata_first = None
    if after is None:
        # No Last-Event-ID: the metadata event, then what happens from now on.
        metadata_first = (await ledger.read_run(ref, 0, 1))[0]
        async with ledger.pool.acquire() as conn:
            after = (await load_heads(conn, [ref]))[ref].seq
    frames = sse_stream(
        ledger, ref, after_seq=after, modes=modes, metadata_first=metadata_first,
        on_disconnect="cancel" if cancel_on_disconnect else "continue", heartbeat=request.app.state.heartbeat,
    )
    return sse_response(frames, ref)


routes = [
    Route("/threads/{thread_id}/runs", create_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs", list_runs, methods=["GET"]),
    Route("/threads/{thread_id}/runs/stream", stream_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs/wait", wait_run, methods=["POST"]),
    Route("/runs/stream", stream_stateless, methods=["POST"]),
    Route("/runs/wait", wait_stateless, methods=["POST"]),
    Route("/threads/{thread_id}/runs/{run_id}", get_run, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs/{run_id}/join", join_run, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}/stream", join_stream, methods=["GET", "POST"]),
]
