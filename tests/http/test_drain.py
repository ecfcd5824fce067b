"""A stopping server's own cut of a stream is not a client leaving: it cancels no run."""

from __future__ import annotations

import asyncio
import contextlib
import json
from uuid import UUID

import asyncpg
import httpx

from graphledger.http.app import create_app
from graphledger.ledger import RunRef
from graphledger.runs import GraphRegistry, RunSettings, demo
from tests.http.conftest import served

DRAIN, GRACE = 0.5, 0.5
SLOW = {"configurable": {"tokens": 300, "token_delay": 0.02}}


async def test_a_stream_its_stopping_server_cuts_with_on_disconnect_cancel_cancels_no_run(dsn: str, conn: asyncpg.Connection) -> None:
    """The hand-over takes longer than the drain and the grace (the run's row is held, as a slow database holds it).

    The HTTP server then cuts the stream; the run is released to the next
    server, not cancelled as if its client had gone away.
    """
    settings = RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=DRAIN)
    app = create_app(dsn, graphs=GraphRegistry({"demo": demo.graph}), settings=settings, heartbeat_seconds=0.2)
    body = {
        "assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "a long answer please"}]},
        "config": SLOW, "stream_mode": "messages-tuple", "on_disconnect": "cancel",
    }
    run_id: str | None = None
    async with served(app, drain_seconds=DRAIN, grace_seconds=GRACE) as (url, server):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            thread = (await client.post("/threads", json={})).json()["thread_id"]
            async with client.stream("POST", f"/threads/{thread}/runs/stream", json=body) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data: ") and run_id is None:
                        run_id = json.loads(line[len("data: "):])["run_id"]
                    if line.startswith("event: messages"):
                        break
                assert run_id is not None
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", UUID(run_id))
                    server.should_exit = True
                    with contextlib.suppress(httpx.RemoteProtocolError):  # the cut: the response ends mid-body
                        async with asyncio.timeout(DRAIN + GRACE + 10):
                            async for _ in lines:
                                pass
                    await asyncio.sleep(0.3)  # a cancel the cut asked for would be waiting on the row now
    assert run_id is not None
    ref = RunRef(UUID(thread), UUID(run_id))
    kinds = [row["kind"] for row in await conn.fetch(
        "SELECT kind FROM events WHERE thread_id = $1 AND run_id = $2 ORDER BY seq", ref.thread_id, ref.run_id
    )]
    assert "run.cancel_requested" not in kinds and "run.interrupted" not in kinds, kinds
    assert kinds[-1] == "run.released"
    assert await conn.fetchval("SELECT status FROM runs WHERE run_id = $1", ref.run_id) == "pending"
