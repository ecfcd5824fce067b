"""What every route shares: ids from the path, JSON bodies, errors as ``{"detail": ...}``."""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse

from graphledger.http import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from graphledger.http.identity import actor as actor
from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.errors import (
    Conflict,
    DatabaseUnavailable,
    InvalidEvent,
    InvalidPayload,
    LedgerError,
    RunFinished,
    RunNotEnded,
    RunNotFound,
    ThreadNotFound,
)
from graphledger.ledger.threads import Visibility
from graphledger.projections.errors import InvalidArgument, InvalidCursor
from graphledger.runs.errors import (
    CheckpointNotFound,
    InvalidBudget,
    InvalidRequest,
    NoGraph,
    NotCancellable,
    NotPending,
    OverBudget,
    RunBusy,
    ThreadBusy,
    UnknownAssistant,
)

MAX_JSON_DEPTH = 100
"""Objects and arrays nested deeper than this in a body are refused (a LangGraph input needs about six)."""
INT64 = 2**63

STATUS_OF: list[tuple[type[Exception], int]] = [
    (RunNotFound, 404),
    (ThreadNotFound, 404),
    (UnknownAssistant, 404),
    (CheckpointNotFound, 404),
    (NoGraph, 409),
    (ThreadBusy, 409),
    (NotCancellable, 409),
    (RunBusy, 409),
    (NotPending, 409),
    (Conflict, 409),
    (RunFinished, 409),
    (RunNotEnded, 409),
    (InvalidRequest, 422),
    (InvalidBudget, 422),
    (OverBudget, 429),
    (InvalidEvent, 422),
    (InvalidPayload, 422),
    (InvalidArgument, 422),
    (InvalidCursor, 422),
    (DatabaseUnavailable, 503),
]


class HTTPError(Exception):
    """An answer other than success: its status and its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def status_of(error: LedgerError) -> int:
    for cls, status in STATUS_OF:
        if isinstance(error, cls):
            return status
    return 400


def error_response(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))


async def record_access(request: Request, action: str, **resource: Any) -> None:
    """Record a read of the record in the access log (see :mod:`graphledger.ledger.access`) before it is answered."""
    ledger: Ledger = request.app.state.ledger
    target = {name: str(value) for name, value in resource.items() if value is not None}
    client = request.client.host if request.client is not None else None
    async with ledger.transaction() as tx:
        await tx.access.record(actor=actor(request), action=action, resource=target, client=client)


async def require(ledger: Ledger, thread_id: UUID, run_id: UUID | None = None, visible: Visibility | None = None) -> None:
    """404 unless the thread (and the run in it) exists and is ``visible``; a deleted thread still exists.

    A run is visible iff its thread is: a run outside the caller's filter is
    as unknown as one that never existed.
    """
    async with ledger.session() as session:
        if not await session.threads.exists(thread_id, visible):
            if run_id is None:
                raise HTTPError(404, f"thread {thread_id} not found")
            raise HTTPError(404, f"run {run_id} not found in thread {thread_id}")
        if run_id is not None and not await session.heads.exists(RunRef(thread_id, run_id)):
            raise HTTPError(404, f"run {run_id} not found in thread {thread_id}")


def path_uuid(request: Request, name: str) -> UUID:
    """A UUID from the path; 422 when it is not one."""
    return parse_uuid(name, request.path_params[name])


def parse_uuid(name: str, value: Any) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise HTTPError(422, f"{name} must be a UUID, not {str(value)[:100]!r}") from None


async def json_body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (size-limited by the app's middleware); 422 when it is not one."""
    raw = await request.body()
    if not raw.strip():
        if optional:
            return {}
        raise HTTPError(422, "a JSON object body is required")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise HTTPError(422, "the body must be a JSON object")
    return body


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)  # an unterminated string runs to the end: no backtracking
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def parse_json(raw: bytes) -> Any:
    """UTF-8 JSON text as data the ledger can hold as it is; 422 for anything else.

    Refused: nesting deeper than :data:`MAX_JSON_DEPTH`, ``NaN`` and
    ``Infinity`` (which :func:`json.loads` accepts by default), numbers too
    large for a 64-bit float, and integers outside the signed 64-bit range.
    The depth is measured on the bytes before parsing, so no input makes the
    parser recurse deeply. Everything refused here would otherwise fail a run
    later or be stored changed.
    """
    try:
        text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
        _check_depth(raw)
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int64)
    except ValueError as exc:
        raise HTTPError(422, f"the body is not valid JSON: {exc}") from None


def _check_depth(raw: bytes) -> None:
    # Multi-byte UTF-8 sequences hold no ASCII bytes: brackets outside strings are the structure.
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    depth = 0
    for byte in brackets:
        if byte == 0x5B or byte == 0x7B:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise HTTPError(422, f"the body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels")
        else:
            depth -= 1


def _refuse_constant(name: str) -> NoReturn:
    raise HTTPError(422, f"the body holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise HTTPError(422, f"the body holds the number {text[:50]}, too large for a 64-bit float")
    return value


def _int64(text: str) -> int:
    if len(text) < 19:  # at most 18 digits: always in range
        return int(text)
    value = int(text) if len(text) <= 20 else INT64
    if not -INT64 <= value < INT64:
        raise HTTPError(422, f"the body holds the integer {text[:30]}{'...' if len(text) > 30 else ''}, beyond 64 bits (signed)")
    return value


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(422, f"{name} must be a whole number, not {text[:50]!r}") from None
    if not low <= value <= high:
        raise HTTPError(422, f"{name} must be between {low} and {high}")
    return value


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise HTTPError(422, f"{name} must be true or false, not {text[:50]!r}")


def query_time(request: Request, name: str) -> datetime | None:
    """An ISO 8601 time (UTC when it names no offset), as UTC; 422 outside years 1 to 9999 UTC."""
    text = request.query_params.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPError(422, f"{name} must be an ISO 8601 time, not {text[:50]!r}") from None
    try:
        return value.astimezone(timezone.utc) if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00, which is in year 0 in UTC
        raise HTTPError(422, f"{name} must be a time from year 1 to year 9999 in UTC, not {text[:50]!r}") from None


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


MAX_SEARCH = 1000
"""The largest page a search (``limit``) or a list of ids may ask for."""


def body_int(body: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """A whole number from a JSON body (``default`` when absent); 422 outside ``[low, high]``."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HTTPError(422, f"{name} must be a whole number from {low} to {high}")
    return value


@dataclass(frozen=True, slots=True)
class SearchPage:
    """The page a search body asks for: its order, the fields it selects, ``limit`` and ``offset``."""

    sort_by: str
    descending: bool
    fields: tuple[str, ...]
    limit: int
    offset: int


def search_page(body: Mapping[str, Any], *, sort_by: Sequence[str], fields: tuple[str, ...]) -> SearchPage:
    """``sort_by``, ``sort_order``, ``select``, ``limit`` and ``offset`` of a search body (LangGraph's defaults); 422 when invalid."""
    order_by = body.get("sort_by") or "created_at"
    if order_by not in sort_by:
        raise HTTPError(422, f"sort_by must be one of {', '.join(sort_by)}")
    sort_order = body.get("sort_order") or "desc"
    if sort_order not in ("asc", "desc"):
        raise HTTPError(422, "sort_order must be asc or desc")
    select = body.get("select")
    if select is None:
        chosen = fields
    elif not isinstance(select, list) or not select or not all(isinstance(f, str) and f in fields for f in select):
        raise HTTPError(422, f"select must be a non-empty list of {', '.join(fields)}")
    else:
        chosen = tuple(f for f in fields if f in select)
    return SearchPage(
        order_by, sort_order == "desc", chosen, body_int(body, "limit", 10, 1, MAX_SEARCH), body_int(body, "offset", 0, 0, 2**31 - 1)
    )
