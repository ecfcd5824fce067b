"""uvicorn with a hand-over: on SIGTERM the process stops accepting, drains its runs, releases the rest and ends its streams.

uvicorn's own graceful shutdown waits for every open connection to finish
before the application's lifespan shutdown runs. An SSE stream finishes only
when its run does, so a process with open streams would ignore ``--drain`` and
live until every run it streams has ended. Here the hand-over
(:func:`graphledger.http.app.drain`) starts the moment the listening sockets
close, alongside uvicorn's wait: runs get ``drain_seconds`` to finish, the
rest are released to other processes, and then every stream ends, which lets
uvicorn's wait return. Requests that only end with a run (``wait``, ``join``)
are cut ``grace_seconds`` after the drain at the latest.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette

from graphledger.http.app import drain

GRACE_SECONDS = 5.0
"""How long after the drain uvicorn waits for connections before it cuts them."""


class Server(uvicorn.Server):
    """A uvicorn server that hands its runs and streams over on shutdown (see the module)."""

    def __init__(self, config: uvicorn.Config, app: Starlette, *, drain_seconds: float, grace_seconds: float = GRACE_SECONDS) -> None:
        # A backstop only: a stream never holds the process once the drain is over,
        # but a client that stops reading (or a long wait/join) could.
        config.timeout_graceful_shutdown = drain_seconds + grace_seconds  # type: ignore[assignment]
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting before the drain starts (uvicorn closes them again: harmless)
        handover = asyncio.get_running_loop().create_task(drain(self.app), name="graphledger-handover")
        try:
            await super().shutdown(sockets)
        finally:
            # Normally done already: the lifespan's shutdown waited for it. Not
            # so when a second signal forced the exit and skipped the lifespan.
            await handover
