"""The HTTP API across two ``graphledger serve`` processes on one database.

Process A executes runs; process B executes nothing (``--workers 0``). A
stream begun on A is resumed on B with ``Last-Event-ID``, and a run A
executes is cancelled through B.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from tests.acceptance.servers import Server

HANG_GUARD = 60.0  # only stops a broken run from hanging the suite; never a measurement
INPUT = {"messages": [{"role": "user", "content": "a long answer please"}]}
SLOW = {"configurable": {"tokens": 400, "token_delay": 0.01}}


@pytest.fixture(scope="module")
def pair(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    workdir: Path = tmp_path_factory.mktemp("pair")
    workdir.chmod(0o755)
    a = Server(dsn, workdir, "--workers", "2")
    b = Server(dsn, workdir, "--workers", "0")
    yield a, b
    for server in (a, b):
        output = server.stop()
        assert server.process.returncode == 0, output


@pytest.fixture
async def sdks(pair: tuple[Server, Server]) -> AsyncIterator[tuple[LangGraphClient, LangGraphClient]]:
    """The official client on A and on B."""
    async with httpx.AsyncClient(base_url=pair[0].url, timeout=HANG_GUARD) as on_a:
        async with httpx.AsyncClient(base_url=pair[1].url, timeout=HANG_GUARD) as on_b:
            yield LangGraphClient(on_a), LangGraphClient(on_b)


async def collect(parts: Any, *, upto: int | None = None) -> list[Any]:
    seen = []
    async for part in parts:
        seen.append(part)
        if upto is not None and len(seen) == upto:
            break  # the connection is cut here
    return seen


async def test_a_stream_begun_on_one_process_resumes_on_another(sdks: tuple[LangGraphClient, LangGraphClient]) -> None:
    a, b = sdks
    thread = await a.threads.create()
    first = await asyncio.wait_for(
        collect(a.runs.stream(thread["thread_id"], "demo", input=INPUT, config=SLOW, stream_mode=["messages-tuple", "values"]), upto=50),
        HANG_GUARD,
    )
    run_id = first[0].data["run_id"]
    assert (await b.runs.get(thread["thread_id"], run_id))["status"] == "running"  # still going while B takes over
    rest = await asyncio.wait_for(collect(b.runs.join_stream(thread["thread_id"], run_id, last_event_id=first[-1].id)), HANG_GUARD)
    ids = [int(p.id) for p in first + rest]
    assert ids == sorted(set(ids))  # every event once, in order, across the two processes
    for server in (a, b):
        replay = await collect(server.runs.join_stream(thread["thread_id"], run_id, last_event_id="0"))
        assert [(p.event, p.id, p.data) for p in replay] == [(p.event, p.id, p.data) for p in first + rest]
    assert (await b.runs.get(thread["thread_id"], run_id))["status"] == "success"


async def test_a_run_executed_by_one_process_is_cancelled_through_another(sdks: tuple[LangGraphClient, LangGraphClient]) -> None:
    a, b = sdks
    thread = await a.threads.create()
    slower = {"configurable": {"tokens": 2000, "token_delay": 0.01}}
    run = await a.runs.create(thread["thread_id"], "demo", input=INPUT, config=slower, stream_mode=["messages-tuple"])
    watching = asyncio.create_task(collect(a.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="0")))
    async for part in b.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="0"):
        if part.event == "messages":
            break  # A is streaming tokens
    cancelled = await asyncio.wait_for(b.runs.cancel(thread["thread_id"], run["run_id"], wait=True), HANG_GUARD)
    assert cancelled["status"] == "interrupted"
    seen = await asyncio.wait_for(watching, HANG_GUARD)  # A's stream ends too
    assert seen[0].event == "metadata" and seen[-1].event == "messages"
    events = (await b.http.get(f"/threads/{thread['thread_id']}/runs/{run['run_id']}/events", params={"kinds": "run.*"}))
    assert [e["kind"] for e in events["events"]] == ["run.created", "run.started", "run.cancel_requested", "run.interrupted"]
    assert (await a.runs.get(thread["thread_id"], run["run_id"]))["status"] == "interrupted"


async def test_a_thread_stream_begun_on_one_process_resumes_on_another(sdks: tuple[LangGraphClient, LangGraphClient]) -> None:
    a, b = sdks
    thread = await a.threads.create()
    tid = thread["thread_id"]
    run = await a.runs.create(tid, "demo", input=INPUT, config=SLOW, stream_mode=["messages-tuple"])
    # Cut on A in the middle of the run (A executes it), resumed on B, which executes nothing.
    first = await asyncio.wait_for(collect(await a.threads.join_stream(tid, last_event_id="-1"), upto=30), HANG_GUARD)
    rest: list[Any] = []
    async for part in await b.threads.join_stream(tid, last_event_id=first[-1].id):
        rest.append(part)
        if part.event == "metadata" and part.data.get("status") == "run_done":
            break
    parts = first + rest
    assert parts[0].event == "metadata" and parts[0].data == {"run_id": run["run_id"], "attempt": 1}
    assert parts[-1].data == {"status": "run_done", "run_id": run["run_id"]}
    ids = [p.id for p in parts]
    assert len(set(ids)) == len(ids)  # nothing twice
    whole = await asyncio.wait_for(collect(await b.threads.join_stream(tid, last_event_id="-1"), upto=len(parts)), HANG_GUARD)
    assert [(p.event, p.id, p.data) for p in whole] == [(p.event, p.id, p.data) for p in parts]  # nothing skipped
    run_stream = await asyncio.wait_for(collect(a.runs.join_stream(tid, run["run_id"], last_event_id="0")), HANG_GUARD)
    assert [p.data for p in parts if p.event == "messages"] == [p.data for p in run_stream if p.event == "messages"]
