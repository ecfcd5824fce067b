"""Feedback on runs, recorded in the run's own log (even after it ended) and shown on its last AI message."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}


async def test_feedback_after_the_run_ended_is_in_its_log_and_on_its_last_ai_message(
    sdk: LangGraphClient, http: httpx.AsyncClient
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    (run,) = await sdk.runs.list(tid)
    rid = run["run_id"]
    path = f"/threads/{tid}/runs/{rid}/feedback"
    given = await http.post(path, json={"key": "helpful", "score": 1, "comment": "spot on"})
    assert given.status_code == 201, given.text
    body = given.json()
    assert (body["key"], body["score"], body["comment"], body["actor"], body["run_id"]) == ("helpful", 1, "spot on", None, rid)
    await http.post(path, json={"key": "tone", "score": 0.5})
    listed = (await http.get(path)).json()
    assert [(f["key"], f["score"], f["comment"]) for f in listed] == [("helpful", 1, "spot on"), ("tone", 0.5, None)]
    assert listed[0]["feedback_id"] == body["feedback_id"] and listed[0]["created_at"] <= listed[1]["created_at"]

    # The run stays finished; its chain goes on through the notes and still verifies.
    assert (await sdk.runs.get(tid, rid))["status"] == "success"
    assert (await sdk.threads.get(tid))["status"] == "idle"
    events = (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"kinds": "run.succeeded,note.*"})).json()["events"]
    assert [e["kind"] for e in events] == ["run.succeeded", "note.feedback", "note.feedback"]
    assert events[1]["data"]["key"] == "helpful" and events[1]["seq"] > events[0]["seq"]
    assert (await http.get(f"/threads/{tid}/runs/{rid}/verify")).json()["ok"]
    # Streams end at the terminal event: a replay carries no notes.
    replay = [p async for p in sdk.runs.join_stream(tid, rid, last_event_id="0")]
    assert replay and all(p.event != "note.feedback" for p in replay)

    # The messages reads show it on the run's last AI message only.
    for read in (f"/threads/{tid}/messages", f"/threads/{tid}/runs/{rid}/messages", f"/runs/{rid}/messages"):
        messages: list[dict[str, Any]] = (await http.get(read)).json()["messages"]
        last_ai = [m for m in messages if m["type"] == "ai"][-1]
        assert [f["key"] for f in last_ai["feedback"]] == ["helpful", "tone"], read
        assert all(m["feedback"] == [] for m in messages if m is not last_ai)


async def test_feedback_while_a_run_streams_joins_its_chain(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config={"configurable": {"tokens": 100, "token_delay": 0.01}})
    path = f"/threads/{thread['thread_id']}/runs/{run['run_id']}/feedback"
    assert (await http.post(path, json={"key": "early", "comment": "looks good so far"})).status_code == 201
    await sdk.runs.join(thread["thread_id"], run["run_id"])
    assert (await sdk.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"
    assert [f["key"] for f in (await http.get(path)).json()] == ["early"]
    assert (await http.get(f"/threads/{thread['thread_id']}/runs/{run['run_id']}/verify")).json()["ok"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "key must be"),
        ({"key": "", "score": 1}, "key must be"),
        ({"key": "k" * 201, "score": 1}, "key must be"),
        ({"key": 3, "score": 1}, "key must be"),
        ({"key": "k"}, "give a score, a comment or both"),
        ({"key": "k", "score": "high"}, "score must be a number"),
        ({"key": "k", "score": True}, "score must be a number"),
        ({"key": "k", "comment": 7}, "comment must be a string"),
        ({"key": "k", "score": 1, "rating": 5}, "unknown feedback fields"),
    ],
)
async def test_bad_feedback_is_refused_and_records_nothing(
    sdk: LangGraphClient, http: httpx.AsyncClient, body: dict[str, Any], detail: str
) -> None:
    thread = await sdk.threads.create()
    await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT)
    (run,) = await sdk.runs.list(thread["thread_id"])
    path = f"/threads/{thread['thread_id']}/runs/{run['run_id']}/feedback"
    answer = await http.post(path, json=body)
    assert answer.status_code == 422 and detail in answer.json()["detail"]
    assert (await http.get(path)).json() == []


async def test_feedback_on_unknown_runs_and_threads_is_404(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    zero = "00000000-0000-0000-0000-000000000000"
    for path in (f"/threads/{thread['thread_id']}/runs/{zero}/feedback", f"/threads/{zero}/runs/{zero}/feedback"):
        assert (await http.post(path, json={"key": "k", "score": 1})).status_code == 404
        assert (await http.get(path)).status_code == 404
    assert (await http.post(f"/threads/{thread['thread_id']}/runs/nope/feedback", json={"key": "k", "score": 1})).status_code == 422
    answer = await http.post(f"/threads/{thread['thread_id']}/runs/{zero}/feedback", content=b"not json")
    assert answer.status_code == 422
    await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT)
    (run,) = await sdk.runs.list(thread["thread_id"])
    await sdk.threads.delete(thread["thread_id"])
    answer = await http.post(f"/threads/{thread['thread_id']}/runs/{run['run_id']}/feedback", json={"key": "k", "score": 1})
    assert answer.status_code == 404



async def test_a_deleted_run_takes_no_feedback_and_keeps_what_it_had(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(thread_id, "demo", input=INPUT)
    (run,) = await sdk.runs.list(thread_id)
    path = f"/threads/{thread_id}/runs/{run['run_id']}/feedback"
    assert (await http.post(path, json={"key": "helpful", "score": 1})).status_code == 201
    await sdk.runs.delete(thread_id, run["run_id"])
    answer = await http.post(path, json={"key": "helpful", "score": 0})
    assert answer.status_code == 404 and "not found" in answer.json()["detail"]
    kept = (await http.get(path)).json()
    assert [(f["key"], f["score"]) for f in kept] == [("helpful", 1)]  # the record keeps what was given before
