"""``POST /threads/{id}/copy`` through the official SDK: state, history and the copy's own record."""

from __future__ import annotations

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}


async def test_a_copy_has_the_state_and_history_of_its_source(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    source = await sdk.threads.create(metadata={"team": "blue"})
    tid = source["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    copy = await http.post(f"/threads/{tid}/copy")  # the SDK's copy() returns nothing: the body is the new thread
    assert copy.status_code == 200, copy.text
    cid = copy.json()["thread_id"]
    assert cid != tid and copy.json()["metadata"] == {"team": "blue"} and copy.json()["status"] == "idle"
    assert await sdk.threads.copy(tid) is not None  # the SDK's call works too

    got, want = await sdk.threads.get_state(cid), await sdk.threads.get_state(tid)
    assert got["values"] == want["values"] and got["checkpoint"]["checkpoint_id"] == want["checkpoint"]["checkpoint_id"]
    assert got["checkpoint"]["thread_id"] == cid and got["metadata"].get("thread_id") in (None, cid)
    history, source_history = await sdk.threads.get_history(cid, limit=100), await sdk.threads.get_history(tid, limit=100)
    assert len(history) == len(source_history) > 1
    assert [h["checkpoint"]["checkpoint_id"] for h in history] == [h["checkpoint"]["checkpoint_id"] for h in source_history]
    assert {h["checkpoint"]["thread_id"] for h in history} == {cid}

    # The copy's record: a run of the new thread, executed by its caller, that names its source.
    (run,) = await sdk.runs.list(cid)
    created = (await http.get(f"/threads/{cid}/runs/{run['run_id']}/events", params={"kinds": "run.created"})).json()["events"][0]["data"]
    assert created["command"] == "copy_thread" and created["copied_from"]["thread_id"] == tid
    assert created["copied_from"]["checkpoint_id"] == want["checkpoint"]["checkpoint_id"]
    assert created["copied_from"]["checkpoints"] == len(source_history)
    assert (await http.get(f"/threads/{cid}/runs/{run['run_id']}/verify")).json()["ok"]
    # Its messages read shows the copied messages.
    texts = [m["data"]["content"] for m in (await http.get(f"/threads/{cid}/messages")).json()["messages"]]
    assert texts == [m["content"] for m in want["values"]["messages"]]

    # The copy goes on by itself; the source is untouched.
    await sdk.runs.wait(cid, "demo", input=INPUT)
    assert len((await sdk.threads.get_state(cid))["values"]["messages"]) == 2 * len(want["values"]["messages"])
    assert (await sdk.threads.get_state(tid))["values"] == want["values"]


async def test_copying_a_thread_without_runs_gives_an_empty_thread(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    source = await sdk.threads.create()
    copy = (await http.post(f"/threads/{source['thread_id']}/copy")).json()
    state = await sdk.threads.get_state(copy["thread_id"])
    assert state["values"] == {} and state["checkpoint"] is None
    assert await sdk.threads.get_history(copy["thread_id"]) == []


async def test_bad_copies_are_refused_and_write_nothing(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    before = await sdk.threads.count()
    with pytest.raises(NotFoundError):
        await sdk.threads.copy("00000000-0000-0000-0000-000000000000")
    answer = await http.post("/threads/not-a-uuid/copy")
    assert answer.status_code == 422 and "thread_id" in answer.json()["detail"]
    gone = await sdk.threads.create()
    await sdk.threads.delete(gone["thread_id"])
    answer = await http.post(f"/threads/{gone['thread_id']}/copy")
    assert answer.status_code == 404 and answer.json() == {"detail": f"thread {gone['thread_id']} not found"}
    busy = await sdk.threads.create()
    await sdk.runs.create(busy["thread_id"], "demo", input=INPUT, config={"configurable": {"tokens": 300, "token_delay": 0.02}})
    answer = await http.post(f"/threads/{busy['thread_id']}/copy")
    assert answer.status_code == 409 and "active run" in answer.json()["detail"]
    assert await sdk.threads.count() == before + 1  # the busy thread only
