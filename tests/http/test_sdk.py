"""The official langgraph-sdk client, unchanged, against the server over real HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
SLOW = {"configurable": {"tokens": 300, "token_delay": 0.02}}


async def test_threads_create_and_get(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create(metadata={"user": "ada"})
    got = await sdk.threads.get(thread["thread_id"])
    assert got["thread_id"] == thread["thread_id"] and got["metadata"] == {"user": "ada"} and got["status"] == "idle"
    with pytest.raises(ConflictError):
        await sdk.threads.create(thread_id=thread["thread_id"])
    same = await sdk.threads.create(thread_id=thread["thread_id"], if_exists="do_nothing")
    assert same["thread_id"] == thread["thread_id"]
    with pytest.raises(NotFoundError):
        await sdk.threads.get("00000000-0000-0000-0000-000000000000")


async def test_stream_with_several_modes(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    parts = [p async for p in sdk.runs.stream(thread["thread_id"], "demo", input=INPUT, stream_mode=["values", "messages-tuple", "updates"])]
    assert parts[0].event == "metadata" and parts[0].id == "1"
    events = {p.event for p in parts}
    assert {"values", "messages", "updates"} <= events
    ids = [int(p.id) for p in parts]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    tokens = [p.data[0]["content"] for p in parts if p.event == "messages"]
    assert "".join(tokens).startswith("Let me count the words.")
    assert parts[-1].event == "values" and parts[-1].data["messages"][-1]["content"].startswith("Your message has 4 words.")
    run = (await sdk.runs.list(thread["thread_id"]))[0]
    assert run["status"] == "success" and run["run_id"] == parts[0].data["run_id"]


async def test_wait_returns_the_final_state_and_errors_as_data(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    values = await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT)
    assert [m["type"] for m in values["messages"]] == ["human", "ai", "tool", "ai"]
    failed = await sdk.runs.wait(
        thread["thread_id"], "demo", input=INPUT, config={"configurable": {"fail": "model down"}}, raise_error=False
    )
    assert failed == {"__error__": {"error": "RuntimeError", "message": "model down"}}
    stateless = await sdk.runs.wait(None, "demo", input=INPUT)
    assert len(stateless["messages"]) == 4


async def test_create_then_join_stream_and_get(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config=SLOW, stream_mode=["messages-tuple"])
    parts = [p async for p in sdk.runs.join_stream(thread["thread_id"], run["run_id"])]
    assert parts[0].event == "metadata"
    assert parts[-1].event == "messages"
    got = await sdk.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "success" and got["kwargs"]["stream_mode"] == ["messages-tuple"]
    assert await sdk.runs.join(thread["thread_id"], run["run_id"]) is not None


async def test_join_stream_resumes_after_a_cut_with_every_event_once(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config=SLOW, stream_mode=["messages-tuple", "values"])
    first: list[Any] = []
    async for part in sdk.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="-1"):
        first.append(part)
        if len(first) == 40:
            break  # the connection is cut mid-stream
    rest = [p async for p in sdk.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id=first[-1].id)]
    ids = [int(p.id) for p in first + rest]
    assert ids == sorted(set(ids))  # once each, in order
    replay = [p async for p in sdk.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="0")]
    assert [(p.event, p.id, p.data) for p in replay] == [(p.event, p.id, p.data) for p in first + rest]


@pytest.mark.parametrize("action", ["interrupt", "rollback"])
@pytest.mark.parametrize("wait", [True, False])
async def test_cancel(sdk: LangGraphClient, action: str, wait: bool) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config=SLOW, stream_mode=["messages-tuple"])
    async for part in sdk.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="0"):
        if part.event == "messages":
            break
    await sdk.runs.cancel(thread["thread_id"], run["run_id"], wait=wait, action=action)
    await sdk.runs.join(thread["thread_id"], run["run_id"])
    got = await sdk.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "interrupted"
    await sdk.runs.cancel(thread["thread_id"], run["run_id"])  # again: fine


async def test_list_runs_newest_first_with_filters(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    ids = [(await sdk.runs.create(thread["thread_id"], "demo", input=INPUT))["run_id"] for _ in range(3)]
    for run_id in ids:
        await sdk.runs.join(thread["thread_id"], run_id)
    runs = await sdk.runs.list(thread["thread_id"])
    assert [r["run_id"] for r in runs] == ids[::-1]
    assert [r["run_id"] for r in await sdk.runs.list(thread["thread_id"], limit=1, offset=1)] == [ids[1]]
    assert await sdk.runs.list(thread["thread_id"], status="error") == []


async def test_reject_is_a_conflict(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config=SLOW)
    with pytest.raises(ConflictError):
        await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, multitask_strategy="reject")
    await sdk.runs.cancel(thread["thread_id"], run["run_id"], wait=True)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/threads/not-a-uuid", None, 422),
        ("POST", "/threads", b"[1]", 422),
        ("POST", "/threads", b"{bad", 422),
        ("POST", "/threads/00000000-0000-0000-0000-000000000000/runs", {"assistant_id": "demo"}, 404),
        ("POST", "/runs/wait", {"assistant_id": "nope"}, 404),
        ("POST", "/runs/stream", {"assistant_id": "demo", "stream_mode": "bogus"}, 422),
        ("GET", "/threads/00000000-0000-0000-0000-000000000000/runs/00000000-0000-0000-0000-000000000000", None, 404),
        ("GET", "/threads/00000000-0000-0000-0000-000000000000/runs/00000000-0000-0000-0000-000000000000/stream", None, 404),
        ("POST", "/threads", {"metadata": "x" * 70_000}, 413),
        ("POST", "/threads", {"metadata": {"note": "a\u0000b"}}, 422),
        ("POST", "/runs/wait", {"assistant_id": "demo", "metadata": {"a\u0000": 1}}, 422),
        ("POST", "/runs/stream", {"assistant_id": "demo", "config": {"configurable": {"api_key": "\u0000"}}}, 422),
        ("DELETE", "/threads/00000000-0000-0000-0000-000000000000", None, 404),
        ("DELETE", "/threads/not-a-uuid", None, 422),
    ],
)
async def test_bad_input_gets_a_clear_4xx(http: httpx.AsyncClient, method: str, path: str, body: Any, status: int) -> None:
    content = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    response = await http.request(method, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)


async def test_heartbeats_while_a_run_is_quiet(http: httpx.AsyncClient, sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config={"configurable": {"tokens": 40, "token_delay": 0.05}})
    lines: list[str] = []
    async with http.stream("GET", f"/threads/{thread['thread_id']}/runs/{run['run_id']}/stream") as response:
        async for line in response.aiter_lines():
            lines.append(line)
    assert ": heartbeat" in lines  # only values are streamed, and the tokens take seconds
    await asyncio.sleep(0)


async def test_a_stream_abandoned_with_on_disconnect_cancel_cancels_the_run(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    stream = sdk.runs.stream(
        thread["thread_id"], "demo", input=INPUT, config=SLOW, stream_mode="messages-tuple", on_disconnect="cancel"
    )
    run_id = None
    async for part in stream:
        if part.event == "metadata":
            run_id = part.data["run_id"]
        if part.event == "messages":
            break
    await stream.aclose()
    assert run_id is not None
    await sdk.runs.join(thread["thread_id"], run_id)
    assert (await sdk.runs.get(thread["thread_id"], run_id))["status"] == "interrupted"


async def test_post_stream_with_a_cancel_action_cancels_then_streams_to_the_end(http: httpx.AsyncClient, sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config=SLOW, stream_mode="messages-tuple")
    async for part in sdk.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="0"):
        if part.event == "messages":
            break
    url = f"/threads/{thread['thread_id']}/runs/{run['run_id']}/stream?action=rollback"
    async with http.stream("POST", url, headers={"Last-Event-ID": "0"}) as response:
        assert response.status_code == 200
        body = (await response.aread()).decode()
    assert body.startswith("event: metadata\n")
    assert (await sdk.runs.get(thread["thread_id"], run["run_id"]))["status"] == "interrupted"
    bad = await http.post(f"/threads/{thread['thread_id']}/runs/{run['run_id']}/stream?action=explode")
    assert bad.status_code == 422 and "action must be one of" in bad.json()["detail"]


async def test_a_chunked_body_over_the_limit_is_refused_without_a_declared_length(http: httpx.AsyncClient) -> None:
    async def body() -> Any:
        for _ in range(100):
            yield b" " * 1024  # 100 KiB of whitespace, more than the 64 KiB limit, no Content-Length

    response = await http.post("/threads", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
