"""``/threads``: create and read threads (LangGraph Platform shapes)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graphledger import runs
from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError, iso, json_body, parse_uuid, path_uuid
from graphledger.http.identity import actor
from graphledger.ledger import Ledger
from graphledger.ledger.threads import Thread
from graphledger.projections import Projections
from graphledger.runs.lifecycle import thread_metadata_without_secrets

IF_EXISTS = ("raise", "do_nothing")


async def thread_json(ledger: Ledger, thread: Thread) -> dict[str, Any]:
    status = await Projections(ledger).thread_status(thread.thread_id)
    return {
        "thread_id": str(thread.thread_id),
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.updated_at),
        "metadata": thread.metadata,
        "status": status,
    }


async def create_thread(request: Request) -> JSONResponse:
    body = await json_body(request, optional=True)
    thread_id: UUID = parse_uuid("thread_id", body["thread_id"]) if body.get("thread_id") else uuid4()
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise HTTPError(422, "metadata must be an object")
    metadata, _ = thread_metadata_without_secrets(metadata)  # a thread's secrets are not kept
    if_exists = body.get("if_exists") or "raise"
    if if_exists not in IF_EXISTS:
        raise HTTPError(422, f"if_exists must be raise or do_nothing, not {if_exists!r}")
    value = {"thread_id": thread_id, "metadata": metadata, "if_exists": if_exists}
    visible = await authorize(request, value)  # may stamp value["metadata"] (an owner)
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise TypeError("an authorization handler set metadata to something other than a dict")
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        thread = await session.threads.insert(thread_id, metadata)
        if thread is None:
            thread = await session.threads.get(thread_id, visible)
            if thread is None:  # someone else's: the reference answers 409 as for one's own
                raise HTTPError(409, f"thread {thread_id} already exists")
            if thread.deleted:
                raise HTTPError(409, f"thread {thread_id} was deleted; the ids of deleted threads are not reused")
            if if_exists == "raise":
                raise HTTPError(409, f"thread {thread_id} already exists")
    return JSONResponse(await thread_json(ledger, thread))


async def get_thread(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    visible = await authorize(request, {"thread_id": thread_id})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        thread = await session.threads.get(thread_id, visible)
    if thread is None or thread.deleted:
        raise HTTPError(404, f"thread {thread_id} not found")
    return JSONResponse(await thread_json(ledger, thread))


async def delete_thread(request: Request) -> Response:
    """Delete a thread's state; its record stays (see :func:`graphledger.runs.delete_thread`)."""
    thread_id = path_uuid(request, "thread_id")
    visible = await authorize(request, {"thread_id": thread_id})
    await runs.delete_thread(request.app.state.ledger, thread_id, visible=visible, actor=actor(request))
    return Response(status_code=204)


routes = [
    guarded("/threads", create_thread, methods=["POST"], action="create"),
    guarded("/threads/{thread_id}", get_thread, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}", delete_thread, methods=["DELETE"], action="delete"),
]
