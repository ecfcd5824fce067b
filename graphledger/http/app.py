"""The ASGI application: LangGraph-compatible assistants, threads and runs, over the ledger."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphledger import projections
from graphledger.http import assistants, budgets, feedback, log, openapi, reads, runs, sse, state, store, thread_stream, threads, usage, viewer
from graphledger.http.auth import Authenticate, Authorizer
from graphledger.http.common import (
    DEFAULT_MAX_BODY_BYTES,
    HTTPError,
    error_response,
    status_of,
)
from graphledger.ledger import Ledger
from graphledger.ledger.checkpointer import Checkpointer
from graphledger.ledger.errors import LedgerError
from graphledger.ledger.note import Signer
from graphledger.process import settle
from graphledger.projections.prices import PriceBook
from graphledger.runs import GraphRegistry, RunSettings, Runtime, pricing
from graphledger.runs.assistants import register
from graphledger.runs.errors import OverBudget
from graphledger.runs.pricing import Pricer

_log = logging.getLogger("graphledger.http")
RETRY_AFTER = "2"
"""Seconds a client is asked to wait after a 503 (the database is unavailable)."""


async def ok(request: Request) -> JSONResponse:
    """Readiness: 200 while the database answers and the tail is listening, else 503."""
    ledger: Ledger = request.app.state.ledger
    await ledger.ping()  # DatabaseUnavailable: 503 with Retry-After
    if not ledger.listening:
        return error_response(503, "tail listener reconnecting", {"Retry-After": RETRY_AFTER})
    return JSONResponse({"ok": True})


class BodyLimit:
    """Answers 413 to a request body over ``limit`` bytes (declared or actually sent)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, self._detail())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPError(413, self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"request body larger than {self.limit} bytes (see --max-body-bytes)"


class InternalErrors:
    """Answers an exception no handler knows with a JSON 500 and logs its traceback.

    Starlette's own last-resort handler re-raises after answering, and the
    server then closes the connection; here the exception ends with the
    answer, so a keep-alive connection stays usable. Once part of a response
    has been sent it can no longer be answered: the exception goes on, and
    the server closes the connection so the client sees the response cut.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            response = await internal_error(Request(scope, receive), exc)
            await response(scope, receive, send)


async def internal_error(request: Request, exc: Exception) -> Response:
    """The answer to an exception no handler knows: logged with its traceback, answered 500 without details."""
    _log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error_response(exc.status, exc.detail)


async def _ledger_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LedgerError)
    status = status_of(exc)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    if isinstance(exc, OverBudget) and exc.retry_after is not None:
        headers = {"Retry-After": str(exc.retry_after)}  # when the budget's window will have room again
    return error_response(status, str(exc), headers)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def drain(app: Starlette) -> None:
    """Hand this process's share of the work over: its runs drain and are released, then its SSE streams end.

    Called by the server as soon as it stops accepting connections (see
    :mod:`graphledger.http.server`), and again, to no effect, by the
    lifespan's shutdown. The runs still executing after ``drain_seconds`` are
    released to other processes; every stream then ends without a terminal
    event, so its client reconnects with ``Last-Event-ID`` elsewhere. A run
    that finished during the drain has sent its stream's last frame by then.
    """
    streams: sse.Streams | None = getattr(app.state, "streams", None)
    if streams is not None:
        streams.stop()  # from now on a cut stream is this server's doing, never a client's cancel
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is not None:
        await runtime.drain()
    if streams is not None:
        streams.close()


def create_app(
    dsn: str,
    *,
    graphs: GraphRegistry | None = None,
    settings: RunSettings | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    heartbeat_seconds: float = sse.HEARTBEAT_SECONDS,
    auth: Authorizer | None = None,
    signer: Signer | None = None,
    checkpoint_interval: float = 60.0,
    checkpoint_dir: Path | None = None,
    prices: PriceBook | None = None,
    pricer: Pricer | None = None,
    warm: bool = False,
) -> Any:
    """The application over the (already migrated) database at ``dsn``, executing runs of ``graphs``.

    With ``auth``, every route but the public ones (``/ok``, ``/openapi.json``,
    the Merkle log's ``/log/...``) authenticates and authorizes (see
    :mod:`graphledger.http.auth`). The Merkle log is grown in the background;
    with a ``signer``, a checkpoint is signed every ``checkpoint_interval``
    seconds (and written to ``checkpoint_dir`` too), and an export download
    signs one first when the latest does not cover every event it carries.
    ``prices`` prices usage (``genai-prices`` alone by default).
    ``pricer`` prices LLM calls for cost budgets at admission (by default,
    ``prices``: the same prices as usage). ``warm`` (``serve``'s) readies the
    process for a burst from its first request: the ledger's pool is opened
    whole with its append statements planned (see :meth:`Ledger.connect
    <graphledger.ledger.Ledger.connect>`), and the process is settled for
    load once started (:func:`graphledger.process.settle`: the startup's
    objects frozen out of the garbage collector's way, young collections
    rarer).
    """
    graphs = graphs or GraphRegistry.configure()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.ledger = await projections.connect(dsn, warm=warm)
        app.state.graphs = graphs
        app.state.pricer = pricer if pricer is not None else pricing.of_book(app.state.prices)
        app.state.heartbeat = heartbeat_seconds
        app.state.streams = sse.Streams()
        app.state.runtime = Runtime(app.state.ledger, graphs, settings)
        checkpointer = app.state.checkpointer = Checkpointer(
            app.state.ledger, signer, interval=checkpoint_interval, directory=checkpoint_dir
        )
        try:
            await register(app.state.ledger, graphs)  # each served graph is an assistant
            await app.state.runtime.start()
            checkpointer.start()
            if warm:
                settle()
            yield
        finally:
            await checkpointer.close()
            await drain(app)
            await app.state.runtime.close()
            await app.state.ledger.close()

    app = Starlette(
        routes=[
            Route("/ok", ok), Route("/openapi.json", openapi.openapi),
            *assistants.routes, *threads.routes, *state.routes, *runs.routes, *reads.routes, *store.routes, *thread_stream.routes,
            *feedback.routes, *usage.routes, *budgets.routes,
            *log.routes, *viewer.routes,
        ],
        lifespan=lifespan,
        exception_handlers={HTTPError: _http_error, LedgerError: _ledger_error, HTTPException: _starlette_error},
    )
    app.state.authorizer = auth
    app.state.prices = prices if prices is not None else PriceBook()
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if auth is not None:
        app.add_middleware(Authenticate, authorizer=auth)  # before any route, and before a body is read
    app.add_middleware(InternalErrors)  # added last: outermost, it also sees what BodyLimit raises
    return app
