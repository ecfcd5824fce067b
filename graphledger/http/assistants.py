"""``/assistants``: the graphs served and configured copies of them (LangGraph Platform shapes).

Every served graph is an assistant whose id is derived from its name as the
LangGraph Agent Server derives it (:mod:`graphledger.runs.assistants`); a
path may name it by that id or by the graph's name. Assistants created over
the API have versions: a change (``PATCH``) is a new version, and ``latest``
picks the version in use. Authorization is on the ``assistants`` resource,
its filters applied in SQL on the assistant's metadata
(:mod:`graphledger.ledger.assistants`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from graphledger.http.auth import authorize, guarded, stamped_metadata
from graphledger.http.common import MAX_SEARCH, HTTPError, body_int, iso, json_body, parse_uuid, query_bool, search_page
from graphledger.http.state import no_nul
from graphledger.ledger import Ledger
from graphledger.ledger.assistants import SORT_BY, Assistant, Change
from graphledger.runs import GraphRegistry
from graphledger.runs import assistants as served
from graphledger.runs.errors import GraphLoadError

RESOURCE = "assistants"
IF_EXISTS = ("raise", "do_nothing")
SELECT = ("assistant_id", "graph_id", "config", "context", "created_at", "updated_at", "metadata", "version", "name", "description")
"""The fields of an assistant, in order; a search may ``select`` some of them."""
VERSION_FIELDS = tuple(f for f in SELECT if f != "updated_at")
MAX_TEXT = 10_000
DEFAULT_NAME = "Untitled"


def assistant_json(assistant: Assistant, fields: tuple[str, ...] = SELECT) -> dict[str, Any]:
    """An assistant (or, with :data:`VERSION_FIELDS`, one of its versions) as the LangGraph API shows it."""
    found: dict[str, Any] = {
        "assistant_id": str(assistant.assistant_id),
        "graph_id": assistant.graph_id,
        "config": assistant.config,
        "context": assistant.context,
        "created_at": iso(assistant.created_at),
        "updated_at": iso(assistant.updated_at),
        "metadata": assistant.metadata,
        "version": assistant.version,
        "name": assistant.name,
        "description": assistant.description,
    }
    return {name: found[name] for name in fields}


def _graphs(request: Request) -> GraphRegistry:
    graphs: GraphRegistry = request.app.state.graphs
    return graphs


def _assistant_id(request: Request) -> UUID:
    """The path's assistant: its id, or the name of a served graph (its assistant's id)."""
    value = request.path_params["assistant_id"]
    found = served.parse_id(value)
    if found is not None:
        return found
    if value in _graphs(request):
        return served.graph_assistant_id(value)
    raise HTTPError(422, f"assistant_id must be a UUID or the name of a served graph, not {value[:100]!r}")


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > MAX_TEXT:
        raise HTTPError(422, f"{name} must be a string of at most {MAX_TEXT} characters without NUL")
    return value


def _object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise HTTPError(422, f"{name} must be an object")
    no_nul(value, name)
    return value


def _mirrored(config: dict[str, Any] | None, context: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``config`` and ``context``, each given the other's values when only one names them, as the reference does.

    LangGraph 1.0 moved run-time values from ``config["configurable"]`` to
    the context; an assistant made for either kind of graph serves both.
    """
    configurable = (config or {}).get("configurable")
    if context is None and isinstance(configurable, dict) and configurable:
        context = dict(configurable)
    elif context and not configurable:
        config = {**(config or {}), "configurable": dict(context)}
    return config, context


def _graph_id(request: Request, body: dict[str, Any], *, required: bool) -> str | None:
    graph_id = _text(body, "graph_id")
    if graph_id is None:
        if required:
            raise HTTPError(422, "graph_id is required: the name of a served graph")
        return None
    if graph_id not in _graphs(request):
        raise HTTPError(404, f"graph {graph_id!r} not found; served graphs: {', '.join(_graphs(request).names)}")
    return graph_id


def _not_found(assistant_id: UUID) -> HTTPError:
    return HTTPError(404, f"assistant {assistant_id} not found")


# -- reading ---------------------------------------------------------------------------


async def _get(request: Request, assistant_id: UUID) -> Assistant:
    """The assistant, authorized as a read; 404 when it does not exist or the caller may not see it."""
    visible = await authorize(request, {"assistant_id": assistant_id})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        found = await session.assistants.get(assistant_id, visible)
    if found is None:
        raise _not_found(assistant_id)
    return found


async def get_assistant(request: Request) -> JSONResponse:
    return JSONResponse(assistant_json(await _get(request, _assistant_id(request))))


def _filters(body: dict[str, Any]) -> dict[str, Any]:
    graph_id = _text(body, "graph_id")
    return {"graph_id": graph_id, "metadata": _object(body, "metadata") or None, "name": _text(body, "name")}


async def search_assistants(request: Request) -> JSONResponse:
    body = await json_body(request, optional=True)
    filters = _filters(body)
    page = search_page(body, sort_by=SORT_BY, fields=SELECT)
    limit, offset = page.limit, page.offset
    visible = await authorize(request, {"graph_id": filters["graph_id"], "metadata": dict(filters["metadata"] or {}), "limit": limit, "offset": offset})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        found = await session.assistants.search(
            **filters, sort_by=page.sort_by, descending=page.descending, limit=limit, offset=offset, visible=visible
        )
    return JSONResponse([assistant_json(a, page.fields) for a in found])


async def count_assistants(request: Request) -> JSONResponse:
    body = await json_body(request, optional=True)
    filters = _filters(body)
    visible = await authorize(request, {"graph_id": filters["graph_id"], "metadata": dict(filters["metadata"] or {})})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        return JSONResponse(await session.assistants.count(**filters, visible=visible))


async def _graph(request: Request, assistant: Assistant) -> Any:
    """The assistant's compiled graph (a factory is called with the assistant's config)."""
    config = {**assistant.config, "configurable": {**(assistant.config.get("configurable") or {}), "assistant_id": str(assistant.assistant_id)}}
    try:
        return await _graphs(request).resolve(assistant.graph_id, config)
    except GraphLoadError as exc:
        raise HTTPError(409, str(exc)) from None


def _xray(request: Request) -> bool | int:
    text = request.query_params.get("xray")
    if text is None or text == "":
        return False
    if text.isdigit() and len(text) <= 3:
        return int(text) if int(text) > 1 else bool(int(text))
    return query_bool(request, "xray")


async def get_graph(request: Request) -> JSONResponse:
    """The drawable graph (LangGraph's ``graph.get_graph(xray=...).to_json()``)."""
    assistant_id = _assistant_id(request)
    xray = _xray(request)
    graph = await _graph(request, await _get(request, assistant_id))
    return JSONResponse(await served.drawable(graph, xray))


async def get_schemas(request: Request) -> JSONResponse:
    assistant = await _get(request, _assistant_id(request))
    graph = await _graph(request, assistant)
    return JSONResponse({"graph_id": assistant.graph_id, **served.schemas(graph, assistant.graph_id)})


async def get_subgraphs(request: Request) -> JSONResponse:
    assistant_id = _assistant_id(request)
    namespace = request.path_params.get("namespace")
    recurse = query_bool(request, "recurse")
    assistant = await _get(request, assistant_id)
    graph = await _graph(request, assistant)
    return JSONResponse(await served.subgraphs(graph, assistant.graph_id, namespace=namespace, recurse=recurse))


async def list_versions(request: Request) -> JSONResponse:
    assistant_id = _assistant_id(request)
    body = await json_body(request, optional=True)
    metadata = _object(body, "metadata") or None
    limit = body_int(body, "limit", 10, 1, MAX_SEARCH)
    offset = body_int(body, "offset", 0, 0, 2**31 - 1)
    visible = await authorize(request, {"assistant_id": assistant_id, "metadata": dict(metadata or {}), "limit": limit, "offset": offset})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        if await session.assistants.get(assistant_id, visible) is None:
            raise _not_found(assistant_id)
        found = await session.assistants.versions(assistant_id, metadata=metadata, limit=limit, offset=offset, visible=visible)
    return JSONResponse([assistant_json(v, VERSION_FIELDS) for v in found])


# -- changing ----------------------------------------------------------------------------


async def create_assistant(request: Request) -> JSONResponse:
    body = await json_body(request)
    assistant_id = parse_uuid("assistant_id", body["assistant_id"]) if body.get("assistant_id") is not None else uuid4()
    graph_id = _graph_id(request, body, required=True)
    assert graph_id is not None
    if_exists = body.get("if_exists") or "raise"
    if if_exists not in IF_EXISTS:
        raise HTTPError(422, f"if_exists must be raise or do_nothing, not {str(if_exists)[:50]!r}")
    config, context = _mirrored(_object(body, "config"), _object(body, "context"))
    value: dict[str, Any] = {
        "assistant_id": assistant_id, "graph_id": graph_id, "config": config or {},
        "context": context or {}, "metadata": _object(body, "metadata") or {}, "if_exists": if_exists,
        "name": _text(body, "name") or DEFAULT_NAME, "description": _text(body, "description"),
    }
    visible = await authorize(request, value)
    metadata = stamped_metadata(value)
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        created = await session.assistants.insert(
            assistant_id, graph_id, name=value["name"], description=value["description"],
            config=value["config"], context=value["context"], metadata=metadata,
        )
        if created is None:
            existing = await session.assistants.get(assistant_id, visible)
            if existing is None or if_exists == "raise":  # someone else's is a conflict too, as for threads
                raise HTTPError(409, f"assistant {assistant_id} already exists")
            created = existing
    return JSONResponse(assistant_json(created))


async def update_assistant(request: Request) -> JSONResponse:
    """A new version: the given fields replace the current version's, ``metadata`` is merged (top-level keys)."""
    assistant_id = _assistant_id(request)
    body = await json_body(request, optional=True)
    config, context = _mirrored(_object(body, "config"), _object(body, "context"))
    change = Change(
        graph_id=_graph_id(request, body, required=False), name=_text(body, "name"), description=_text(body, "description"),
        config=config, context=context, metadata=_object(body, "metadata"),
    )
    value: dict[str, Any] = {
        "assistant_id": assistant_id, "graph_id": change.graph_id, "config": change.config, "context": change.context,
        "metadata": dict(change.metadata or {}), "name": change.name, "description": change.description,
    }
    visible = await authorize(request, value)
    metadata = stamped_metadata(value) or None
    ledger: Ledger = request.app.state.ledger
    async with ledger.transaction() as tx:
        changed = await tx.assistants.change(assistant_id, replace(change, metadata=metadata), visible)
    if changed is None:
        raise _not_found(assistant_id)
    return JSONResponse(assistant_json(changed))


async def set_latest(request: Request) -> JSONResponse:
    assistant_id = _assistant_id(request)
    body = await json_body(request)
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31:
        raise HTTPError(422, "version must be a whole number from 1")
    visible = await authorize(request, {"assistant_id": assistant_id, "version": version})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        found = await session.assistants.set_latest(assistant_id, version, visible)
        if found is None:
            if await session.assistants.get(assistant_id, visible) is None:
                raise _not_found(assistant_id)
            raise HTTPError(404, f"assistant {assistant_id} has no version {version}")
    return JSONResponse(assistant_json(found))


async def delete_assistant(request: Request) -> Response:
    """Delete an assistant and its versions; the runs that used it keep their record of it."""
    assistant_id = _assistant_id(request)
    visible = await authorize(request, {"assistant_id": assistant_id})
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        if not await session.assistants.delete(assistant_id, visible):
            raise _not_found(assistant_id)
    return Response(status_code=204)


def _route(path: str, endpoint: Callable[[Request], Awaitable[Response]], method: str, action: str) -> Route:
    return guarded(path, endpoint, methods=[method], action=action, resource=RESOURCE)


routes = [
    _route("/assistants", create_assistant, "POST", "create"),
    _route("/assistants/search", search_assistants, "POST", "search"),
    _route("/assistants/count", count_assistants, "POST", "search"),
    _route("/assistants/{assistant_id}", get_assistant, "GET", "read"),
    _route("/assistants/{assistant_id}", update_assistant, "PATCH", "update"),
    _route("/assistants/{assistant_id}", delete_assistant, "DELETE", "delete"),
    _route("/assistants/{assistant_id}/graph", get_graph, "GET", "read"),
    _route("/assistants/{assistant_id}/schemas", get_schemas, "GET", "read"),
    _route("/assistants/{assistant_id}/subgraphs", get_subgraphs, "GET", "read"),
    _route("/assistants/{assistant_id}/subgraphs/{namespace}", get_subgraphs, "GET", "read"),
    _route("/assistants/{assistant_id}/versions", list_versions, "POST", "search"),
    _route("/assistants/{assistant_id}/latest", set_latest, "POST", "update"),
]
