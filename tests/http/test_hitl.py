"""Human in the loop beyond ``interrupt()``: breakpoints (``interrupt_before`` / ``interrupt_after``) and ``command`` ``goto`` / ``update``."""

from __future__ import annotations

import httpx
from langgraph_sdk.client import LangGraphClient

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
REVIEW = {"configurable": {"review": True}}


async def _terminal(http: httpx.AsyncClient, thread_id: str, run_id: str) -> dict:
    page = (await http.get(f"/threads/{thread_id}/runs/{run_id}/events", params={"kinds": "run.*"})).json()
    return dict(page["events"][-1])


async def test_a_breakpoint_before_a_node_stops_the_run_and_input_none_continues_it(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    run = await sdk.runs.create(thread_id, "demo", input=INPUT, interrupt_before=["tools"])
    await sdk.runs.join(thread_id, run["run_id"])
    assert (await sdk.runs.get(thread_id, run["run_id"]))["status"] == "interrupted"
    end = await _terminal(http, thread_id, run["run_id"])
    assert end["kind"] == "run.interrupted" and end["data"] == {"reason": "breakpoint"}
    assert (await sdk.threads.get(thread_id))["status"] == "interrupted"
    state = await sdk.threads.get_state(thread_id)
    assert state["next"] == ["tools"] and state["interrupts"] == []
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"]
    values = await sdk.runs.wait(thread_id, "demo", input=None)
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "tool", "ai"]
    assert (await sdk.threads.get(thread_id))["status"] == "idle"
    assert (await sdk.threads.get_state(thread_id))["next"] == []
    assert [r["status"] for r in await sdk.runs.list(thread_id)] == ["success", "interrupted"]


async def test_a_breakpoint_after_a_node(sdk: LangGraphClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    values = await sdk.runs.wait(thread_id, "demo", input=INPUT, interrupt_after=["agent"])
    assert [m["type"] for m in values["messages"]] == ["human", "ai"]
    assert (await sdk.threads.get(thread_id))["status"] == "interrupted"
    assert (await sdk.threads.get_state(thread_id))["next"] == ["review"]
    (run,) = await sdk.runs.list(thread_id)
    assert run["status"] == "interrupted" and run["kwargs"]["interrupt_after"] == ["agent"]


async def test_command_resume_with_update_and_goto(sdk: LangGraphClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(thread_id, "demo", input=INPUT, config=REVIEW)
    assert (await sdk.threads.get_state(thread_id))["next"] == ["review"]
    note = {"type": "human", "content": "one more word", "id": "note-1"}
    values = await sdk.runs.wait(thread_id, "demo", command={"resume": "yes", "update": {"messages": [note]}, "goto": "agent"}, config=REVIEW)
    kinds = [(m["type"], m.get("id")) for m in values["messages"]]
    assert ("human", "note-1") in kinds  # the update was applied
    assert (await sdk.threads.get(thread_id))["status"] in ("idle", "interrupted")
    runs = await sdk.runs.list(thread_id)
    assert runs[0]["kwargs"]["command"] == {"resume": "yes", "update": {"messages": [note]}, "goto": "agent"}


async def test_bad_commands_are_refused(http: httpx.AsyncClient, sdk: LangGraphClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    for command in ({"resume": 1, "foo": 2}, {}, "resume", [1]):
        response = await http.post(f"/threads/{thread_id}/runs/wait", json={"assistant_id": "demo", "command": command})
        assert response.status_code == 422, command
        assert "command" in response.json()["detail"]
    for breakpoints in (3, [1], {"a": 1}):
        response = await http.post(f"/threads/{thread_id}/runs/wait", json={"assistant_id": "demo", "interrupt_before": breakpoints})
        assert response.status_code == 422, breakpoints
    assert await sdk.runs.list(thread_id) == []
