"""``GET /threads/{id}/stream`` through the official SDK: every run of the thread, resumable."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}


async def _collect(stream: Any, parts: list[Any], until: int) -> None:
    """Take parts until ``until`` run_done frames have come."""
    done = 0
    async for part in stream:
        parts.append(part)
        if part.event == "metadata" and part.data.get("status") == "run_done":
            done += 1
            if done == until:
                return


async def test_a_thread_stream_follows_every_run_and_resumes(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    first = await sdk.runs.create(tid, "demo", input=INPUT, stream_mode=["updates"])
    await sdk.runs.join(tid, first["run_id"])
    parts: list[Any] = []
    # From the thread's start (-1): the finished run, then the next one as it happens.
    follower = asyncio.get_running_loop().create_task(_collect(await sdk.threads.join_stream(tid, last_event_id="-1"), parts, until=2))
    second = await sdk.runs.create(tid, "demo", input=INPUT, stream_mode=["values"], config={"configurable": {"token_delay": 0.01}})
    await asyncio.wait_for(follower, 60)
    names = [(p.event, p.data.get("run_id") if isinstance(p.data, dict) and p.event == "metadata" else None) for p in parts]
    assert names[0] == ("metadata", first["run_id"]) and parts[0].data == {"run_id": first["run_id"], "attempt": 1}
    assert ("metadata", second["run_id"]) in names
    done = [p.data for p in parts if p.event == "metadata" and "status" in p.data]
    assert done == [{"status": "run_done", "run_id": first["run_id"]}, {"status": "run_done", "run_id": second["run_id"]}]
    cut = names.index(("metadata", second["run_id"]))
    assert {p.event for p in parts[:cut]} == {"metadata", "updates"}  # each run in the modes it asked for
    assert {p.event for p in parts[cut:]} == {"metadata", "values"}
    ids = [p.id for p in parts]
    assert len(set(ids)) == len(ids) and all(":" in i for i in ids)

    # Resume after any frame: exactly the frames after it.
    for n in (0, cut - 1, len(parts) - 2):
        rest: list[Any] = []
        await asyncio.wait_for(_collect(await sdk.threads.join_stream(tid, last_event_id=ids[n]), rest, until=2 if n < cut - 1 else 1), 60)
        assert [(p.event, p.id, p.data) for p in rest] == [(p.event, p.id, p.data) for p in parts[n + 1:]]
    # -1 replays the thread from its start.
    replay: list[Any] = []
    await asyncio.wait_for(_collect(await sdk.threads.join_stream(tid, last_event_id="-1"), replay, until=2), 60)
    assert [(p.event, p.id) for p in replay] == [(p.event, p.id) for p in parts]


async def test_lifecycle_and_state_update_modes(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    lifecycle: list[Any] = []
    async def states() -> list[Any]:
        found = []
        async for part in await sdk.threads.join_stream(tid, stream_mode="state_update", last_event_id="-1"):
            found.append(part)
            if part.event == "state_update":
                return found
        return found
    follower = asyncio.get_running_loop().create_task(states())
    await sdk.threads.update_state(tid, {"messages": [{"type": "human", "content": "edited", "id": "edit-1"}]})
    (update,) = [p for p in await asyncio.wait_for(follower, 60) if p.event != "metadata"]
    assert update.data["thread_id"] == tid and update.data["state"]["values"]["messages"][-1]["content"] == "edited"
    assert update.data["state"]["checkpoint"]["checkpoint_id"] == (await sdk.threads.get_state(tid))["checkpoint"]["checkpoint_id"]
    await asyncio.wait_for(_collect(await sdk.threads.join_stream(tid, stream_mode="lifecycle", last_event_id="0"), lifecycle, until=1), 60)
    assert [p.event for p in lifecycle] == ["metadata", "metadata"] and lifecycle[1].data["status"] == "run_done"


async def test_without_last_event_id_a_thread_stream_starts_at_the_present(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    old = await sdk.runs.wait(tid, "demo", input=INPUT)
    assert old
    async with http.stream("GET", f"/threads/{tid}/stream") as answer:
        assert answer.status_code == 200  # the stream's start is fixed before the answer's first byte
        run = await sdk.runs.create(tid, "demo", input=INPUT)
        lines = answer.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                assert line == f'data: {{"run_id":"{run["run_id"]}","attempt":1}}'
                break


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"stream_mode": "values"}, {}, 422),
        ({"stream_modes": "run_modes,bogus"}, {}, 422),
        ({}, {"Last-Event-ID": "garbage"}, 422),
        ({}, {"Last-Event-ID": "12"}, 422),
        ({}, {"Last-Event-ID": "1:99999999"}, 422),
        ({}, {"Last-Event-ID": "99999999999999999999999:1"}, 422),
    ],
)
async def test_bad_thread_streams_are_refused_before_any_byte(
    sdk: LangGraphClient, http: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    thread = await sdk.threads.create()
    answer = await http.get(f"/threads/{thread['thread_id']}/stream", params=params, headers=headers)
    assert answer.status_code == status and "detail" in answer.json()


async def test_unknown_threads_are_not_streamed(http: httpx.AsyncClient) -> None:
    answer = await http.get("/threads/00000000-0000-0000-0000-000000000000/stream")
    assert answer.status_code == 404 and answer.json()["detail"].endswith("not found")
    assert (await http.get("/threads/nope/stream")).status_code == 422


async def test_a_thread_stream_beats_while_a_run_streams_nothing_it_carries(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    run = await sdk.runs.create(tid, "demo", input=INPUT, config={"configurable": {"tokens": 200, "token_delay": 0.02}}, stream_mode=["messages-tuple"])
    lines: list[str] = []
    async with http.stream("GET", f"/threads/{tid}/stream", params={"stream_modes": "lifecycle"}, headers={"Last-Event-ID": "-1"}) as answer:
        async for line in answer.aiter_lines():
            lines.append(line)
            if line.startswith("data: ") and "run_done" in line:
                break
    # Only lifecycle frames, and heartbeats in between while the tokens went by (the test server beats every 0.5 s).
    frames = [line for line in lines if line.startswith("event: ")]
    assert frames == ["event: metadata", "event: metadata"]
    assert ": heartbeat" in lines
    assert (await sdk.runs.get(tid, run["run_id"]))["status"] == "success"
