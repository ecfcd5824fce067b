"""Thread deletion and the ledger's own reads over HTTP: messages, events, usage, verification."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

from graphledger.ledger import Ledger, RunRef
from graphledger.runs import demo

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
MISSING = "00000000-0000-0000-0000-000000000000"


async def finished_run(sdk: LangGraphClient, **kwargs: Any) -> tuple[str, str]:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, stream_mode=["messages-tuple", "values"], **kwargs)
    await sdk.runs.join(thread["thread_id"], run["run_id"])
    return thread["thread_id"], run["run_id"]


async def test_deleting_a_thread_removes_its_state_and_keeps_its_record(sdk: LangGraphClient, http: httpx.AsyncClient, dsn: str) -> None:
    tid, rid = await finished_run(sdk)
    before = (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"limit": 1000})).json()["events"]
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM langgraph.checkpoints WHERE thread_id = $1", tid) > 0
        await sdk.threads.delete(tid)
        assert await conn.fetchval("SELECT count(*) FROM langgraph.checkpoints WHERE thread_id = $1", tid) == 0
        assert await conn.fetchval("SELECT count(*) FROM langgraph.checkpoint_writes WHERE thread_id = $1", tid) == 0
        assert await conn.fetchval("SELECT deleted_at IS NOT NULL FROM threads WHERE thread_id = $1::uuid", tid)
    finally:
        await conn.close()
    with pytest.raises(NotFoundError):
        await sdk.threads.get(tid)
    again = await http.delete(f"/threads/{tid}")
    assert again.status_code == 404 and "not found" in again.json()["detail"]
    new_run = await http.post(f"/threads/{tid}/runs", json={"assistant_id": "demo", "input": INPUT})
    assert new_run.status_code == 404 and "deleted" in new_run.json()["detail"]
    reused = await http.post("/threads", json={"thread_id": tid, "if_exists": "do_nothing"})
    assert reused.status_code == 409 and "not reused" in reused.json()["detail"]
    # The record stays: events, verification, usage and messages still answer.
    after = (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"limit": 1000})).json()["events"]
    assert after == before
    assert (await http.get(f"/threads/{tid}/runs/{rid}/verify")).json()["ok"] is True
    assert (await http.get(f"/threads/{tid}/usage")).json()["totals"]["calls"] == 2
    assert len((await http.get(f"/threads/{tid}/messages")).json()["messages"]) == 4


async def test_a_thread_with_an_active_run_is_not_deleted(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    slow = {"configurable": {"tokens": 2000, "token_delay": 0.01}}
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, config=slow)
    refused = await http.delete(f"/threads/{thread['thread_id']}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
    await sdk.runs.cancel(thread["thread_id"], run["run_id"], wait=True)
    assert (await sdk.threads.get(thread["thread_id"]))["thread_id"] == thread["thread_id"]
    await sdk.threads.delete(thread["thread_id"])
    assert (await http.get(f"/threads/{thread['thread_id']}/runs/{run['run_id']}")).json()["status"] == "interrupted"


async def test_events_page_through_a_run_with_kind_filters(sdk: LangGraphClient, http: httpx.AsyncClient, dsn: str) -> None:
    tid, rid = await finished_run(sdk)
    async with await Ledger.connect(dsn, tail=False) as ledger:
        stored = await ledger.read_run(RunRef(UUID(tid), UUID(rid)))
    pages: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"after": after, "limit": 7})).json()
        pages += page["events"]
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert [(e["seq"], e["kind"], e["hash"]) for e in pages] == [(e.seq, e.kind, e.hash.hex()) for e in stored]
    assert [e["data"] for e in pages] == [e.value for e in stored]
    lifecycle = (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"kinds": "run.*"})).json()["events"]
    assert [e["kind"] for e in lifecycle] == ["run.created", "run.started", "run.succeeded"]
    mixed = (await http.get(f"/threads/{tid}/runs/{rid}/events", params=[("kinds", "llm.usage"), ("kinds", "run.created")])).json()
    assert [e["kind"] for e in mixed["events"]] == ["run.created", "llm.usage", "llm.usage"]
    # "_" and "%" are not wildcards: only a trailing "*" is.
    assert (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"kinds": "run_created,%"})).json()["events"] == []


async def test_messages_page_forward_and_back_for_a_thread_and_a_run(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    tid, first = await finished_run(sdk)
    second = await sdk.runs.wait(tid, "demo", input={"messages": [{"role": "user", "content": "and these two"}]})
    assert len(second["messages"]) == 8
    forward: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"after": cursor} if cursor else {})
        page = (await http.get(f"/threads/{tid}/messages", params=params)).json()
        forward += page["messages"]
        cursor = page["after"]
        if not page["has_more"]:
            break
    assert [m["id"] for m in forward] == [m["id"] for m in second["messages"]]
    assert [m["data"]["content"] for m in forward] == [m["content"] for m in second["messages"]]
    last = (await http.get(f"/threads/{tid}/messages", params={"limit": 3, "last": "true"})).json()
    assert [m["id"] for m in last["messages"]] == [m["id"] for m in second["messages"][-3:]] and last["has_more"]
    back = (await http.get(f"/threads/{tid}/messages", params={"limit": 3, "before": last["before"]})).json()
    assert [m["id"] for m in back["messages"]] == [m["id"] for m in second["messages"][-6:-3]]
    of_run = (await http.get(f"/threads/{tid}/runs/{first}/messages")).json()["messages"]
    assert [m["id"] for m in of_run] == [m["id"] for m in second["messages"][:4]] and {m["run_id"] for m in of_run} == {first}


async def test_usage_totals_and_breakdowns(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    tid, rid = await finished_run(sdk)
    slow = {"configurable": {"tokens": 2000, "token_delay": 0.01}}
    cancelled = await sdk.runs.create(tid, "demo", input=INPUT, config=slow, stream_mode=["messages-tuple"])
    async for part in sdk.runs.join_stream(tid, cancelled["run_id"], last_event_id="0"):
        if part.event == "messages":
            break  # the model call is under way
    await sdk.runs.cancel(tid, cancelled["run_id"], wait=True)
    usage = (await http.get(f"/threads/{tid}/usage")).json()
    run_usage = (await http.get(f"/threads/{tid}/runs/{rid}/usage")).json()
    assert run_usage["run_id"] == rid and run_usage["totals"]["calls"] == 2
    assert usage["totals"]["calls"] == 2 + 1  # the cancelled run's call in flight is counted
    assert usage["totals"]["total_tokens"] == sum(row["total_tokens"] for row in usage["by_model"])
    assert [row["model"] for row in usage["by_model"]] == [demo.MODEL_NAME]
    by_status = {row["status"]: row["calls"] for row in usage["by_status"]}
    assert by_status == {"interrupted": 1, "success": 2}
    assert usage["totals"]["cache_read"] > 0 and usage["totals"]["reasoning"] > 0
    future = (await http.get(f"/threads/{tid}/usage", params={"since": "2999-01-01T00:00:00"})).json()
    assert future["totals"]["calls"] == 0 and future["by_model"] == []


async def test_verify_reports_a_tampered_event(sdk: LangGraphClient, http: httpx.AsyncClient, dsn: str) -> None:
    tid, rid = await finished_run(sdk)
    good = (await http.get(f"/threads/{tid}/runs/{rid}/verify")).json()
    assert good["ok"] is True and good["first_bad_seq"] is None and len(good["last_hash"]) == 64
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute(
                "UPDATE events SET data = '{\"tampered\":true}' WHERE thread_id = $1::uuid AND run_id = $2::uuid AND seq = 3", tid, rid
            )
            await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
    finally:
        await conn.close()
    bad = (await http.get(f"/threads/{tid}/runs/{rid}/verify")).json()
    assert bad["ok"] is False and bad["first_bad_seq"] == 3 and "hash" in bad["reason"] and bad["last_hash"] is None


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        (f"/threads/{MISSING}/messages", {}, 404, "not found"),
        (f"/threads/{MISSING}/usage", {}, 404, "not found"),
        (f"/threads/{MISSING}/runs/{MISSING}/events", {}, 404, "not found"),
        (f"/threads/{MISSING}/runs/{MISSING}/verify", {}, 404, "not found"),
        (f"/threads/{MISSING}/runs/{MISSING}/usage", {}, 404, "not found"),
        ("/threads/nope/messages", {}, 422, "UUID"),
        ("/threads/{tid}/messages", {"after": "garbage"}, 422, "cursor"),
        ("/threads/{tid}/messages", {"limit": "0"}, 422, "limit"),
        ("/threads/{tid}/messages", {"after": "MC4w", "before": "MC4w"}, 422, "one of"),
        ("/threads/{tid}/usage", {"since": "yesterday"}, 422, "ISO 8601"),
        ("/threads/{tid}/usage", {"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}, 422, "since"),
        ("/threads/{tid}/runs/{rid}/events", {"after": "-1"}, 422, "after"),
        ("/threads/{tid}/runs/{rid}/events", {"limit": "100000"}, 422, "limit"),
        (f"/threads/{{tid}}/runs/{MISSING}/events", {}, 404, "not found"),
    ],
)
async def test_bad_read_requests_get_a_clear_4xx(
    sdk: LangGraphClient, http: httpx.AsyncClient, path: str, params: dict[str, str], status: int, words: str
) -> None:
    thread = await sdk.threads.create()
    run = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)
    answer = await http.get(path.format(tid=thread["thread_id"], rid=run["run_id"]), params=params)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]


async def test_replay_and_the_join_stream_of_a_finished_run_equal_the_bytes_first_streamed(
    http: httpx.AsyncClient, sdk: LangGraphClient, dsn: str
) -> None:
    from graphledger import audit

    thread = await sdk.threads.create()
    body = {"assistant_id": "demo", "input": INPUT, "stream_mode": ["messages-tuple", "values", "updates"]}
    async with http.stream("POST", f"/threads/{thread['thread_id']}/runs/stream", json=body) as live:
        sent = b"".join([chunk async for chunk in live.aiter_bytes()])
    frames = sent.replace(b": heartbeat\n\n", b"")
    run_id = json.loads(frames.split(b"\n")[1][6:])["run_id"]
    async with http.stream("GET", f"/threads/{thread['thread_id']}/runs/{run_id}/stream", headers={"Last-Event-ID": "0"}) as again:
        joined = b"".join([chunk async for chunk in again.aiter_bytes()]).replace(b": heartbeat\n\n", b"")
    assert joined == frames
    out = io.BytesIO()
    async with await Ledger.connect(dsn, tail=False) as ledger:
        await audit.replay(ledger, UUID(run_id), out, sse=True)
    assert out.getvalue() == frames


async def test_the_export_downloads_and_verifies(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    from graphledger.ledger.export import verify_lines

    tid, rid = await finished_run(sdk)
    second = await sdk.runs.create(tid, "demo", input=INPUT)
    await sdk.runs.join(tid, second["run_id"])
    whole = await http.get(f"/threads/{tid}/export")
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/x-ndjson"
    assert whole.headers["content-disposition"] == f'attachment; filename="thread-{tid}.ndjson"'
    report = verify_lines(whole.content.splitlines(keepends=True))
    assert report.ok and report.runs == 2
    one = await http.get(f"/threads/{tid}/runs/{rid}/export")
    assert verify_lines(one.content.splitlines(keepends=True)).runs == 1
    assert (await http.get(f"/threads/{tid}/runs/{MISSING}/export")).status_code == 404
    slow = await sdk.runs.create(tid, "demo", input=INPUT, config={"configurable": {"tokens": 2000, "token_delay": 0.01}})
    busy = await http.get(f"/threads/{tid}/runs/{slow['run_id']}/export")
    assert busy.status_code == 409 and "has not ended" in busy.json()["detail"]
    await sdk.runs.cancel(tid, slow["run_id"], wait=True)


async def test_a_server_that_signs_proves_every_event_of_an_export(dsn: str, tmp_path: Path) -> None:
    from graphledger.http.app import create_app
    from graphledger.ledger.export import verify_lines
    from graphledger.ledger.note import Signer, read_checkpoint
    from graphledger.runs import GraphRegistry, RunSettings
    from tests.http.conftest import serve

    signer = Signer.generate("export.example/log")
    copies = tmp_path / "checkpoints"
    app = create_app(
        dsn, graphs=GraphRegistry({"demo": demo.graph}), settings=RunSettings(workers=2, drain_seconds=1.0),
        signer=signer, checkpoint_interval=3600.0, checkpoint_dir=copies,  # no periodic checkpoint in this test
    )
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        sdk = LangGraphClient(http)
        tid, rid = await finished_run(sdk)
        first = await http.get(f"/threads/{tid}/export")
        assert first.status_code == 200
        report = verify_lines(first.content.splitlines(keepends=True), signer.verifier)
        assert report.ok and report.events > 0 and report.proven == report.events and report.unproven == 0, report
        header = json.loads(first.content.splitlines()[0])
        assert header["unproven"] == 0 and read_checkpoint(header["checkpoint"], signer.verifier).size >= report.events
        assert [p.read_text() for p in copies.iterdir()] == [header["checkpoint"]]  # kept outside the database too
        again = await http.get(f"/threads/{tid}/runs/{rid}/export")
        assert verify_lines(again.content.splitlines(keepends=True), signer.verifier).proven == report.events
        assert len(list(copies.iterdir())) == 1  # already covered: nothing signed again


async def test_reads_of_the_record_are_in_the_access_log(sdk: LangGraphClient, http: httpx.AsyncClient, dsn: str) -> None:
    tid, rid = await finished_run(sdk)
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval("SELECT position FROM access_log_head")
        assert (await http.get(f"/threads/{tid}/runs/{rid}/events")).status_code == 200
        assert (await http.get(f"/threads/{tid}/runs/{rid}/verify")).status_code == 200
        assert (await http.get(f"/threads/{tid}/runs/{rid}/export")).status_code == 200
        assert (await http.get(f"/threads/{tid}/export")).status_code == 200
        async with http.stream("GET", f"/threads/{tid}/runs/{rid}/stream", headers={"Last-Event-ID": "0"}) as stream:
            assert stream.status_code == 200
            [_ async for _ in stream.aiter_bytes()]
        assert (await http.get(f"/threads/{tid}/runs/{rid}/messages")).status_code == 200  # not a read the log records
        assert (await http.get(f"/threads/{tid}/runs/{uuid4()}/events")).status_code == 404  # nothing read: nothing recorded
        rows = await conn.fetch("SELECT data::jsonb AS data FROM access_log WHERE position > $1 ORDER BY position", before)
    finally:
        await conn.close()
    entries = [json.loads(r["data"]) for r in rows]
    assert [e["action"] for e in entries] == ["events.read", "run.verify", "export", "export", "run.stream"]
    assert all(e["client"] == "127.0.0.1" and e["actor"] is None and e["resource"]["thread_id"] == tid for e in entries)
    assert entries[0]["resource"] == {"thread_id": tid, "run_id": rid, "after": "0"}
    assert "run_id" not in entries[3]["resource"]


async def test_served_runs_hold_the_lease_the_server_was_given(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    tid, rid = await finished_run(sdk)
    events = (await http.get(f"/threads/{tid}/runs/{rid}/events", params={"kinds": "run.started"})).json()["events"]
    assert [e["data"]["lease_seconds"] for e in events] == [2.0]  # RunSettings(lease_seconds=2.0) in the fixture


async def test_run_messages_without_the_thread(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT)
    (run,) = await sdk.runs.list(thread["thread_id"])
    by_run = (await http.get(f"/runs/{run['run_id']}/messages", params={"limit": 2})).json()
    assert by_run == (await http.get(f"/threads/{thread['thread_id']}/runs/{run['run_id']}/messages", params={"limit": 2})).json()
    assert by_run["has_more"] and len(by_run["messages"]) == 2
    assert (await http.get("/runs/00000000-0000-0000-0000-000000000000/messages")).status_code == 404
    assert (await http.get("/runs/nope/messages")).status_code == 422
    assert (await http.get(f"/runs/{run['run_id']}/messages", params={"limit": 0})).status_code == 422
    assert (await http.get(f"/runs/{run['run_id']}/messages", params={"after": "garbage"})).status_code == 422
