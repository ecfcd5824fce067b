"""Threads through the official langgraph-sdk client: search, count, update, and get with the thread's state."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

from graphledger import projections
from graphledger.projections import Projections
from graphledger.projections.read import ThreadView

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
UNKNOWN = "00000000-0000-0000-0000-000000000000"


async def test_get_has_the_values_and_updated_at_moves_with_runs_and_metadata(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create(metadata={"user": "ada", "nested": {"a": 1}})
    assert thread["values"] is None and thread["interrupts"] == {}
    created = thread["updated_at"]
    values = await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT)
    after_run = await sdk.threads.get(thread["thread_id"])
    assert after_run["values"] == values and after_run["status"] == "idle"
    assert after_run["updated_at"] > created and after_run["created_at"] == thread["created_at"]
    await asyncio.sleep(0.01)
    updated = await sdk.threads.update(thread["thread_id"], metadata={"nested": {"b": 2}, "topic": "words"})
    assert updated["metadata"] == {"user": "ada", "nested": {"b": 2}, "topic": "words"}  # a shallow merge
    assert updated["updated_at"] > after_run["updated_at"]
    assert (await sdk.threads.get(thread["thread_id"]))["metadata"] == updated["metadata"]
    with pytest.raises(NotFoundError):
        await sdk.threads.update(UNKNOWN, metadata={"a": 1})


async def test_search_and_count_by_metadata_status_and_ids_sorted_and_paged(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex
    made = [await sdk.threads.create(metadata={"tag": tag, "n": n, "even": n % 2 == 0}) for n in range(5)]
    ids = [t["thread_id"] for t in made]
    await sdk.runs.wait(ids[1], "demo", input=INPUT)
    await sdk.runs.wait(ids[3], "demo", input=INPUT, config={"configurable": {"fail": "no"}}, raise_error=False)
    await sdk.runs.wait(ids[4], "demo", input=INPUT, config={"configurable": {"review": True}})

    found = await sdk.threads.search(metadata={"tag": tag}, limit=10)
    assert [t["thread_id"] for t in found] == ids[::-1]  # newest first by default
    assert {t["thread_id"]: t["status"] for t in found} == {ids[0]: "idle", ids[1]: "idle", ids[2]: "idle", ids[3]: "error", ids[4]: "interrupted"}
    assert await sdk.threads.count(metadata={"tag": tag}) == 5
    assert await sdk.threads.count(metadata={"tag": tag, "even": True}) == 3
    even = await sdk.threads.search(metadata={"tag": tag, "even": True}, sort_by="created_at", sort_order="asc")
    assert [t["thread_id"] for t in even] == [ids[0], ids[2], ids[4]]
    assert [t["thread_id"] for t in await sdk.threads.search(metadata={"tag": tag}, status="error")] == [ids[3]]
    assert await sdk.threads.count(metadata={"tag": tag}, status="interrupted") == 1
    interrupted = (await sdk.threads.search(metadata={"tag": tag}, status="interrupted"))[0]
    (pending,) = interrupted["interrupts"].values()
    assert pending[0]["value"]["question"] == "Run these tool calls?"

    pages = []
    for offset in range(0, 5, 2):
        pages += await sdk.threads.search(metadata={"tag": tag}, limit=2, offset=offset, sort_by="thread_id", sort_order="asc")
    assert [t["thread_id"] for t in pages] == sorted(ids)
    by_update = await sdk.threads.search(metadata={"tag": tag}, sort_by="updated_at", sort_order="desc", limit=3)
    assert [t["thread_id"] for t in by_update] == [ids[4], ids[3], ids[1]]  # the threads whose runs ended last
    by_status = await sdk.threads.search(metadata={"tag": tag}, sort_by="status", sort_order="asc")
    assert [t["status"] for t in by_status] == sorted(t["status"] for t in by_status)
    selected = await sdk.threads.search(ids=[ids[0], ids[1]], select=["thread_id", "status"])
    assert sorted(selected, key=lambda t: t["thread_id"]) == sorted(
        [{"thread_id": ids[0], "status": "idle"}, {"thread_id": ids[1], "status": "idle"}], key=lambda t: t["thread_id"]
    )

    deleted = await sdk.threads.create(metadata={"tag": tag})
    await sdk.threads.delete(deleted["thread_id"])
    assert await sdk.threads.count(metadata={"tag": tag}) == 5

    for body in (
        {"sort_by": "nope"}, {"sort_order": "up"}, {"status": "nope"}, {"limit": 0}, {"limit": "x"}, {"offset": -1},
        {"select": ["nope"]}, {"select": []}, {"metadata": []}, {"ids": ["x"]}, {"values": {"messages": []}},
        {"metadata": {"a": "\u0000"}},
    ):
        assert (await http.post("/threads/search", json=body)).status_code == 422, body
    assert (await http.post("/threads/count", json={"status": "nope"})).status_code == 422
    assert (await http.patch(f"/threads/{ids[0]}", json={"metadata": []})).status_code == 422
    assert (await http.patch(f"/threads/{ids[0]}", content=b"")).status_code == 422


async def test_the_sql_status_agrees_with_the_projection_s_rule(sdk: LangGraphClient, dsn: str) -> None:
    tag = uuid.uuid4().hex
    ids = [(await sdk.threads.create(metadata={"rule": tag}))["thread_id"] for _ in range(3)]
    await sdk.runs.wait(ids[0], "demo", input=INPUT, config={"configurable": {"fail": "x"}}, raise_error=False)
    await sdk.runs.wait(ids[0], "demo", input=INPUT)  # the latest run decides: idle again
    run = await sdk.runs.create(ids[1], "demo", input=INPUT, config={"configurable": {"tokens": 200, "token_delay": 0.02}})
    ledger = await projections.connect(dsn, tail=False)
    try:
        reads = Projections(ledger)
        views: list[ThreadView] = await reads.search_threads(metadata={"rule": tag})
        assert {str(v.thread.thread_id): v.status for v in views} == {i: await reads.thread_status(uuid.UUID(i)) for i in ids}
        assert {str(v.thread.thread_id): v.status for v in views}[ids[1]] == "busy"
    finally:
        await ledger.close()
    await sdk.runs.cancel(ids[1], run["run_id"], wait=True)
