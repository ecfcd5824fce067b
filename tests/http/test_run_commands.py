"""Webhooks, bulk cancel and run deletion, through the official langgraph-sdk client over real HTTP.

Webhooks go to a real HTTP receiver on 127.0.0.1 that fails the first attempt
and accepts the second.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from graphledger.audit import verify_runs
from graphledger.ledger import Ledger
from graphledger.ledger.export import verify_lines
from graphledger.runs.webhooks import WEBHOOK_ATTEMPT
from tests.http.receiver import Receiver, delivery_of, events_of, export

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}
SLOW = {"configurable": {"tokens": 300, "token_delay": 0.02}}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver([500])  # the first attempt fails, the second is accepted
    yield found
    found.close()


# -- webhooks ----------------------------------------------------------------------


async def test_a_webhook_is_retried_after_a_5xx_and_every_attempt_is_in_the_log(
    sdk: LangGraphClient, http: httpx.AsyncClient, receiver: Receiver, ledger: Ledger
) -> None:
    thread = await sdk.threads.create()
    url = receiver.url()
    values = await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT, webhook=url)
    got = await receiver.wait_for(2)
    (run,) = await sdk.runs.list(thread["thread_id"])  # the delivery's record is not one of the thread's runs
    assert [g["body"]["run_id"] for g in got] == [run["run_id"]] * 2
    body = got[1]["body"]
    assert body["status"] == "success" and body["thread_id"] == thread["thread_id"]
    assert body["values"] == values
    assert {"run_started_at", "run_ended_at", "webhook_sent_at", "created_at", "updated_at", "kwargs", "metadata"} <= set(body)
    assert got[1]["path"] == "/hook?token=query-secret-value&kind=done"  # the address as given
    assert got[1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"hook-user:hook-password").decode()
    assert body["kwargs"]["webhook"] == f"http://[redacted]@127.0.0.1:{receiver.port}/hook?token=[redacted]&kind=[redacted]"
    assert run["kwargs"]["webhook"] == body["kwargs"]["webhook"]

    delivery = await delivery_of(http, thread["thread_id"], run["run_id"])
    assert [e["kind"] for e in delivery] == ["run.created", WEBHOOK_ATTEMPT, WEBHOOK_ATTEMPT, "run.succeeded"]
    first, second = (e["data"] for e in delivery[1:3])
    assert (first["attempt"], first["status_code"], first["outcome"]) == (1, 500, "retry")
    assert (second["attempt"], second["status_code"], second["outcome"]) == (2, 200, "delivered")
    assert first["sent_at"] <= second["sent_at"]
    assert delivery[0]["data"]["url"] == body["kwargs"]["webhook"]
    everything = json.dumps(await export(http, thread["thread_id"]))
    assert "hook-password" not in everything and "query-secret-value" not in everything and "hook-user" not in everything
    async with ledger.session() as session:  # the address as given is dropped once the delivery is final
        kept = await session.connection.fetch("SELECT webhook FROM runs WHERE thread_id = $1", UUID(thread["thread_id"]))
    assert [row["webhook"] for row in kept] == [None, None]
    thread_now = await sdk.threads.get(thread["thread_id"])
    assert thread_now["status"] == "idle"  # the delivery's record leaves the thread's status alone
    verified = await http.get(f"/threads/{thread['thread_id']}/runs/{delivery[0]['run_id']}/verify")
    assert verified.status_code == 200 and verified.json()["ok"] is True


async def test_a_stateless_run_and_a_failed_run_deliver_their_webhooks(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    receiver = Receiver([])
    try:
        await sdk.runs.wait(None, "demo", input=INPUT, webhook=receiver.url("/stateless"))
        thread = await sdk.threads.create()
        await sdk.runs.wait(
            thread["thread_id"], "demo", input=INPUT, config={"configurable": {"fail": "model down"}}, raise_error=False,
            webhook=receiver.url("/failed"),
        )
        got = {g["path"].partition("?")[0]: g["body"] for g in await receiver.wait_for(2)}
        assert got["/stateless"]["status"] == "success" and len(got["/stateless"]["values"]["messages"]) == 4
        assert got["/failed"]["status"] == "error"
        assert got["/failed"]["error"] == {"error": "RuntimeError", "message": "model down"}
        assert got["/failed"]["values"]["messages"][0]["content"] == INPUT["messages"][0]["content"]  # the state as last streamed
        assert (await sdk.threads.get(thread["thread_id"]))["status"] == "error"
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("webhook", "detail"),
    [
        ("ftp://example.org/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("/relative/path", "http or https"),
        ("not a url", "whitespace"),
        ("http://", "host"),
        ("http://[::1", "not a valid URL"),
        ("http://example.org:99999/x", "not a valid URL"),
        ("http://example.org/\u0000", "control"),
        ("", "http or https"),
        (5, "http or https"),
        (["http://example.org"], "http or https"),
        ("http://example.org/" + "x" * 3000, "at most"),
    ],
)
async def test_a_webhook_that_is_not_an_http_url_is_refused_at_create(
    http: httpx.AsyncClient, sdk: LangGraphClient, webhook: Any, detail: str
) -> None:
    thread = await sdk.threads.create()
    for path in (f"/threads/{thread['thread_id']}/runs", f"/threads/{thread['thread_id']}/runs/wait", "/runs/wait", "/runs/stream"):
        response = await http.post(path, json={"assistant_id": "demo", "input": INPUT, "webhook": webhook})
        assert response.status_code == 422, response.text
        assert detail in response.json()["detail"]
    assert await sdk.runs.list(thread["thread_id"]) == []  # nothing was admitted
    with pytest.raises(UnprocessableEntityError):
        await sdk.runs.create(thread["thread_id"], "demo", input=INPUT, webhook="ftp://example.org/x")


# -- bulk cancel ---------------------------------------------------------------------


async def _running(sdk: LangGraphClient, thread_id: str) -> dict[str, Any]:
    run = await sdk.runs.create(thread_id, "demo", input=INPUT, config=SLOW, stream_mode=["messages-tuple"])
    async for part in sdk.runs.join_stream(thread_id, run["run_id"], last_event_id="0"):
        if part.event == "messages":
            break
    return dict(run)


async def test_cancel_many_by_ids_cancels_the_active_ones(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    thread = await sdk.threads.create()
    done = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)
    await sdk.runs.join(thread["thread_id"], done["run_id"])
    running = await _running(sdk, thread["thread_id"])
    queued = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)  # enqueued behind the running one
    unknown = "00000000-0000-0000-0000-000000000001"
    await sdk.runs.cancel_many(
        thread_id=thread["thread_id"], run_ids=[running["run_id"], queued["run_id"], done["run_id"], unknown], action="rollback"
    )
    await sdk.runs.join(thread["thread_id"], running["run_id"])
    statuses = {r["run_id"]: r["status"] for r in await sdk.runs.list(thread["thread_id"])}
    assert statuses == {done["run_id"]: "success", running["run_id"]: "interrupted", queued["run_id"]: "interrupted"}
    events = events_of(await export(http, thread["thread_id"]))
    requested = [e for e in events if e["kind"] == "run.cancel_requested"]
    assert sorted(e["run_id"] for e in requested) == sorted([running["run_id"], queued["run_id"]])
    assert all(e["data"]["action"] == "rollback" for e in requested)
    with pytest.raises(NotFoundError):  # nothing left to cancel
        await sdk.runs.cancel_many(thread_id=thread["thread_id"], run_ids=[running["run_id"], done["run_id"]])


async def test_cancel_many_by_status(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    running = await _running(sdk, thread["thread_id"])
    queued = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)
    await sdk.runs.cancel_many(status="pending")
    assert (await sdk.runs.get(thread["thread_id"], queued["run_id"]))["status"] == "interrupted"
    assert (await sdk.runs.get(thread["thread_id"], running["run_id"]))["status"] == "running"
    await sdk.runs.cancel_many(status="running")
    await sdk.runs.join(thread["thread_id"], running["run_id"])
    assert (await sdk.runs.get(thread["thread_id"], running["run_id"]))["status"] == "interrupted"
    other = await _running(sdk, thread["thread_id"])
    await sdk.runs.cancel_many(status="all")
    await sdk.runs.join(thread["thread_id"], other["run_id"])
    assert (await sdk.runs.get(thread["thread_id"], other["run_id"]))["status"] == "interrupted"
    with pytest.raises(NotFoundError):
        await sdk.runs.cancel_many(status="all")


@pytest.mark.parametrize(
    ("body", "query", "detail"),
    [
        ({}, "", "thread_id and run_ids, or a status"),
        ({"thread_id": "00000000-0000-0000-0000-000000000001"}, "", "thread_id and run_ids"),
        ({"run_ids": ["00000000-0000-0000-0000-000000000001"]}, "", "thread_id and run_ids"),
        ({"status": "all", "thread_id": "00000000-0000-0000-0000-000000000001"}, "", "not both"),
        ({"status": "all", "run_ids": []}, "", "not both"),
        ({"status": "success"}, "", "status must be one of"),
        ({"status": 5}, "", "status must be one of"),
        ({"thread_id": "zz", "run_ids": []}, "", "thread_id must be a UUID"),
        ({"thread_id": "00000000-0000-0000-0000-000000000001", "run_ids": ["zz"]}, "", "run_ids must be a UUID"),
        ({"thread_id": "00000000-0000-0000-0000-000000000001", "run_ids": "abc"}, "", "must be a list"),
        ({"thread_id": "00000000-0000-0000-0000-000000000001", "run_ids": ["00000000-0000-0000-0000-000000000001"] * 1001}, "", "at most"),
        ({"status": "all"}, "?action=explode", "action must be one of"),
        ([1], "", "object"),
    ],
)
async def test_cancel_many_refuses_bad_bodies(http: httpx.AsyncClient, body: Any, query: str, detail: str) -> None:
    response = await http.post(f"/runs/cancel{query}", json=body)
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]


async def test_cancel_many_of_nothing_is_not_found(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    with pytest.raises(NotFoundError):
        await sdk.runs.cancel_many(thread_id=thread["thread_id"], run_ids=["00000000-0000-0000-0000-000000000001"])


# -- deleting a run --------------------------------------------------------------------


async def test_deleting_a_run_hides_it_and_keeps_its_record(sdk: LangGraphClient, http: httpx.AsyncClient, ledger: Ledger) -> None:
    thread = await sdk.threads.create()
    kept = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)
    await sdk.runs.join(thread["thread_id"], kept["run_id"])
    gone = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)
    await sdk.runs.join(thread["thread_id"], gone["run_id"])
    before = (await http.get(f"/threads/{thread['thread_id']}/runs/{gone['run_id']}/events")).json()

    await sdk.runs.delete(thread["thread_id"], gone["run_id"])

    with pytest.raises(NotFoundError):
        await sdk.runs.get(thread["thread_id"], gone["run_id"])
    with pytest.raises(httpx.HTTPStatusError) as joined:  # the sdk's join raises httpx's own error
        await sdk.runs.join(thread["thread_id"], gone["run_id"])
    assert joined.value.response.status_code == 404
    with pytest.raises(NotFoundError):
        await sdk.runs.delete(thread["thread_id"], gone["run_id"])  # once
    with pytest.raises(NotFoundError):
        await sdk.runs.cancel(thread["thread_id"], gone["run_id"])
    assert [r["run_id"] for r in await sdk.runs.list(thread["thread_id"])] == [kept["run_id"]]
    assert (await sdk.threads.get(thread["thread_id"]))["status"] == "idle"

    # The record stays: its events, their verification, the export, with the deletion and who made it.
    after = (await http.get(f"/threads/{thread['thread_id']}/runs/{gone['run_id']}/events")).json()
    assert after == before
    verified = await http.get(f"/threads/{thread['thread_id']}/runs/{gone['run_id']}/verify")
    assert verified.status_code == 200 and verified.json()["ok"] is True
    events = events_of(await export(http, thread["thread_id"]))
    deletions = [e for e in events if e["kind"] == "run.created" and e["data"].get("command") == "delete_run"]
    assert [d["data"]["record_of"] for d in deletions] == [gone["run_id"]]
    assert [e["kind"] for e in events if e["run_id"] == deletions[0]["run_id"]] == ["run.created", "run.succeeded"]
    assert {e["run_id"] for e in events} >= {gone["run_id"], kept["run_id"]}
    # graphledger verify: every chain in the database (verify --all), and the export offline (verify FILE).
    report = await verify_runs(ledger)
    assert report.bad == [] and report.runs >= 3
    exported = await http.get(f"/threads/{thread['thread_id']}/export")
    checked = verify_lines(exported.content.splitlines(keepends=True))
    assert checked.ok and checked.runs == 3, checked


async def test_an_active_run_is_not_deleted(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    running = await _running(sdk, thread["thread_id"])
    queued = await sdk.runs.create(thread["thread_id"], "demo", input=INPUT)
    for run in (running, queued):
        with pytest.raises(ConflictError):
            await sdk.runs.delete(thread["thread_id"], run["run_id"])
    await sdk.runs.cancel_many(thread_id=thread["thread_id"], run_ids=[running["run_id"], queued["run_id"]])
    await sdk.runs.join(thread["thread_id"], running["run_id"])
    await sdk.runs.delete(thread["thread_id"], running["run_id"])  # once it ended
    assert [r["run_id"] for r in await sdk.runs.list(thread["thread_id"])] == [queued["run_id"]]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/threads/00000000-0000-0000-0000-000000000000/runs/00000000-0000-0000-0000-000000000000", 404),
        ("/threads/not-a-uuid/runs/00000000-0000-0000-0000-000000000000", 422),
        ("/threads/00000000-0000-0000-0000-000000000000/runs/not-a-uuid", 422),
    ],
)
async def test_deleting_an_unknown_run_is_refused(http: httpx.AsyncClient, path: str, status: int) -> None:
    response = await http.delete(path)
    assert response.status_code == status and isinstance(response.json()["detail"], str)


async def test_deleting_an_unknown_run_of_a_known_thread_is_not_found(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    with pytest.raises(NotFoundError):
        await sdk.runs.delete(thread["thread_id"], "00000000-0000-0000-0000-000000000001")
