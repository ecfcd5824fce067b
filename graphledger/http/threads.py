"""``/threads``: create, read, search, count and update threads (LangGraph Platform shapes).

A thread's ``status`` and ``updated_at`` come from the run status projection
(see :mod:`graphledger.projections.read`): ``updated_at`` moves when its
metadata changes and when one of its runs is created, starts or ends (an
update of its state is a run too). ``values`` and ``interrupts`` are its
current state's, read through its graph (:mod:`graphledger.runs.state`).
Search filters by metadata containment, ids and status in SQL; a filter on
state ``values`` is refused with 422 (the values live in the checkpointer's
serialized blobs, which SQL cannot search).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graphledger import runs
from graphledger.http.auth import authorize, guarded, stamped_metadata
from graphledger.http.common import MAX_SEARCH, HTTPError, iso, json_body, parse_uuid, path_uuid, search_page
from graphledger.http.identity import actor
from graphledger.http.state import no_nul, thread_state
from graphledger.ledger import Ledger
from graphledger.ledger.threads import SORT_BY, Visibility
from graphledger.projections import Projections
from graphledger.projections.read import ThreadView
from graphledger.projections.run_status import THREAD_STATUSES
from graphledger.runs import thread_copy
from graphledger.runs.lifecycle import thread_metadata_without_secrets
from graphledger.runs.state import ThreadState, pending_interrupts

IF_EXISTS = ("raise", "do_nothing")
SELECT = ("thread_id", "created_at", "updated_at", "metadata", "status", "values", "interrupts")
"""The fields of a thread, in order; a search may ``select`` some of them."""
STATE_FIELDS = frozenset({"values", "interrupts"})


async def thread_json(states: ThreadState, view: ThreadView, fields: tuple[str, ...] = SELECT) -> dict[str, Any]:
    """A thread as the LangGraph API shows it (only ``fields``); its state is read only when asked for."""
    thread = view.thread
    found: dict[str, Any] = {
        "thread_id": str(thread.thread_id),
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.updated_at),
        "metadata": thread.metadata,
        "status": view.status,
    }
    if STATE_FIELDS & set(fields):
        state = await states.get(thread.thread_id)
        found["values"] = state["values"] if state["checkpoint"] is not None else None
        found["interrupts"] = pending_interrupts(state)
    return {name: found[name] for name in fields}


async def _thread_json(request: Request, thread_id: UUID, visible: Visibility | None = None) -> dict[str, Any]:
    return await thread_json(thread_state(request), await Projections(request.app.state.ledger).thread(thread_id, visible))


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
    visible = await authorize(request, value)
    metadata = stamped_metadata(value)
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
    return JSONResponse(await _thread_json(request, thread.thread_id))


async def get_thread(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    visible = await authorize(request, {"thread_id": thread_id})
    return JSONResponse(await _thread_json(request, thread_id, visible))


async def update_thread(request: Request) -> JSONResponse:
    """Merge the body's ``metadata`` into the thread's (top-level keys replaced, as the LangGraph API does)."""
    thread_id = path_uuid(request, "thread_id")
    body = await json_body(request)
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise HTTPError(422, "metadata must be an object")
    metadata, _ = thread_metadata_without_secrets(metadata)  # a thread's secrets are not kept
    value: dict[str, Any] = {"thread_id": thread_id, "metadata": metadata}
    visible = await authorize(request, value)  # may stamp value["metadata"]
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        if await session.threads.merge_metadata(thread_id, value.get("metadata") or {}, visible) is None:
            raise HTTPError(404, f"thread {thread_id} not found")
    return JSONResponse(await _thread_json(request, thread_id, visible))


def _filters(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise HTTPError(422, "metadata must be an object")
    if body.get("values"):
        raise HTTPError(422, "searching threads by state values is not supported; filter by metadata, ids or status")
    status = body.get("status")
    if status is not None and status not in THREAD_STATUSES:
        raise HTTPError(422, f"status must be one of {', '.join(THREAD_STATUSES)}")
    ids = body.get("ids")
    if ids is not None:  # an empty list filters nothing, as when absent
        if not isinstance(ids, list) or len(ids) > MAX_SEARCH:
            raise HTTPError(422, f"ids must be a list of at most {MAX_SEARCH} thread ids")
        ids = [parse_uuid("ids[]", value) for value in ids] or None
    return {"metadata": no_nul(metadata, "metadata") or None, "ids": ids, "status": status}


async def search_threads(request: Request) -> JSONResponse:
    body = await json_body(request, optional=True)
    filters = _filters(body)
    page = search_page(body, sort_by=SORT_BY, fields=SELECT)
    # As the reference passes it: metadata is a dict, empty when the caller gave none (handlers stamp into it).
    visible = await authorize(request, {**filters, "metadata": dict(filters["metadata"] or {}), "limit": page.limit, "offset": page.offset})
    found = await Projections(request.app.state.ledger).search_threads(
        **filters, visible=visible, sort_by=page.sort_by, descending=page.descending, limit=page.limit, offset=page.offset
    )
    states = thread_state(request)
    return JSONResponse([await thread_json(states, view, page.fields) for view in found])


async def count_threads(request: Request) -> JSONResponse:
    body = await json_body(request, optional=True)
    filters = _filters(body)
    visible = await authorize(request, {**filters, "metadata": dict(filters["metadata"] or {})})
    return JSONResponse(await Projections(request.app.state.ledger).count_threads(**filters, visible=visible))


async def delete_thread(request: Request) -> Response:
    """Delete a thread's state; its record stays (see :func:`graphledger.runs.delete_thread`)."""
    thread_id = path_uuid(request, "thread_id")
    visible = await authorize(request, {"thread_id": thread_id})
    await runs.delete_thread(request.app.state.ledger, thread_id, visible=visible, actor=actor(request))
    return Response(status_code=204)


async def copy_thread(request: Request) -> JSONResponse:
    """A new thread with the source's metadata, state and checkpoint history (see :mod:`graphledger.runs.thread_copy`).

    Authorized as the reference does: a ``read`` of the source, then a
    ``create`` of the copy (whose handler may stamp the copy's metadata).
    """
    source = path_uuid(request, "thread_id")
    readable = await authorize(request, {"thread_id": source}, action="read")
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        found = await session.threads.get(source, readable)
    if found is None or found.deleted:
        raise HTTPError(404, f"thread {source} not found")
    target = uuid4()
    value: dict[str, Any] = {"thread_id": target, "metadata": dict(found.metadata)}
    await authorize(request, value)  # may stamp value["metadata"] (an owner of the copy)
    thread = await thread_copy.copy_thread(
        ledger, thread_state(request), source, metadata=stamped_metadata(value), visible=readable, actor=actor(request), thread_id=target
    )
    return JSONResponse(await _thread_json(request, thread.thread_id))


routes = [
    guarded("/threads", create_thread, methods=["POST"], action="create"),
    guarded("/threads/search", search_threads, methods=["POST"], action="search"),
    guarded("/threads/count", count_threads, methods=["POST"], action="search"),
    guarded("/threads/{thread_id}", get_thread, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}", update_thread, methods=["PATCH"], action="update"),
    guarded("/threads/{thread_id}", delete_thread, methods=["DELETE"], action="delete"),
    guarded("/threads/{thread_id}/copy", copy_thread, methods=["POST"], action="create"),  # and a read of the source
]
