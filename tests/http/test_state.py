"""A thread's state and history through the official langgraph-sdk client: LangGraph's own snapshots, newest first."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
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


async def test_update_state_is_recorded_as_a_run_of_the_thread(sdk: LangGraphClient, http: httpx.AsyncClient, conn: asyncpg.Connection) -> None:
    thread_id, _ = await _thread_with_run(sdk)
    before = await sdk.threads.get_state(thread_id)
    added = {"type": "human", "content": "and one more thing", "id": "added-1"}
    updated = await sdk.threads.update_state(thread_id, {"messages": [added]}, as_node="tools")
    assert updated["checkpoint"]["checkpoint_id"] != before["checkpoint"]["checkpoint_id"]
    state = await sdk.threads.get_state(thread_id)
    assert state["checkpoint"]["checkpoint_id"] == updated["checkpoint"]["checkpoint_id"]
    assert state["values"]["messages"][-1]["id"] == "added-1" and state["next"] == ["agent"]
    assert state["metadata"]["source"] == "update"

    runs = await sdk.runs.list(thread_id)
    run = runs[0]
    assert run["status"] == "success" and run["kwargs"]["command"] == "update_state"
    assert run["kwargs"]["as_node"] == "tools"
    assert state["metadata"]["run_id"] == run["run_id"]
    events = (await http.get(f"/threads/{thread_id}/runs/{run['run_id']}/events")).json()["events"]
    assert [e["kind"] for e in events] == ["run.created", "run.started", "stream:updates", "stream:values", "run.succeeded"]
    assert events[0]["data"]["values"] == {"messages": [added]} and events[0]["data"]["executor"] == "caller"
    transactions = await conn.fetchval(
        "SELECT count(DISTINCT tx) FROM events WHERE run_id = $1 AND seq <= 2", UUID(run["run_id"])
    )
    assert transactions == 1  # created and started at once: never pending with no one to start it
    assert events[2]["data"] == {"tools": {"messages": [added]}}
    assert events[-1]["data"]["checkpoint"]["checkpoint_id"] == updated["checkpoint_id"]
    verified = (await http.get(f"/threads/{thread_id}/runs/{run['run_id']}/verify")).json()
    assert verified["ok"] and verified["events"] == 5
    page = (await http.get(f"/threads/{thread_id}/messages", params={"last": "true", "limit": 1})).json()
    assert page["messages"][0]["id"] == "added-1" and page["messages"][0]["run_id"] == run["run_id"]
    thread = await sdk.threads.get(thread_id)
    assert thread["values"] == state["values"] and thread["updated_at"] >= run["updated_at"]

    # The next run continues from the updated state.
    values = await sdk.runs.wait(thread_id, "demo", input=None)
    assert values["messages"][len(state["values"]["messages"])]["type"] == "ai"


async def test_update_state_refusals(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id, _ = await _thread_with_run(sdk)
    fresh = await sdk.threads.create()
    assert (await http.post(f"/threads/{UNKNOWN}/state", json={"values": {}})).status_code == 404
    assert (await http.post(f"/threads/{fresh['thread_id']}/state", json={"values": {}})).status_code == 409
    refused = await http.post(f"/threads/{thread_id}/state", json={"values": {"messages": []}, "as_node": "nowhere"})
    assert refused.status_code == 422
    failed = (await sdk.runs.list(thread_id))[0]
    assert failed["status"] == "error" and failed["kwargs"]["command"] == "update_state"
    assert (await http.post(f"/threads/{thread_id}/state", json={"as_node": 3})).status_code == 422
    assert (await http.post(f"/threads/{thread_id}/state", json={"checkpoint_id": "x"})).status_code == 422
    assert (await sdk.threads.get(thread_id))["status"] == "error"  # the refused update is the latest run


async def test_human_in_the_loop(sdk: LangGraphClient) -> None:
    thread_id, _ = await _thread_with_run(sdk, config=REVIEW)
    thread = await sdk.threads.get(thread_id)
    assert thread["status"] == "interrupted"
    state = await sdk.threads.get_state(thread_id)
    assert state["next"] == ["review"]
    (task,) = state["tasks"]
    assert task["name"] == "review" and task["interrupts"][0]["value"]["question"] == "Run these tool calls?"
    assert state["interrupts"] == task["interrupts"]
    assert thread["interrupts"] == {task["id"]: task["interrupts"]}
    values = await sdk.runs.wait(thread_id, "demo", command={"resume": "yes"}, config=REVIEW)
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "tool", "ai"]
    after = await sdk.threads.get_state(thread_id)
    assert after["next"] == [] and after["interrupts"] == [] and after["values"] == values
    assert (await sdk.threads.get(thread_id))["status"] == "idle"
