"""An SSE stream cut at many points and resumed with Last-Event-ID adds up to the stored log."""

from __future__ import annotations

import random
from uuid import UUID

import httpx
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
