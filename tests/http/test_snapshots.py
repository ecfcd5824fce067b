"""State and history served from snapshot documents answer exactly what LangGraph renders live.

Each scenario reads a thread's state and history over HTTP (served from the
stored documents, rendering the missing ones) and compares the bytes with
what :class:`~graphledger.runs.state.ThreadState` renders through LangGraph's
``aget_state`` / ``aget_state_history`` at the same moment.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from graphledger.ledger import Ledger
from graphledger.runs import GraphRegistry, checkpoint, demo, snapshots
from graphledger.runs.state import ThreadState

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
MORE = {"messages": [{"role": "user", "content": "and these ones too"}]}
REVIEW = {"configurable": {"review": True}}
SLOW = {"configurable": {"tokens": 300, "token_delay": 0.02}}


@pytest.fixture
async def live(ledger: Ledger, dsn: str) -> AsyncIterator[ThreadState]:
    async with checkpoint.saver(dsn) as saver:
        yield ThreadState(ledger, GraphRegistry({"demo": demo.graph}), saver)


async def _documents(conn: asyncpg.Connection, thread_id: str) -> dict[str, tuple[str | None, str | None]]:
    rows = await conn.fetch("SELECT checkpoint_id, history, latest FROM thread_snapshots WHERE thread_id = $1", thread_id)
    return {row["checkpoint_id"]: (row["history"], row["latest"]) for row in rows}


async def _checkpoint_ids(conn: asyncpg.Connection, thread_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT checkpoint_id FROM langgraph.checkpoints WHERE thread_id = $1 AND checkpoint_ns = '' ORDER BY checkpoint_id DESC", thread_id
    )
    return [row["checkpoint_id"] for row in rows]


async def _rendered(conn: asyncpg.Connection, thread_id: str) -> None:
    """Wait for the worker's background rendering of the thread's documents (each checkpoint's history and the latest)."""
    for _ in range(200):
        ids = await _checkpoint_ids(conn, thread_id)
        found = await _documents(conn, thread_id)
        if ids and all(found.get(i, (None, None))[0] is not None for i in ids) and found.get(ids[0], (None, None))[1] is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the documents of thread {thread_id} were not rendered")


async def _same(http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection, thread_id: str) -> list[dict[str, Any]]:
    """Every read the documents serve equals LangGraph's live rendering, byte for byte; read twice (render, then stored)."""
    tid = UUID(thread_id)
    ids = await _checkpoint_ids(conn, thread_id)
    for _ in range(2):
        expected = snapshots.dumps(await live.history(tid, limit=1000)).encode()
        assert (await http.post(f"/threads/{thread_id}/history", json={"limit": 1000})).content == expected
        assert (await http.get(f"/threads/{thread_id}/history", params={"limit": 1000})).content == expected
        assert (await http.get(f"/threads/{thread_id}/state")).content == snapshots.dumps(await live.get(tid)).encode()
        for cid in ids:
            at = snapshots.dumps(await live.get(tid, {"checkpoint_id": cid})).encode()
            assert (await http.get(f"/threads/{thread_id}/state/{cid}")).content == at
            body = {"checkpoint": {"checkpoint_id": cid}}
            assert (await http.post(f"/threads/{thread_id}/state/checkpoint", json=body)).content == at
            page = snapshots.dumps(await live.history(tid, limit=1000, checkpoint={"checkpoint_id": cid})).encode()
            assert (await http.post(f"/threads/{thread_id}/history", json=body)).content == page
        for before in ids[:3]:
            page = snapshots.dumps(await live.history(tid, limit=2, before=before)).encode()
            assert (await http.post(f"/threads/{thread_id}/history", json={"limit": 2, "before": before})).content == page
            assert (await http.get(f"/threads/{thread_id}/history", params={"limit": 2, "before": before})).content == page
        for metadata in ({"source": "loop"}, {"source": "update"}, {"step": 1}, {"nothing": "matches"}):
            page = snapshots.dumps(await live.history(tid, limit=1000, metadata=metadata)).encode()
            assert (await http.post(f"/threads/{thread_id}/history", json={"limit": 1000, "metadata": metadata})).content == page
    found = await _documents(conn, thread_id)
    assert all(found[i][0] is not None for i in ids) and (not ids or found[ids[0]][1] is not None)
    states: list[dict[str, Any]] = json.loads(expected)
    return states


async def test_a_run_s_documents_are_rendered_when_it_ends_and_equal_langgraph_s(
    sdk: LangGraphClient, http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    await sdk.runs.wait(tid, "demo", input=MORE)
    await _rendered(conn, tid)
    states = await _same(http, live, conn, tid)
    assert len(states) == 12 and states[0]["next"] == [] and len(states[0]["values"]["messages"]) == 8


async def test_what_is_served_is_the_stored_document(sdk: LangGraphClient, http: httpx.AsyncClient, conn: asyncpg.Connection) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    await _rendered(conn, tid)
    ids = await _checkpoint_ids(conn, tid)
    await conn.execute("UPDATE thread_snapshots SET history = '{\"marked\":' || length(history) || '}' WHERE thread_id = $1", tid)
    await conn.execute("UPDATE thread_snapshots SET latest = '{\"latest\":true}' WHERE thread_id = $1", tid)
    page = (await http.post(f"/threads/{tid}/history", json={"limit": 2})).json()
    assert [list(state) for state in page] == [["marked"], ["marked"]]
    assert (await http.get(f"/threads/{tid}/state")).json() == {"latest": True}
    assert list((await http.get(f"/threads/{tid}/state/{ids[1]}")).json()) == ["marked"]
    # Subgraphs and subgraph namespaces are rendered live, never from documents.
    assert (await http.get(f"/threads/{tid}/state", params={"subgraphs": "true"})).json()["checkpoint"]["checkpoint_id"] == ids[0]
    assert (await http.post(f"/threads/{tid}/history", json={"checkpoint": {"checkpoint_ns": "x"}})).json() == []


async def test_missing_documents_are_rendered_on_read(
    sdk: LangGraphClient, http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    await sdk.runs.wait(tid, "demo", input=MORE)
    await _rendered(conn, tid)
    ids = await _checkpoint_ids(conn, tid)
    await conn.execute("DELETE FROM thread_snapshots WHERE thread_id = $1 AND checkpoint_id = ANY($2)", tid, ids[1:4])
    assert len(await _documents(conn, tid)) == len(ids) - 3
    await _same(http, live, conn, tid)  # some of a page missing: rendered one by one
    await conn.execute("DELETE FROM thread_snapshots WHERE thread_id = $1", tid)
    await _same(http, live, conn, tid)  # all missing: the page rendered as LangGraph renders it
    assert set(await _documents(conn, tid)) == set(ids)
    await conn.execute("TRUNCATE thread_snapshots")  # what `graphledger rebuild` does: rendered again when read
    await _same(http, live, conn, tid)


async def test_human_in_the_loop_and_a_stale_latest_document(
    sdk: LangGraphClient, http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT, config=REVIEW)
    await _rendered(conn, tid)
    states = await _same(http, live, conn, tid)
    assert states[0]["next"] == ["review"] and states[0]["tasks"][0]["interrupts"]
    interrupted = states[0]["checkpoint_id"]
    before = await _documents(conn, tid)
    # The resume writes pending writes against the interrupted checkpoint (its document is now stale) and moves on.
    await sdk.runs.wait(tid, "demo", command={"resume": "yes"}, config=REVIEW)
    await _same(http, live, conn, tid)
    after = await _documents(conn, tid)
    assert after[interrupted][0] != before[interrupted][0]  # rendered again from the new writes
    history = (await http.post(f"/threads/{tid}/history", json={"limit": 1000})).json()
    resumed = next(state for state in history if state["checkpoint_id"] == interrupted)
    assert resumed["tasks"][0]["result"] is not None or resumed["tasks"][0]["interrupts"]


async def test_new_pending_writes_on_the_latest_checkpoint_are_never_served_stale(
    sdk: LangGraphClient, http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT, config=REVIEW)
    await _rendered(conn, tid)
    state = (await http.get(f"/threads/{tid}/state")).content
    latest = json.loads(state)["checkpoint_id"]
    # A pending write against the latest checkpoint, with no new checkpoint: what a task finishing writes.
    (task,) = json.loads(state)["tasks"]
    saver = live.checkpointer
    config = {"configurable": {"thread_id": tid, "checkpoint_ns": "", "checkpoint_id": latest}}
    await saver.aput_writes(config, [("messages", [])], task["id"])
    fresh = snapshots.dumps(await live.get(UUID(tid))).encode()
    assert fresh != state
    assert (await http.get(f"/threads/{tid}/state")).content == fresh
    await _same(http, live, conn, tid)


async def test_breakpoints_forks_updates_and_rollbacks(
    sdk: LangGraphClient, http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT, interrupt_before=["tools"])
    await _same(http, live, conn, tid)
    await sdk.runs.wait(tid, "demo", input=None)  # past the breakpoint
    states = await _same(http, live, conn, tid)
    # A fork from an older checkpoint: the history branches, the old documents stay and new ones are added.
    fork_at = states[3]["checkpoint_id"]
    await sdk.runs.wait(tid, "demo", input=MORE, checkpoint_id=fork_at)
    forked = await _same(http, live, conn, tid)
    assert len(forked) > len(states) and forked[0]["parent_checkpoint_id"] != states[0]["checkpoint_id"]
    # An update of the state: a new latest checkpoint.
    update = await http.post(f"/threads/{tid}/state", json={"values": {"messages": [{"role": "user", "content": "edited"}]}, "as_node": "agent"})
    assert update.status_code == 200, update.text
    updated = await _same(http, live, conn, tid)
    assert updated[0]["checkpoint_id"] == update.json()["checkpoint_id"] and updated[0]["metadata"]["source"] == "update"
    # A rollback: the run's checkpoints go, and their documents with them.
    kept = await _checkpoint_ids(conn, tid)
    run = await sdk.runs.create(tid, "demo", input=MORE, config=SLOW, stream_mode=["messages-tuple"])
    async for part in sdk.runs.join_stream(tid, run["run_id"], last_event_id="0"):
        if part.event == "messages":
            break
    assert (await http.get(f"/threads/{tid}/state")).status_code == 200  # a document of the run's latest checkpoint
    await sdk.runs.cancel(tid, run["run_id"], wait=True, action="rollback")
    await sdk.runs.join(tid, run["run_id"])
    assert await _checkpoint_ids(conn, tid) == kept
    assert set(await _documents(conn, tid)) <= set(kept)
    rolled_back = await _same(http, live, conn, tid)
    assert rolled_back == updated


async def test_a_deleted_thread_loses_its_documents(sdk: LangGraphClient, http: httpx.AsyncClient, conn: asyncpg.Connection) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT)
    await _rendered(conn, tid)
    assert (await http.delete(f"/threads/{tid}")).status_code == 204
    assert await _documents(conn, tid) == {}
    assert (await http.post(f"/threads/{tid}/history", json={})).status_code == 404
    assert (await http.get(f"/threads/{tid}/state")).status_code == 404


async def test_a_copied_thread_is_served_its_own_state_not_its_source_s_documents(
    sdk: LangGraphClient, http: httpx.AsyncClient, live: ThreadState, conn: asyncpg.Connection
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "demo", input=INPUT, config=REVIEW)
    await _rendered(conn, tid)
    copied = await http.post(f"/threads/{tid}/copy")
    assert copied.status_code == 200, copied.text
    copy = copied.json()["thread_id"]
    assert await _documents(conn, copy) == {}  # the source's documents name the source: rendered anew for the copy
    states = await _same(http, live, conn, copy)
    assert all(state["checkpoint"]["thread_id"] == copy for state in states)
    assert set(await _documents(conn, copy)) == set(await _checkpoint_ids(conn, copy))
