"""What every route shares: ids from the path, JSON bodies, errors as ``{"detail": ...}``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse

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
from graphledger.projections.errors import InvalidArgument, InvalidCursor
from graphledger.runs.errors import (
    InvalidRequest,
    NotCancellable,
    NotPending,
    ThreadBusy,
    UnknownAssistant,
)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

STATUS_OF: list[tuple[type[Exception], int]] = [
    (RunNotFound, 404),
    (ThreadNotFound, 404),
    (UnknownAssistant, 404),
    (ThreadBusy, 409),
    (NotCancellable, 409),
    (NotPending, 409),
    (Conflict, 409),
    (RunFinished, 409),
    (RunNotEnded, 409),
    (InvalidRequest, 422),
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


async def require(ledger: Ledger, thread_id: UUID, run_id: UUID | None = None) -> None:
    """404 unless the thread (and the run in it) exists; a deleted thread still does."""
    async with ledger.session() as session:
        if run_id is None:
            if not await session.threads.exists(thread_id):
                raise HTTPError(404, f"thread {thread_id} not found")
        elif not await session.heads.exists(RunRef(thread_id, run_id)):
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
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise HTTPError(422, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(422, "the body must be a JSON object")
    return body


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


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
