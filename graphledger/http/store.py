"""``/store``: put, get, delete and search items, list namespaces (LangGraph Agent Server shapes).

The items live in LangGraph's PostgreSQL store (:mod:`graphledger.runs.store`),
the one every run's graph is given. A namespace is a list of labels: each a
non-empty string without a period (``GET`` takes it dot-joined) or NUL, and
the first not ``langgraph``.

Authorization acts on the ``store`` resource with the reference's actions
(``put``, ``get``, ``delete``, ``search``, ``list_namespaces``) and values; a
handler scopes a caller by rewriting ``value["namespace"]``, which is then the
namespace used. A filter dict a handler returns is applied to items' values
by ``get`` (an item that does not match is answered as missing) and
``search`` (ANDed with the caller's filter); ``put``, ``delete`` and
``list_namespaces`` do not apply one, as in the reference.

Puts and deletes change state outside any run, so no run's log holds them:
each is recorded in the access log (``store.put``, ``store.delete``, with the
actor, the namespace, the key and, for a put, the SHA-256 of the value's
canonical JSON) before it is made. A write whose entry cannot be recorded is
not made (503); an entry whose write then fails records an attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from langgraph.store.base import Item, SearchItem
from langgraph.store.postgres.aio import AsyncPostgresStore
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from graphledger.http.auth import STORE, authorize_filter, guarded
from graphledger.http.common import MAX_SEARCH, HTTPError, body_int, iso, json_body, record_access
from graphledger.ledger.events import canonical_json, jsonb_text
from graphledger.runs import store as runs_store

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
"""The comparisons a search ``filter`` may use on a value's top-level key (a bare value means ``$eq``)."""
DEFAULT_NAMESPACES = 100
MAX_OFFSET = 2**31 - 1
RESERVED = "langgraph"
MIN_TTL, MAX_TTL = 1 / 60, 100 * 366 * 24 * 60
"""The shortest and the longest ``ttl``, in minutes: a second and a hundred years."""
MAX_NAME_BYTES = 1024
"""The longest key, and the longest namespace (its labels joined by '.'), in UTF-8 bytes: the pair is the store's primary key."""


def _store(request: Request) -> AsyncPostgresStore:
    found: AsyncPostgresStore | None = request.app.state.runtime.store
    if found is None:  # only while the server starts or stops
        raise HTTPError(503, "the store is not open")
    return found


def labels(value: Any, name: str, *, empty: bool = False) -> tuple[str, ...]:
    """A namespace (or a prefix, or a suffix) from a body: a list of labels; 422 unless each is a non-empty string without '.' or NUL."""
    if value is None and empty:
        return ()
    if not isinstance(value, (list, tuple)):
        raise HTTPError(422, f"{name} must be a list of strings")
    if not value and not empty:
        raise HTTPError(422, f"{name} must not be empty")
    for label in value:
        if not isinstance(label, str) or not label or "." in label or not _storable(label):
            raise HTTPError(422, f"{name}: namespace label {str(label)[:100]!r} must be a non-empty string without periods")
    if len(".".join(value).encode()) > MAX_NAME_BYTES:
        raise HTTPError(422, f"{name}: the labels joined by '.' must be at most {MAX_NAME_BYTES} bytes (UTF-8)")
    return tuple(value)


def item_namespace(value: Any) -> tuple[str, ...]:
    """An item's namespace: :func:`labels`, at least one, the first not ``langgraph`` (which the store reserves); 422 otherwise."""
    found = labels(value, "namespace")
    if found[0] == RESERVED:
        raise HTTPError(422, f"namespace: the first label cannot be {RESERVED!r}")
    return found


def _storable(text: str) -> bool:
    """Whether PostgreSQL's text can hold ``text``: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key(value: Any) -> str:
    if value is None:
        raise HTTPError(422, "key is required")
    if not isinstance(value, str) or not value or not _storable(value):
        raise HTTPError(422, "key must be a non-empty string")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise HTTPError(422, f"key must be at most {MAX_NAME_BYTES} bytes (UTF-8)")
    return value


def _optional_bool(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise HTTPError(422, f"{name} must be true, false or null")


def _query_bool(request: Request, name: str) -> bool | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise HTTPError(422, f"{name} must be true or false, not {text[:50]!r}")


def check_filter(value: Any, name: str = "filter") -> dict[str, Any] | None:
    """A search filter: top-level keys of an item's value, each a value to equal or ``{operator: value}``; 422 otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise HTTPError(422, f"{name} must be an object")
    for key, condition in value.items():
        if isinstance(condition, dict) and (not condition or any(op not in OPERATORS for op in condition)):
            raise HTTPError(
                422, f"{name}.{key}: an object condition maps operators ({', '.join(OPERATORS)}) to values; "
                f"to match an object value use {{\"$eq\": ...}}"
            )
    jsonb_text(value, name)  # InvalidPayload (422): NUL or a lone surrogate
    return value or None


def _handler_filter(found: dict[str, Any] | None) -> dict[str, Any] | None:
    """A filter an authorization handler returned: one the store can apply, else the server's fault (500)."""
    try:
        return check_filter(found, "authorization filter")
    except HTTPError as exc:
        raise TypeError(f"an authorization handler returned a store filter the store cannot apply: {exc.detail}") from None


def combined(given: dict[str, Any] | None, required: dict[str, Any] | None) -> dict[str, Any] | None:
    """The caller's filter and an authorization handler's, both to hold; None when they cannot both hold.

    The store ANDs the operators of one key, so a handler's ``{key: v}`` is
    added as ``$eq``; two different equalities on one key match nothing.
    """
    if not required:
        return dict(given or {})
    merged: dict[str, Any] = dict(given or {})
    for key, condition in required.items():
        ops = condition if isinstance(condition, dict) else {"$eq": condition}
        if key not in merged:
            merged[key] = ops
            continue
        mine = merged[key] if isinstance(merged[key], dict) else {"$eq": merged[key]}
        for op, operand in ops.items():
            if op in mine and mine[op] != operand:
                if op == "$eq":
                    return None
                raise HTTPError(422, f"filter.{key}: {op} conflicts with the server's authorization filter")
            mine = {**mine, op: operand}
        merged[key] = mine
    return merged


def _matches(value: Mapping[str, Any], required: dict[str, Any]) -> bool:
    """Whether an item's value passes an authorization filter of equalities (other operators: see :func:`_compare`)."""
    for key, condition in required.items():
        ops = condition if isinstance(condition, dict) else {"$eq": condition}
        for op, operand in ops.items():
            if not _compare(value.get(key), op, operand):
                return False
    return True


def _compare(found: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(found == operand)
    if op == "$ne":
        return bool(found != operand)
    if found is None:
        return False
    # The store compares these as text (value->>key): so does this.
    text, limit = _text(found), _text(operand)
    return {"$gt": text > limit, "$gte": text >= limit, "$lt": text < limit, "$lte": text <= limit}[op]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return canonical_json(value) if isinstance(value, (dict, list)) else ("true" if value is True else "false" if value is False else str(value))


def item_json(item: Item) -> dict[str, Any]:
    found: dict[str, Any] = {
        "namespace": list(item.namespace), "key": item.key, "value": item.value,
        "created_at": iso(item.created_at), "updated_at": iso(item.updated_at),
    }
    if isinstance(item, SearchItem):
        found["score"] = item.score
    return found


def _digest(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(value)).encode()).hexdigest()


async def put_item(request: Request) -> Response:
    """Store or replace an item (204)."""
    body = await json_body(request)
    namespace = item_namespace(body.get("namespace"))
    key = _key(body.get("key"))
    value = body.get("value")
    if not isinstance(value, dict):
        raise HTTPError(422, "value must be an object")
    jsonb_text(value, "value")  # InvalidPayload (422): NUL or a lone surrogate
    index = body.get("index")
    if not (index is None or index is False or (isinstance(index, list) and all(isinstance(f, str) for f in index))):
        raise HTTPError(422, "index must be false, null or a list of field paths")
    ttl = body.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not MIN_TTL <= ttl <= MAX_TTL):
        raise HTTPError(422, f"ttl must be a number of minutes from 1/60 (a second) to {MAX_TTL} (a hundred years), or null")
    op: dict[str, Any] = {"namespace": namespace, "key": key, "value": value, "index": index, "ttl": ttl}
    await authorize_filter(request, op)  # a filter does not apply to a put (as in the reference)
    namespace = item_namespace(op["namespace"])
    await record_access(request, "store.put", namespace=".".join(namespace), key=key, value_sha256=_digest(value))
    store = _store(request)
    await runs_store.call(store.aput(namespace, key, value, index=index, ttl=ttl))
    return Response(status_code=204)


async def get_item(request: Request) -> JSONResponse:
    """One item by ``namespace`` (labels joined by '.') and ``key``; ``null`` when there is none."""
    text = request.query_params.get("namespace") or ""
    if not text:
        raise HTTPError(422, "namespace is required (its labels joined by '.')")
    namespace = item_namespace(text.split("."))
    key = _key(request.query_params.get("key") or None)
    refresh_ttl = _query_bool(request, "refresh_ttl")
    op: dict[str, Any] = {"namespace": namespace, "key": key, "refresh_ttl": refresh_ttl}
    required = await authorize_filter(request, op)
    namespace = item_namespace(op["namespace"])
    item = await runs_store.call(_store(request).aget(namespace, key, refresh_ttl=refresh_ttl))
    if item is None or (required is not None and not _matches(item.value, _handler_filter(required) or {})):
        return JSONResponse(None)
    return JSONResponse(item_json(item))


async def delete_item(request: Request) -> Response:
    """Delete an item (204, also when there was none)."""
    body = await json_body(request)
    namespace = item_namespace(body.get("namespace"))
    key = _key(body.get("key"))
    op: dict[str, Any] = {"namespace": namespace, "key": key}
    await authorize_filter(request, op)  # a filter does not apply to a delete (as in the reference)
    namespace = item_namespace(op["namespace"])
    await record_access(request, "store.delete", namespace=".".join(namespace), key=key)
    await runs_store.call(_store(request).adelete(namespace, key))
    return Response(status_code=204)


async def search_items(request: Request) -> JSONResponse:
    """Items under ``namespace_prefix`` whose values match ``filter``: ``{"items": [...]}``, a page of ``limit`` from ``offset``."""
    body = await json_body(request, optional=True)
    prefix = labels(body.get("namespace_prefix"), "namespace_prefix", empty=True)
    given = check_filter(body.get("filter"))
    limit = body_int(body, "limit", 10, 1, MAX_SEARCH)
    offset = body_int(body, "offset", 0, 0, MAX_OFFSET)
    query = body.get("query")
    if query is not None and (not isinstance(query, str) or not _storable(query)):
        raise HTTPError(422, "query must be a string or null")
    refresh_ttl = _optional_bool(body.get("refresh_ttl"), "refresh_ttl")
    op: dict[str, Any] = {
        "namespace": prefix, "filter": given, "limit": limit, "offset": offset, "query": query, "refresh_ttl": refresh_ttl,
    }
    required = await authorize_filter(request, op)
    prefix = labels(op["namespace"], "namespace_prefix", empty=True)
    where = combined(check_filter(op["filter"]), _handler_filter(required))
    if where is None:
        return JSONResponse({"items": []})
    found = await runs_store.call(
        _store(request).asearch(prefix, query=query, filter=where or None, limit=limit, offset=offset, refresh_ttl=refresh_ttl)
    )
    return JSONResponse({"items": [item_json(item) for item in found]})


async def list_namespaces(request: Request) -> JSONResponse:
    """The namespaces holding items: ``{"namespaces": [[...], ...]}``, by ``prefix``, ``suffix`` and ``max_depth``."""
    body = await json_body(request, optional=True)
    prefix = labels(body.get("prefix"), "prefix", empty=True) or None
    suffix = labels(body.get("suffix"), "suffix", empty=True) or None
    max_depth = body.get("max_depth")
    if max_depth is not None:
        max_depth = body_int(body, "max_depth", 0, 1, 1000)
    limit = body_int(body, "limit", DEFAULT_NAMESPACES, 1, MAX_SEARCH)
    offset = body_int(body, "offset", 0, 0, MAX_OFFSET)
    op: dict[str, Any] = {"namespace": prefix, "suffix": suffix, "max_depth": max_depth, "limit": limit, "offset": offset}
    await authorize_filter(request, op)  # a filter does not apply to namespaces (as in the reference)
    prefix = labels(op["namespace"], "prefix", empty=True) or None
    found = await runs_store.call(
        _store(request).alist_namespaces(prefix=prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset)
    )
    return JSONResponse({"namespaces": [list(namespace) for namespace in found]})


routes = [
    guarded("/store/items", put_item, methods=["PUT"], action="put", resource=STORE),
    guarded("/store/items", get_item, methods=["GET"], action="get", resource=STORE),
    guarded("/store/items", delete_item, methods=["DELETE"], action="delete", resource=STORE),
    guarded("/store/items/search", search_items, methods=["POST"], action="search", resource=STORE),
    guarded("/store/namespaces", list_namespaces, methods=["POST"], action="list_namespaces", resource=STORE),
]
