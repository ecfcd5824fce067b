"""A delayed run (``after_seconds``) survives a restart: its due time is in the database, not in a server's memory.

Real ``graphledger serve`` processes, the official langgraph-sdk client, real PostgreSQL, the bundled demo graph.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import httpx
from langgraph_sdk.client import LangGraphClient

from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.events import RUN_CREATED, RUN_STARTED
from graphledger.projections import Projections
from tests.acceptance.servers import Server

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
DELAY = 3


async def test_a_delayed_run_admitted_before_a_restart_starts_after_it_when_due(
    dsn: str, tmp_path: Path, servers: list[Server], client: Ledger
) -> None:
    a = Server(dsn, tmp_path)
    servers.append(a)
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as http:
        sdk = LangGraphClient(http)
        thread_id = (await sdk.threads.create())["thread_id"]
        run = await sdk.runs.create(thread_id, "demo", input=INPUT, after_seconds=DELAY)
        stateless = await sdk.runs.create(None, "demo", input=INPUT, after_seconds=DELAY)
    a.stop()
    ref = RunRef(UUID(thread_id), UUID(run["run_id"]))
    assert (await Projections(client).run_status(ref)).status == "pending"  # the stopped server never started it

    b = Server(dsn, tmp_path)
    servers.append(b)
    async with httpx.AsyncClient(base_url=b.url, timeout=60) as http:
        sdk = LangGraphClient(http)
        await sdk.runs.join(thread_id, run["run_id"])
        assert (await sdk.runs.get(thread_id, run["run_id"]))["status"] == "success"
        await sdk.runs.join(stateless["thread_id"], stateless["run_id"])
        threads = await http.get(f"/threads/{stateless['thread_id']}")
        assert threads.status_code == 404  # deleted with its run's end, by the server that ran it
    events = await client.read_run(ref)
    created = next(e for e in events if e.kind == RUN_CREATED)
    started = [e for e in events if e.kind == RUN_STARTED]
    assert len(started) == 1 and f":{b.pid}:" in started[0].value["worker"]
    assert (started[0].ts - created.ts).total_seconds() >= DELAY
