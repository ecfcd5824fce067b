"""Stream mode ``events`` (LangChain's astream_events, as the LangGraph API streams it), ``custom``, and subgraph namespaces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from graphledger.http.app import create_app
from graphledger.runs import GraphRegistry, RunSettings, demo
from tests.http import nested
from tests.http.conftest import serve

INPUT = {"messages": [{"type": "human", "content": "hi", "id": "h1"}]}


@pytest.fixture(scope="module")
async def base_url(dsn: str) -> AsyncIterator[str]:
    app = create_app(
        dsn,
        graphs=GraphRegistry({"demo": demo.graph, "nested": nested.graph}),
        settings=RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        heartbeat_seconds=0.5,
    )
    async with serve(app) as url:
        yield url


def _names(parts: list[Any]) -> list[tuple[str, Any]]:
    return [(p.event, p.data.get("event") if p.event == "events" else None) for p in parts]


async def test_events_stream_the_graph_s_callbacks_and_keep_the_other_modes(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    parts = [p async for p in sdk.runs.stream(thread["thread_id"], "nested", input=INPUT, stream_mode=["events", "custom"])]
    run_id = parts[0].data["run_id"]
    events = [p.data for p in parts if p.event == "events"]
    assert [(e["event"], e["name"]) for e in events][0] == ("on_chain_start", "nested")  # the graph's name
    assert events[0]["run_id"] == run_id and events[0]["parent_ids"] == []  # the root is the run, as in the reference
    assert events[-1]["event"] == "on_chain_end" and events[-1]["run_id"] == run_id
    assert [m["content"] for m in events[-1]["data"]["output"]["messages"]] == ["hi", "from inner", "outer done"]
    names = {(e["event"], e["name"]) for e in events}
    assert {("on_chain_start", "child"), ("on_chain_start", "inner"), ("on_chain_stream", "outer"), ("on_chain_end", "outer")} <= names
    assert all(not (e["event"] == "on_chain_stream" and e["parent_ids"] == []) for e in events)  # the root's parts are not events
    assert set(events[0]) >= {"event", "name", "run_id", "tags", "metadata", "data", "parent_ids"}
    # custom works beside events; without subgraphs only the root's custom chunks are streamed.
    assert [p.data for p in parts if p.event.startswith("custom")] == [{"outer": 1}]
    assert {p.event for p in parts} == {"metadata", "events", "custom"}
    # A replay is the same stream.
    replay = [p async for p in sdk.runs.join_stream(thread["thread_id"], run_id, last_event_id="0")]
    assert [(p.event, p.data) for p in replay] == [(p.event, p.data) for p in parts]


async def test_subgraph_parts_are_namespaced_by_their_task(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    parts = [
        p async for p in sdk.runs.stream(
            thread["thread_id"], "nested", input=INPUT, stream_mode=["updates", "custom", "events"], stream_subgraphs=True
        )
    ]
    names = [p.event for p in parts if p.event != "events"]
    namespaced = [n for n in names if "|" in n]
    assert namespaced and all(n.split("|", 1)[1].startswith("child:") for n in namespaced)
    task = namespaced[0].split("|", 1)[1]
    assert f"custom|{task}" in names and f"updates|{task}" in names
    assert [p.data for p in parts if p.event == f"custom|{task}"] == [{"inner": "hello"}]
    assert [p.data for p in parts if p.event == "custom"] == [{"outer": 1}]
    assert [list(p.data) for p in parts if p.event == f"updates|{task}"] == [["inner"]]
    assert [list(p.data) for p in parts if p.event == "updates"] == [["child"], ["outer"]]
    assert all(p.event == "events" for p in parts if p.event.startswith("events"))  # events are never namespaced
    # Without stream_subgraphs, no namespaces.
    flat = [p.event async for p in sdk.runs.stream(thread["thread_id"], "nested", input=INPUT, stream_mode=["updates", "custom"])]
    assert all("|" not in n for n in flat) and "custom" in flat


async def test_events_of_a_chat_model_stream_its_tokens(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    parts = [
        p async for p in sdk.runs.stream(
            thread["thread_id"], "demo", input={"messages": [{"role": "user", "content": "count these words please"}]}, stream_mode="events"
        )
    ]
    tokens = [p.data["data"]["chunk"]["content"] for p in parts if p.event == "events" and p.data["event"] == "on_chat_model_stream"]
    assert "".join(tokens).startswith("Let me count the words.")
    usage = await sdk.threads.get(thread["thread_id"])
    assert usage["status"] == "idle"


async def test_bad_stream_modes_are_refused(http: httpx.AsyncClient) -> None:
    thread = (await http.post("/threads", json={})).json()
    for mode in ("event", ["events", ""], ["events", 3]):
        answer = await http.post(f"/threads/{thread['thread_id']}/runs/stream", json={"assistant_id": "nested", "stream_mode": mode})
        assert answer.status_code == 422 and "stream_mode" in answer.json()["detail"], mode
