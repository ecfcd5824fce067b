"""A thread's state and history through the official langgraph-sdk client: LangGraph's own snapshots, newest first."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
UNKNOWN = "00000000-0000-0000-0000-000000000000"
REVIEW = {"configurable": {"review": True}}


async def _thread_with_run(sdk: LangGraphClient, **run: Any) -> tuple[str, Any]:
    thread = await sdk.threads.create()
    values = await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT, **run)
    return thread["thread_id"], values


async def test_a_thread_without_runs_has_an_empty_state_and_no_history(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    state = await sdk.threads.get_state(thread["thread_id"])
    assert state["values"] == {} and state["next"] == [] and state["tasks"] == [] and state["checkpoint"] is None
    assert state["interrupts"] == [] and state["metadata"] is None
    assert await sdk.threads.get_history(thread["thread_id"]) == []


async def test_state_after_a_run_is_langgraph_s_and_matches_the_messages(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id, values = await _thread_with_run(sdk)
    state = await sdk.threads.get_state(thread_id)
    assert state["values"] == values
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai", "tool", "ai"]
    assert state["next"] == [] and state["tasks"] == [] and state["interrupts"] == []
    checkpoint = state["checkpoint"]
    assert checkpoint["thread_id"] == thread_id and checkpoint["checkpoint_ns"] == "" and checkpoint["checkpoint_id"]
    assert state["parent_checkpoint"]["checkpoint_id"] != checkpoint["checkpoint_id"]
    assert state["metadata"]["run_id"] and state["metadata"]["source"] == "loop"
    page = (await http.get(f"/threads/{thread_id}/messages")).json()
    assert [m["id"] for m in page["messages"]] == [m["id"] for m in state["values"]["messages"]]
    with_subgraphs = await sdk.threads.get_state(thread_id, subgraphs=True)
    assert with_subgraphs["checkpoint"] == checkpoint


async def test_state_at_an_older_checkpoint(sdk: LangGraphClient) -> None:
    thread_id, _ = await _thread_with_run(sdk)
    state = await sdk.threads.get_state(thread_id)
    parent = state["parent_checkpoint"]
    older = await sdk.threads.get_state(thread_id, checkpoint_id=parent["checkpoint_id"])
    assert older["checkpoint"]["checkpoint_id"] == parent["checkpoint_id"]
    assert older["next"] == ["agent"] and [t["name"] for t in older["tasks"]] == ["agent"]
    assert len(older["values"]["messages"]) == 3
    same = await sdk.threads.get_state(thread_id, checkpoint=parent)
    assert same == older


async def test_history_is_newest_first_with_limit_and_before(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id, _ = await _thread_with_run(sdk)
    everything = await sdk.threads.get_history(thread_id, limit=100)
    ids = [s["checkpoint"]["checkpoint_id"] for s in everything]
    assert len(ids) >= 5 and ids == sorted(ids, reverse=True)
    assert everything[0] == await sdk.threads.get_state(thread_id)
    steps = [s["metadata"]["step"] for s in everything]
    assert steps == sorted(steps, reverse=True)
    pages: list[str] = []
    before: Any = None
    while True:
        page = await sdk.threads.get_history(thread_id, limit=2, before=before)
        if not page:
            break
        assert len(page) <= 2
        pages += [s["checkpoint"]["checkpoint_id"] for s in page]
        before = page[-1]["checkpoint"]
    assert pages == ids
    by_get = (await http.get(f"/threads/{thread_id}/history", params={"limit": 2, "before": ids[1]})).json()
    assert [s["checkpoint"]["checkpoint_id"] for s in by_get] == ids[2:4]
    inputs = await sdk.threads.get_history(thread_id, metadata={"source": "input"})
    assert [s["metadata"]["source"] for s in inputs] == ["input"]


async def test_bad_inputs(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id, _ = await _thread_with_run(sdk)
    with pytest.raises(NotFoundError):
        await sdk.threads.get_state(UNKNOWN)
    with pytest.raises(NotFoundError):
        await sdk.threads.get_history(UNKNOWN)
    with pytest.raises(NotFoundError):
        await sdk.threads.get_state(thread_id, checkpoint_id="1f000000-0000-6000-8000-000000000000")
    assert (await http.get(f"/threads/{thread_id}/state/not-a-checkpoint")).status_code == 422
    assert (await http.get(f"/threads/{thread_id}/history", params={"limit": 0})).status_code == 422
    assert (await http.get(f"/threads/{thread_id}/history", params={"before": "x"})).status_code == 422
    for body in ({"limit": "x"}, {"limit": True}, {"metadata": []}, {"before": 3}, {"checkpoint": {"checkpoint_id": 1}}, {"metadata": {"a": "\u0000"}}):
        assert (await http.post(f"/threads/{thread_id}/history", json=body)).status_code == 422, body
    assert (await http.post(f"/threads/{thread_id}/state/checkpoint", json={"checkpoint": {}})).status_code == 422
    assert (await http.post(f"/threads/{thread_id}/history", content=b"[1]")).status_code == 422
