"""The app served by uvicorn on 127.0.0.1 (real HTTP, streamed), and the official langgraph-sdk client on it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from langgraph_sdk.client import LangGraphClient

from graphledger.http.app import create_app
from graphledger.http.server import Server
from graphledger.runs import GraphRegistry, RunSettings, demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def served(app: Any, *, drain_seconds: float = 1.0, grace_seconds: float = 5.0) -> AsyncIterator[tuple[str, Server]]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in this event loop; yields its base URL and the server."""
    port = free_port()
    # The server `graphledger serve` runs: its shutdown is bounded (drain, then a grace), open streams or not.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = Server(config, app, drain_seconds=drain_seconds, grace_seconds=grace_seconds)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        assert not task.done(), task.exception() if task.done() else None
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """``app`` served as :func:`served` serves it; yields its base URL."""
    async with served(app) as (url, _):
        yield url


@pytest.fixture(scope="module")
async def base_url(dsn: str) -> AsyncIterator[str]:
    app = create_app(
        dsn,
        graphs=GraphRegistry({"demo": demo.graph}),
        settings=RunSettings(workers=4, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        max_body_bytes=64 * 1024,
        heartbeat_seconds=0.5,
    )
    async with serve(app) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture
def sdk(http: httpx.AsyncClient) -> LangGraphClient:
    return LangGraphClient(http)
