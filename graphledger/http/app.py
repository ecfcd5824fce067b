"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from graphledger import projections
from graphledger.ledger import Ledger
from graphledger.runs import GraphRegistry, RunSettings, Runtime


async def ok(request: Request) -> JSONResponse:
    """Readiness: answers once the ledger is connected and its tail is listening."""
    ledger: Ledger = request.app.state.ledger
    if ledger.hub is not None and not ledger.hub.listening.is_set():
        return JSONResponse({"detail": "tail listener reconnecting"}, status_code=503)
    return JSONResponse({"ok": True})


def create_app(dsn: str, *, graphs: GraphRegistry | None = None, settings: RunSettings | None = None) -> Starlette:
    """The application over the (already migrated) database at ``dsn``, executing runs of ``graphs``."""
    graphs = graphs or GraphRegistry.configure()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.ledger = await projections.connect(dsn)
        app.state.graphs = graphs
        app.state.runtime = Runtime(app.state.ledger, graphs, settings)
        try:
            await app.state.runtime.start()
            yield
        finally:
            await app.state.runtime.close()
            await app.state.ledger.close()

    return Starlette(routes=[Route("/ok", ok)], lifespan=lifespan)
