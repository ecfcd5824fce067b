"""``/threads``: create and read threads (LangGraph Platform shapes)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graphledger import runs
from graphledger.http.common import HTTPError, iso, json_body, parse_uuid, path_uuid
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
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        thread = await session.threads.insert(thread_id, metadata)
        if thread is None:
            thread = await session.threads.get(thread_id)
            assert thread is not None  # threads are never removed
            if thread.deleted:
                raise HTTPError(409, f"thread {thread_id} was deleted; the ids of deleted threads are not reused")
            if if_exists == "raise":
                raise HTTPError(409, f"thread {thread_id} already exists")
    return JSONResponse(await thread_json(ledger, thread))


async def get_thread(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        thread = await session.threads.get(thread_id)
    if thread is None or thread.deleted:
        raise HTTPError(404, f"thread {thread_id} not found")
    return JSONResponse(await thread_json(ledger, thread))


async def delete_thread(request: Request) -> Response:
    """Delete a thread's state; its record stays (see :func:`graphledger.runs.delete_thread`)."""
    await runs.delete_thread(request.app.state.ledger, path_uuid(request, "thread_id"))
    return Response(status_code=204)


routes = [
    Route("/threads", create_thread, methods=["POST"]),
    Route("/threads/{thread_id}", get_thread, methods=["GET"]),
    Route("/threads/{thread_id}", delete_thread, methods=["DELETE"]),
]
