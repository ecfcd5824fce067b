"""Run creation through the official langgraph-sdk client: time travel, delayed runs, stateless runs and batches."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
OTHER = {"messages": [{"role": "user", "content": "two words"}]}
THIRD = {"messages": [{"role": "user", "content": "three more words"}]}
HOUR = 3600
SLOW = {"configurable": {"tokens": 300, "token_delay": 0.02}}


def contents(state: dict[str, Any]) -> list[str]:
    return [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]


async def events(http: httpx.AsyncClient, thread_id: str, run_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/threads/{thread_id}/runs/{run_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


async def history(sdk: LangGraphClient, thread_id: str) -> list[dict[str, Any]]:
    return list(await sdk.threads.get_history(thread_id, limit=100))


async def final_checkpoint(sdk: LangGraphClient, thread_id: str, run_id: str) -> str:
    """The last checkpoint run ``run_id`` wrote on the thread."""
    states = [s for s in await history(sdk, thread_id) if s["metadata"].get("run_id") == run_id]
    assert states, f"run {run_id} wrote no checkpoint"
    checkpoint_id: str = states[0]["checkpoint"]["checkpoint_id"]  # newest first
    return checkpoint_id


# -- time travel ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["checkpoint_id", "checkpoint"])
async def test_a_run_from_an_earlier_checkpoint_forks_the_threads_history(sdk: LangGraphClient, http: httpx.AsyncClient, how: str) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    first = await sdk.runs.create(thread_id, "demo", input=INPUT)
    await sdk.runs.join(thread_id, first["run_id"])
    second = await sdk.runs.create(thread_id, "demo", input=OTHER)
    await sdk.runs.join(thread_id, second["run_id"])
    assert contents(await sdk.threads.get_state(thread_id)) == [INPUT["messages"][0]["content"], OTHER["messages"][0]["content"]]
    fork_at = await final_checkpoint(sdk, thread_id, first["run_id"])
    before = {s["checkpoint"]["checkpoint_id"] for s in await history(sdk, thread_id)}

    where: dict[str, Any] = {"checkpoint_id": fork_at} if how == "checkpoint_id" else {"checkpoint": {"checkpoint_id": fork_at, "checkpoint_ns": ""}}
    values = await sdk.runs.wait(thread_id, "demo", input=THIRD, **where)

    # The fork continues from the first run's state: the second run's messages are not in it.
    assert [m["content"] for m in values["messages"] if m["type"] == "human"] == [INPUT["messages"][0]["content"], THIRD["messages"][0]["content"]]
    state = await sdk.threads.get_state(thread_id)
    assert contents(state) == [INPUT["messages"][0]["content"], THIRD["messages"][0]["content"]]
    # History shows the fork: the new checkpoints descend from the chosen one, and the second run's are still there.
    states = await history(sdk, thread_id)
    new = [s for s in states if s["checkpoint"]["checkpoint_id"] not in before]
    assert new and {s["checkpoint"]["checkpoint_id"] for s in states} >= before
    oldest_new = new[-1]
    assert oldest_new["parent_checkpoint"]["checkpoint_id"] == fork_at
    by_id = {s["checkpoint"]["checkpoint_id"]: s for s in states}
    chain, at = [], state["checkpoint"]["checkpoint_id"]
    while at is not None:
        chain.append(at)
        parent = by_id[at]["parent_checkpoint"]
        at = parent["checkpoint_id"] if parent else None
    assert fork_at in chain and not set(chain) & {s["checkpoint"]["checkpoint_id"] for s in states if s["metadata"].get("run_id") == second["run_id"]}
    # The ledger records where the run started.
    runs = await sdk.runs.list(thread_id, limit=1)
    created = (await events(http, thread_id, runs[0]["run_id"]))[0]
    assert created["kind"] == "run.created"
    assert created["data"]["config"]["configurable"]["checkpoint_id"] == fork_at
    assert runs[0]["kwargs"]["config"]["configurable"]["checkpoint_id"] == fork_at


async def test_an_unknown_or_malformed_checkpoint_is_refused_and_nothing_is_admitted(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(thread_id, "demo", input=INPUT)
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await sdk.runs.create(thread_id, "demo", input=INPUT, checkpoint_id=unknown)
    with pytest.raises(httpx.HTTPStatusError) as refused:  # the SDK's wait and stream raise httpx's error
        await sdk.runs.wait(thread_id, "demo", input=INPUT, checkpoint={"checkpoint_id": unknown})
    assert refused.value.response.status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as refused:
        async for _ in sdk.runs.stream(thread_id, "demo", input=INPUT, checkpoint_id=unknown):
            pass
    assert refused.value.response.status_code == 404
    bad: list[dict[str, Any]] = [
        {"checkpoint_id": "not-a-uuid"},
        {"checkpoint_id": 5},
        {"checkpoint": "x"},
        {"checkpoint": [1]},
        {"checkpoint": {"checkpoint_id": "nope"}},
        {"checkpoint": {"checkpoint_id": unknown, "checkpoint_ns": "agent:1"}},
        {"checkpoint": {"checkpoint_id": unknown}, "checkpoint_id": str(uuid.uuid4())},
        {"config": {"configurable": {"checkpoint_id": "nope"}}},
    ]
    for extra in bad:
        for path in (f"/threads/{thread_id}/runs", f"/threads/{thread_id}/runs/stream", f"/threads/{thread_id}/runs/wait"):
            response = await http.post(path, json={"assistant_id": "demo", "input": INPUT, **extra})
            assert response.status_code == 422, (extra, response.text)
            assert isinstance(response.json()["detail"], str)
    # A stateless run's new thread has no checkpoints to start from.
    response = await http.post("/runs/wait", json={"assistant_id": "demo", "input": INPUT, "checkpoint_id": unknown})
    assert response.status_code == 422, response.text
    assert len(await sdk.runs.list(thread_id)) == 1


async def test_a_run_whose_checkpoint_a_rollback_removed_fails_rather_than_start_from_nothing(sdk: LangGraphClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(thread_id, "demo", input=INPUT)
    slow = await sdk.runs.create(thread_id, "demo", input=OTHER, config=SLOW, stream_mode=["messages-tuple"])
    async for part in sdk.runs.join_stream(thread_id, slow["run_id"], last_event_id="0"):
        if part.event == "messages":
            break  # it has written checkpoints by now
    fork_at = await final_checkpoint(sdk, thread_id, slow["run_id"])
    # Admitted (the checkpoint exists), then the rollback the same admission asks for removes it.
    values = await sdk.runs.wait(thread_id, "demo", input=THIRD, checkpoint_id=fork_at, multitask_strategy="rollback", raise_error=False)
    assert values["__error__"]["error"] == "CheckpointNotFound"
    assert (await sdk.runs.get(thread_id, slow["run_id"]))["status"] == "interrupted"
    assert contents(await sdk.threads.get_state(thread_id)) == [INPUT["messages"][0]["content"]]


# -- delayed runs ----------------------------------------------------------------------


async def test_a_delayed_run_stays_pending_and_can_be_cancelled_before_it_is_due(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    run = await sdk.runs.create(thread_id, "demo", input=INPUT, after_seconds=HOUR)
    assert run["status"] == "pending"
    later = await sdk.runs.create(thread_id, "demo", input=OTHER)  # admitted after it: waits behind it
    await asyncio.sleep(1.0)  # several claim polls (0.2 s) of four idle workers
    assert (await sdk.runs.get(thread_id, run["run_id"]))["status"] == "pending"
    assert (await sdk.runs.get(thread_id, later["run_id"]))["status"] == "pending"
    await sdk.runs.cancel(thread_id, run["run_id"])
    assert (await sdk.runs.get(thread_id, run["run_id"]))["status"] == "interrupted"
    kinds = [e["kind"] for e in await events(http, thread_id, run["run_id"])]
    assert kinds == ["run.created", "run.cancel_requested", "run.interrupted"]  # never started
    await sdk.runs.join(thread_id, later["run_id"])  # the queue moves on
    assert (await sdk.runs.get(thread_id, later["run_id"]))["status"] == "success"


async def test_a_delayed_run_starts_once_it_is_due(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    run = await sdk.runs.create(thread_id, "demo", input=INPUT, after_seconds=1)
    assert run["kwargs"]["after_seconds"] == 1
    await sdk.runs.join(thread_id, run["run_id"])
    assert (await sdk.runs.get(thread_id, run["run_id"]))["status"] == "success"
    found = await events(http, thread_id, run["run_id"])
    created, started = found[0], next(e for e in found if e["kind"] == "run.started")
    assert created["data"]["after_seconds"] == 1
    assert datetime.fromisoformat(started["ts"]) >= datetime.fromisoformat(created["ts"]) + timedelta(seconds=1)


async def test_bad_delays_are_refused(http: httpx.AsyncClient, sdk: LangGraphClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    for value in [-1, "10", True, 10**9, [1]]:
        response = await http.post(f"/threads/{thread_id}/runs", json={"assistant_id": "demo", "input": INPUT, "after_seconds": value})
        assert response.status_code == 422, (value, response.text)
    assert await sdk.runs.list(thread_id) == []


# -- stateless runs ---------------------------------------------------------------------


async def _deletions(http: httpx.AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/threads/{thread_id}/runs", params={"limit": 100})
    assert response.status_code == 200, response.text
    return [r for r in response.json() if r["kwargs"].get("command") == "delete_thread"]


async def test_a_stateless_background_run_deletes_its_thread_when_it_ends(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    run = await sdk.runs.create(None, "demo", input=INPUT)
    assert run["status"] == "pending" and run["kwargs"]["on_completion"] == "delete"
    thread_id = run["thread_id"]
    await sdk.runs.join(thread_id, run["run_id"])
    with pytest.raises(NotFoundError):
        await sdk.threads.get(thread_id)
    # The record stays: the run, its events, and who deleted the thread and why.
    assert (await sdk.runs.get(thread_id, run["run_id"]))["status"] == "success"
    (deletion,) = await _deletions(http, thread_id)
    assert deletion["kwargs"]["reason"] == "on_completion" and deletion["kwargs"]["by_run_id"] == run["run_id"]
    assert (await http.get(f"/threads/{thread_id}/runs/{run['run_id']}/verify")).json()["ok"] is True


@pytest.mark.parametrize("how", ["create", "wait", "stream"])
async def test_on_completion_keep_keeps_the_thread_and_delete_is_the_default(sdk: LangGraphClient, http: httpx.AsyncClient, how: str) -> None:
    for on_completion in ("keep", None):
        options: dict[str, Any] = {"on_completion": on_completion} if on_completion else {}
        if how == "create":
            run = await sdk.runs.create(None, "demo", input=INPUT, **options)
            thread_id, run_id = run["thread_id"], run["run_id"]
            await sdk.runs.join(thread_id, run_id)
        elif how == "wait":
            response = await http.post("/runs/wait", json={"assistant_id": "demo", "input": INPUT, **options})
            assert response.status_code == 200 and len(response.json()["messages"]) == 4
            thread_id, run_id = response.headers["content-location"].split("/")[2::2]
        else:
            async with http.stream("POST", "/runs/stream", json={"assistant_id": "demo", "input": INPUT, **options}) as response:
                assert response.status_code == 200
                frames = b"".join([chunk async for chunk in response.aiter_bytes()])
            assert b"event: values" in frames
            thread_id, run_id = response.headers["content-location"].split("/")[2::2]
        if on_completion == "keep":
            kept = await sdk.threads.get(thread_id)
            assert kept["status"] == "idle"
            assert len((await sdk.threads.get_state(thread_id))["values"]["messages"]) == 4
            assert await _deletions(http, thread_id) == []
        else:
            with pytest.raises(NotFoundError):
                await sdk.threads.get(thread_id)
            assert len(await _deletions(http, thread_id)) == 1


async def test_cancelling_a_pending_stateless_run_deletes_its_thread(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    run = await sdk.runs.create(None, "demo", input=INPUT, after_seconds=HOUR)
    await sdk.runs.cancel(run["thread_id"], run["run_id"])
    with pytest.raises(NotFoundError):
        await sdk.threads.get(run["thread_id"])
    assert len(await _deletions(http, run["thread_id"])) == 1


async def test_on_completion_is_ignored_for_a_threads_own_run(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread_id = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(thread_id, "demo", input=INPUT, on_completion="delete")
    assert (await sdk.threads.get(thread_id))["status"] == "idle"
    assert "on_completion" not in (await sdk.runs.list(thread_id))[0]["kwargs"]


async def test_bad_stateless_runs_are_refused(http: httpx.AsyncClient) -> None:
    for body in [
        {"assistant_id": "demo", "on_completion": "later"},
        {"assistant_id": "demo", "on_completion": 1},
        {"assistant_id": "demo", "stream_mode": "bogus"},
        {"input": INPUT},
    ]:
        response = await http.post("/runs", json=body)
        assert response.status_code == 422, (body, response.text)
    response = await http.post("/runs", json={"assistant_id": "nope"})
    assert response.status_code == 404, response.text
    response = await http.post("/runs", content=b"[1]", headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


# -- batches ----------------------------------------------------------------------------


async def test_a_batch_creates_stateless_runs(sdk: LangGraphClient) -> None:
    runs = await sdk.runs.create_batch([
        {"assistant_id": "demo", "input": INPUT},
        {"assistant_id": "demo", "input": OTHER, "on_completion": "keep", "metadata": {"n": 2}},
    ])
    assert [r["status"] for r in runs] == ["pending", "pending"]
    assert len({r["thread_id"] for r in runs}) == 2 and runs[1]["metadata"] == {"n": 2}
    for run in runs:
        await sdk.runs.join(run["thread_id"], run["run_id"])
    with pytest.raises(NotFoundError):
        await sdk.threads.get(runs[0]["thread_id"])
    kept = await sdk.threads.get_state(runs[1]["thread_id"])
    assert kept["values"]["messages"][0]["content"] == OTHER["messages"][0]["content"]


async def test_one_bad_item_refuses_the_whole_batch(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    threads = await sdk.threads.count()
    good = {"assistant_id": "demo", "input": INPUT, "on_completion": "keep", "after_seconds": HOUR}
    bad_items: list[Any] = [
        {"assistant_id": "nope"},
        {"input": INPUT},
        5,
        {"assistant_id": "demo", "stream_mode": "bogus"},
        {"assistant_id": "demo", "checkpoint_id": str(uuid.uuid4())},
        {"assistant_id": "demo", "after_seconds": -1},
    ]
    for bad in bad_items:
        response = await http.post("/runs/batch", json=[good, bad])
        assert response.status_code in (404, 422), (bad, response.text)
        assert response.json()["detail"].startswith("run request 1: "), response.text
    with pytest.raises(UnprocessableEntityError):
        await sdk.runs.create_batch([good, {"assistant_id": "demo", "on_completion": "never"}])
    for body in (b"[]", b"{}", b"", b"[1", json.dumps([good] * 1001).encode()):
        response = await http.post("/runs/batch", content=body, headers={"content-type": "application/json"})
        assert response.status_code in (413, 422), (body[:20], response.text)
    # Nothing of any refused batch was admitted: not one thread more.
    assert await sdk.threads.count() == threads
