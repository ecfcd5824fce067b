"""A thread's state: ``/threads/{id}/state`` and ``/threads/{id}/history`` (LangGraph Platform shapes).

Read through the graph of the thread's latest run (see :mod:`graphledger.runs.state`), served from
snapshot documents when they are fresh (:mod:`graphledger.runs.snapshots`).
Checkpoint ids are UUIDs: another id is refused with 422, an unknown one is
answered 404. An update of the state is recorded as a run of the thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError, json_body, path_uuid, query_bool, query_int
from graphledger.http.identity import actor
from graphledger.projections import Projections
from graphledger.runs.state import ThreadState

MAX_HISTORY = 1000


def thread_state(request: Request) -> ThreadState:
    app = request.app
    return ThreadState(app.state.ledger, app.state.graphs, app.state.runtime.checkpointer)


async def _authorized(request: Request, thread_id: UUID, **value: Any) -> None:
    """Authorize the route's action on the thread; 404 when the caller may not see it."""
    visible = await authorize(request, {"thread_id": thread_id, **value})
    if visible is not None:
        await Projections(request.app.state.ledger).thread(thread_id, visible)  # ThreadNotFound: 404


def checkpoint_id(value: Any, name: str = "checkpoint_id") -> str:
    """A checkpoint id: LangGraph's are UUIDs (422 for anything else)."""
    if not isinstance(value, str):
        raise HTTPError(422, f"{name} must be a string")
    try:
        return str(UUID(value))
    except ValueError:
        raise HTTPError(422, f"{name} must be a checkpoint id (a UUID), not {value[:100]!r}") from None


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or "\x00" in value or len(value) > 1000:
        raise HTTPError(422, f"{name} must be a string of at most 1000 characters without NUL")
    return value


def no_nul(value: Any, name: str) -> Any:
    """``value`` unless a string in it holds NUL, which PostgreSQL's jsonb cannot (422)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            raise HTTPError(422, f"{name} holds a NUL character")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def parse_checkpoint(value: Any, name: str = "checkpoint") -> dict[str, Any] | None:
    """A ``{checkpoint_id, checkpoint_ns, checkpoint_map}`` object (a RunnableConfig's ``configurable`` works too)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise HTTPError(422, f"{name} must be an object")
    if isinstance(value.get("configurable"), dict):
        value = value["configurable"]
    found: dict[str, Any] = {}
    if value.get("checkpoint_id") is not None:
        found["checkpoint_id"] = checkpoint_id(value["checkpoint_id"], f"{name}.checkpoint_id")
    if value.get("checkpoint_ns") is not None:
        found["checkpoint_ns"] = _text(value["checkpoint_ns"], f"{name}.checkpoint_ns")
    mapping = value.get("checkpoint_map")
    if mapping is not None:
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise HTTPError(422, f"{name}.checkpoint_map must be an object of strings")
        found["checkpoint_map"] = no_nul(mapping, f"{name}.checkpoint_map")
    return found


def _limit(value: Any) -> int:
    if value is None:
        return 10
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HISTORY:
        raise HTTPError(422, f"limit must be a whole number from 1 to {MAX_HISTORY}")
    return value


def _before(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return checkpoint_id(value, "before")
    checkpoint = parse_checkpoint(value, "before")
    return checkpoint.get("checkpoint_id") if checkpoint else None


def _subgraphs(body: Mapping[str, Any]) -> bool:
    value = body.get("subgraphs")
    if value is not None and not isinstance(value, bool):
        raise HTTPError(422, "subgraphs must be true or false")
    return bool(value)


def _json(document: str) -> Response:
    """A state or history answer, already JSON (snapshot documents, see :mod:`graphledger.runs.snapshots`)."""
    return Response(document.encode("utf-8"), media_type="application/json")


async def get_state(request: Request) -> Response:
    thread_id = path_uuid(request, "thread_id")
    await _authorized(request, thread_id)
    subgraphs = query_bool(request, "subgraphs")
    return _json(await thread_state(request).state_document(thread_id, subgraphs=subgraphs))


async def get_state_at(request: Request) -> Response:
    thread_id = path_uuid(request, "thread_id")
    await _authorized(request, thread_id)
    checkpoint = {"checkpoint_id": checkpoint_id(request.path_params["checkpoint_id"])}
    subgraphs = query_bool(request, "subgraphs")
    return _json(await thread_state(request).state_document(thread_id, checkpoint, subgraphs=subgraphs))


async def post_state_at(request: Request) -> Response:
    thread_id = path_uuid(request, "thread_id")
    await _authorized(request, thread_id)
    body = await json_body(request)
    checkpoint = parse_checkpoint(body.get("checkpoint"))
    if not checkpoint or "checkpoint_id" not in checkpoint:
        raise HTTPError(422, "checkpoint.checkpoint_id is required")
    return _json(await thread_state(request).state_document(thread_id, checkpoint, subgraphs=_subgraphs(body)))


async def get_history(request: Request) -> Response:
    thread_id = path_uuid(request, "thread_id")
    await _authorized(request, thread_id)
    limit = query_int(request, "limit", 10, low=1, high=MAX_HISTORY)
    before = _before(request.query_params.get("before"))
    return _json(await thread_state(request).history_document(thread_id, limit=limit, before=before))


async def post_history(request: Request) -> Response:
    thread_id = path_uuid(request, "thread_id")
    await _authorized(request, thread_id)
    body = await json_body(request, optional=True)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise HTTPError(422, "metadata must be an object")
    found = await thread_state(request).history_document(
        thread_id,
        limit=_limit(body.get("limit")),
        before=_before(body.get("before")),
        metadata=no_nul(metadata, "metadata"),
        checkpoint=parse_checkpoint(body.get("checkpoint")),
    )
    return _json(found)


async def update_state(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    body = await json_body(request)
    as_node = body.get("as_node")
    if as_node is not None:
        as_node = _text(as_node, "as_node")
    checkpoint = parse_checkpoint(body.get("checkpoint"))
    if body.get("checkpoint_id") is not None:
        checkpoint = {**(checkpoint or {}), "checkpoint_id": checkpoint_id(body["checkpoint_id"])}
    await _authorized(request, thread_id, values=body.get("values"), as_node=as_node)
    _, config = await thread_state(request).update(
        thread_id, body.get("values"), as_node=as_node, checkpoint=checkpoint, actor=actor(request)
    )
    configurable = config.get("configurable") or {}
    checkpoint_json = {k: configurable[k] for k in ("thread_id", "checkpoint_ns", "checkpoint_id") if k in configurable}
    return JSONResponse({"checkpoint": checkpoint_json, "configurable": checkpoint_json, "checkpoint_id": checkpoint_json.get("checkpoint_id")})


routes = [
    guarded("/threads/{thread_id}/state", get_state, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/state", update_state, methods=["POST"], action="update"),
    guarded("/threads/{thread_id}/state/checkpoint", post_state_at, methods=["POST"], action="read"),
    guarded("/threads/{thread_id}/state/{checkpoint_id}", get_state_at, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/history", get_history, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/history", post_history, methods=["POST"], action="read"),
]
