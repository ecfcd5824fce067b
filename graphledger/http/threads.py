"""``/threads``: create and read threads (LangGraph Platform shapes)."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graphledger import runs
from graphledger.http.common import HTTPError, iso, json_body, parse_uuid, path_uuid
from graphledger.ledger.events import jsonb_text
from graphledger.projections import Projections

THREAD_SQL = "SELECT thread_id, created_at, updated_at, metadata, deleted_at FROM threads WHERE thread_id = $1"
CREATE_SQL = """
INSERT INTO threads (thread_id, metadata) VALUES ($1, $2::jsonb)
ON CONFLICT (thread_id) DO NOTHING
RETURNING thread_id, created_at, updated_at, metadata, deleted_at
"""


async def thread_json(request: Request, row: Any) -> dict[str, Any]:
    status = await Projections(request.app.state.ledger.pool).thread_status(row["thread_id"])
    return {
        "thread_id": str(row["thread_id"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "metadata": json.loads(row["metadata"]) if isinstance(row["metadata"], str) else row["metadata"],
        "status": status,
    }


async def create_thread(request: Request) -> JSONResponse:
    body = await json_body(request, optional=True)
    thread_id: UUID = parse_uuid("thread_id", body["thread_id"]) if body.get("thread_id") else uuid4()
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise HTTPError(422, "metadata must be an object")
    if_exists = body.get("if_exists") or "raise"
    if if_exists not in ("raise", "do_nothing"):
        raise HTTPError(422, f"if_exists must be raise or do_nothing, not {if_exists!r}")
    async with request.app.state.ledger.pool.acquire() as conn:
        row = await conn.fetchrow(CREATE_SQL, thread_id, jsonb_text(metadata, "metadata"))
        if row is None:
            row = await conn.fetchrow(THREAD_SQL, thread_id)
            if row["deleted_at"] is not None:
                raise HTTPError(409, f"thread {thread_id} was deleted; the ids of deleted threads are not reused")
            if if_exists == "raise":
                raise HTTPError(409, f"thread {thread_id} already exists")
    return JSONResponse(await thread_json(request, row))


async def get_thread(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    async with request.app.state.ledger.pool.acquire() as conn:
        row = await conn.fetchrow(THREAD_SQL, thread_id)
    if row is None or row["deleted_at"] is not None:
        raise HTTPError(404, f"thread {thread_id} not found")
    return JSONResponse(await thread_json(request, row))


async def delete_thread(request: Request) -> Response:
    """Delete a thread's state; its record stays (see :func:`graphledger.runs.delete_thread`)."""
    await runs.delete_thread(request.app.state.ledger, path_uuid(request, "thread_id"))
    return Response(status_code=204)


routes = [
    Route("/threads", create_thread, methods=["POST"]),
    Route("/threads/{thread_id}", get_thread, methods=["GET"]),
    Route("/threads/{thread_id}", delete_thread, methods=["DELETE"]),
]
