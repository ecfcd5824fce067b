"""Resuming with Last-Event-ID: a stream cut at many points adds up to the stored log; an id never sent is refused."""

from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from graphledger.ledger import Ledger, RunRef
from graphledger.runs.sse import frame, sse_modes

INPUT = {"messages": [{"role": "user", "content": "a long one"}]}
MODES = ["messages-tuple", "updates"]


async def test_cuts_at_random_points_resume_to_exactly_the_stored_log(http: httpx.AsyncClient, sdk: LangGraphClient, dsn: str) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(
        thread["thread_id"], "demo", input=INPUT, stream_mode=MODES, config={"configurable": {"tokens": 400, "token_delay": 0.005}}
    )
    url = f"/threads/{thread['thread_id']}/runs/{run['run_id']}/stream"
    rng = random.Random(20261122)
    received: list[bytes] = []
    last_id = "-1"
    cuts = 0
    while True:
        take = rng.randint(1, 40)  # frames to read before this connection is cut
        buffer = b""
        taken = 0
        cut = False
        async with http.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    part, buffer = buffer.split(b"\n\n", 1)
                    if part.startswith(b":"):
                        continue  # a heartbeat
                    received.append(part + b"\n\n")
                    last_id = part.rsplit(b"\nid: ", 1)[1].decode()
                    taken += 1
                if taken >= take:
                    cut = True  # whatever is buffered of the next frame is dropped with the connection
                    break
        if not cut:
            break
        cuts += 1
    assert cuts >= 10
    ledger = await Ledger.connect(dsn, tail=False)
    try:
        events = await ledger.read_run(RunRef(UUID(thread["thread_id"]), UUID(run["run_id"])))
    finally:
        await ledger.close()
    assert events[-1].is_terminal
    modes = sse_modes(MODES)
    expected = [f for f in (frame(e, modes) for e in events) if f is not None]
    assert received == expected


# -- ids this server never sent -----------------------------------------------------------

NEVER_SENT = [
    "50", "500", str(2**31), str(2**63), str(10**20), "9" * 400,  # past the head, and beyond int4
    "garbage", "-5", str(-(10**30)), "1.5", "1e3", "+3", "1_0", "0x10", "- 1", "3 4",
]


async def _head(http: httpx.AsyncClient, url: str) -> int:
    events = (await http.get(url.replace("/stream", "/events"), params={"limit": 1000})).json()["events"]
    return int(events[-1]["seq"])


async def _raw_get(base_url: str, path: str, last_event_id: str) -> bytes:
    """A GET with the header written as given (whitespace included), read until the server ends the response."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nLast-Event-ID:{last_event_id}\r\n\r\n".encode())
        await writer.drain()
        return await reader.read()  # until the server closes: after the last chunk of the stream
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("live", [False, True], ids=["finished", "live"])
async def test_an_id_this_server_never_sent_is_refused_before_any_byte(
    http: httpx.AsyncClient, sdk: LangGraphClient, base_url: str, live: bool
) -> None:
    thread = await sdk.threads.create()
    config = {"configurable": {"tokens": 3, "token_delay": 1.0}} if live else None
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, stream_mode=MODES, config=config)
    if not live:
        await sdk.runs.join(thread["thread_id"], run["run_id"])
    url = f"/threads/{thread['thread_id']}/runs/{run['run_id']}/stream"
    head = await _head(http, url)
    assert head < 50
    async with asyncio.timeout(20):
        for value in NEVER_SENT:
            response = await http.get(url, headers={"Last-Event-ID": value})
            assert response.status_code == 422, (value, response.status_code, response.text[:200])
            assert response.headers["content-type"] == "application/json"
            assert response.json()["detail"].startswith("Last-Event-ID"), value
        refused = await http.post(url, params={"action": "interrupt"}, headers={"Last-Event-ID": "500"})
        assert refused.status_code == 422  # and the run is not cancelled
    status = (await sdk.runs.get(thread["thread_id"], run["run_id"]))["status"]
    assert status == ("running" if live else "success")
    # Blank (whitespace only: a join without an id), the head itself, and padded digits: streams that end.
    async with asyncio.timeout(30):
        blank = await _raw_get(base_url, url, "   ")
        at_head = await _raw_get(base_url, url, f" {head} ")
    assert blank.startswith(b"HTTP/1.1 200 ") and b"event: metadata" in blank
    assert at_head.startswith(b"HTTP/1.1 200 ") and b"event: metadata" not in at_head
    if live:
        assert b"event: messages" in blank  # followed the run to its end
    status = (await sdk.runs.get(thread["thread_id"], run["run_id"]))["status"]
    assert status == "success"
