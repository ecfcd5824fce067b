"""Authentication and isolation, over real HTTP with LangGraph's custom auth (tests/http/authproject/auth.py)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError
from starlette.routing import Route

from graphledger.http import auth
from graphledger.http.app import create_app
from graphledger.ledger import Ledger
from graphledger.runs import GraphRegistry, RunSettings, demo
from tests.http.conftest import serve

PROJECT = Path(__file__).parent / "authproject"
ALICE, BOB, REVIEWER, MALLORY = (f"token-{name}" for name in ("alice", "bob", "reviewer", "mallory"))
INPUT = {"messages": [{"role": "user", "content": "two words"}]}
ALICE_ACTOR = {"identity": "alice", "permissions": ["chat"], "email": "alice@example.org", "display_name": "alice", "is_authenticated": True}
ARCHITECTURE = Path(__file__).parents[2] / "docs" / "architecture.md"


def make_app(dsn: str) -> Any:
    graphs = GraphRegistry({"demo": demo.graph, **GraphRegistry.from_config(PROJECT / "langgraph.json")._graphs})
    return create_app(
        dsn,
        graphs=graphs,
        settings=RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        heartbeat_seconds=0.5,
        auth=auth.load(config=PROJECT / "langgraph.json"),
    )


@pytest.fixture(scope="module")
async def url(dsn: str) -> AsyncIterator[str]:
    async with serve(make_app(dsn)) as base:
        yield base


def client(url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60)


@pytest.fixture
async def alice(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(url, ALICE) as c:
        yield c


@pytest.fixture
async def bob(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(url, BOB) as c:
        yield c


@pytest.fixture
async def reviewer(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(url, REVIEWER) as c:
        yield c


def routes(app: Any) -> list[tuple[str, str, Route]]:
    found = []
    for route in app.routes:
        assert isinstance(route, Route)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((method, route.path, route))
    return found


def concrete(path: str) -> str:
    return path.replace("{thread_id}", str(uuid.uuid4())).replace("{run_id}", str(uuid.uuid4()))


def test_every_route_but_the_open_ones_declares_its_action(dsn: str) -> None:
    for method, path, route in routes(make_app(dsn)):
        if auth.is_open(path):
            assert auth.action_of(route) is None
        else:
            assert auth.action_of(route) in auth.RESOURCES[auth.resource_of(route) or ""], f"{method} {path} is not guarded"


def test_the_architecture_doc_names_every_routes_action(dsn: str) -> None:
    text = ARCHITECTURE.read_text()
    who = text[text.index("\n## Who\n"):]
    who = who[: who.index("\n## ", 1)]
    documented = set()
    for row in who.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if not row.startswith("| `") or len(cells) != 2:
            continue
        action = None if cells[1].startswith("none") else cells[1].strip("`")
        for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`]*)`", cells[0]):
            documented.add((method, path, action))
    served = {(method, path.replace("{path:path}", "{path}"), auth.action_of(route)) for method, path, route in routes(make_app(dsn))}
    assert documented == served, (sorted(documented - served), sorted(served - documented))


async def test_no_token_or_a_bad_token_is_401_on_every_route(dsn: str, url: str) -> None:
    async with client(url, None) as anonymous, client(url, "token-nobody") as stranger:
        for method, path, _ in routes(make_app(dsn)):
            if auth.is_open(path):
                assert (await anonymous.request(method, path.replace("{path:path}", "0/000"))).status_code != 401, (method, path)
                continue
            answer = await anonymous.request(method, concrete(path), json={})
            assert answer.status_code == 401, (method, path)
            assert answer.json() == {"detail": "missing bearer token"} and answer.headers["www-authenticate"] == "Bearer"
            answer = await stranger.request(method, concrete(path), json={})
            assert (answer.status_code, answer.json()) == (401, {"detail": "invalid token"}), (method, path)


async def test_a_handler_returning_false_is_403(url: str) -> None:
    async with client(url, MALLORY) as mallory:
        answer = await mallory.post("/threads", json={})
    assert (answer.status_code, answer.json()) == (403, {"detail": "Forbidden"})


async def _alices_run(alice: httpx.AsyncClient) -> tuple[str, str, Any]:
    thread = (await alice.post("/threads", json={"metadata": {"topic": "t"}})).json()
    assert thread["metadata"] == {"topic": "t", "owner": "alice"}  # stamped by the handler
    tid = thread["thread_id"]
    answer = await alice.post(
        f"/threads/{tid}/runs/wait",
        json={"assistant_id": "whoami", "input": {"x": 1}, "config": {"configurable": {"langgraph_auth_user_id": "bob"}}},
    )
    assert answer.status_code == 200, answer.text
    rid = answer.headers["content-location"].rsplit("/", 1)[1]
    return tid, rid, answer.json()


async def test_the_graph_sees_the_user_who_started_its_run(alice: httpx.AsyncClient) -> None:
    _, _, output = await _alices_run(alice)
    # A client cannot name another user: the server's identity replaces what the config said.
    assert output["who"] == {"identity": "alice", "item": "alice", "user_id": "alice", "permissions": ["chat"]}


async def test_another_users_thread_and_runs_are_not_found_anywhere(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    tid, rid, _ = await _alices_run(alice)
    t, r = f"/threads/{tid}", f"/threads/{tid}/runs/{rid}"
    reads = [
        t, f"{t}/runs", f"{t}/messages", f"{t}/usage", f"{t}/export",
        r, f"{r}/join", f"{r}/stream", f"{r}/events", f"{r}/messages", f"{r}/usage", f"{r}/verify", f"{r}/export",
    ]
    for path in reads:
        assert (await alice.get(path)).status_code == 200, path
        answer = await bob.get(path)
        assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
        assert "alice" not in answer.text and "owner" not in answer.text
    for method, path in [("POST", f"{r}/cancel"), ("POST", f"{r}/stream"), ("DELETE", t)]:
        assert (await bob.request(method, path)).status_code == 404, path
    answer = await bob.post(f"{t}/runs", json={"assistant_id": "whoami", "input": {}})
    assert answer.status_code == 404
    assert (await bob.post(f"{t}/runs/wait", json={"assistant_id": "whoami", "input": {}, "if_not_exists": "create"})).status_code == 404
    assert (await bob.post("/threads", json={"thread_id": tid, "if_exists": "do_nothing"})).status_code == 409
    assert (await alice.get(t)).json()["metadata"] == {"topic": "t", "owner": "alice"}  # untouched


async def test_the_reviewer_reads_everything_and_changes_nothing(alice: httpx.AsyncClient, reviewer: httpx.AsyncClient) -> None:
    tid, rid, _ = await _alices_run(alice)
    t, r = f"/threads/{tid}", f"/threads/{tid}/runs/{rid}"
    for path in [t, f"{t}/runs", f"{t}/export", r, f"{r}/events", f"{r}/verify"]:
        assert (await reviewer.get(path)).status_code == 200, path
    assert (await reviewer.delete(t)).status_code == 404  # delete is not a read: owner only
    assert (await reviewer.post(f"{r}/cancel")).status_code == 404


async def test_a_stateless_run_belongs_to_its_creator(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    answer = await alice.post("/runs/wait", json={"assistant_id": "whoami", "input": {}})
    assert answer.status_code == 200 and answer.json()["who"]["identity"] == "alice"
    path = answer.headers["content-location"]
    assert (await alice.get(path)).json()["metadata"]["owner"] == "alice"
    assert (await bob.get(path)).status_code == 404


async def test_the_official_sdk_with_a_token(url: str) -> None:
    async with client(url, ALICE) as a, client(url, BOB) as b:
        sdk_alice, sdk_bob = LangGraphClient(a), LangGraphClient(b)
        thread = await sdk_alice.threads.create()
        parts = [p async for p in sdk_alice.runs.stream(thread["thread_id"], "whoami", input={})]
        assert parts[-1].data["who"]["identity"] == "alice"
        with pytest.raises(NotFoundError):
            await sdk_bob.threads.get(thread["thread_id"])
        with pytest.raises(NotFoundError):
            await sdk_bob.runs.list(thread["thread_id"])


async def test_commands_record_their_actor(dsn: str, alice: httpx.AsyncClient) -> None:
    thread = (await alice.post("/threads", json={})).json()
    tid = thread["thread_id"]
    run = (await alice.post(f"/threads/{tid}/runs", json={"assistant_id": "demo", "input": INPUT, "config": {"configurable": {"tokens": 500, "token_delay": 0.02}}})).json()
    rid = run["run_id"]
    assert (await alice.post(f"/threads/{tid}/runs/{rid}/cancel?wait=true")).status_code == 200
    events = (await alice.get(f"/threads/{tid}/runs/{rid}/events")).json()["events"]
    by_kind = {e["kind"]: e["data"] for e in events}
    expected = {"identity": "alice", "permissions": ["chat"], "email": "alice@example.org", "display_name": "alice", "is_authenticated": True}
    assert by_kind["run.created"]["actor"] == expected
    assert by_kind["run.cancel_requested"]["actor"] == expected
    assert "actor" not in run["kwargs"]
    verified = (await alice.get(f"/threads/{tid}/runs/{rid}/verify")).json()
    assert verified["ok"]  # the actor is inside the hashed payload
    assert (await alice.delete(f"/threads/{tid}")).status_code == 204
    conn = await asyncpg.connect(dsn)
    try:
        deleted_by = await conn.fetchval("SELECT deleted_by::text FROM threads WHERE thread_id = $1", uuid.UUID(tid))
    finally:
        await conn.close()
    assert json.loads(deleted_by) == expected
    async with await Ledger.connect(dsn, tail=False) as ledger:
        async with ledger.session() as session:
            refs = [ref for ref, _ in await session.heads.statuses(thread_id=uuid.UUID(tid))]
        records = [await ledger.read_run(ref) for ref in refs]
        (deletion,) = [events for events in records if events[0].value.get("command") == "delete_thread"]
        assert [e.kind for e in deletion] == ["run.created", "run.succeeded"]
        assert deletion[0].value["actor"] == expected  # inside the hashed payload
        assert (await ledger.verify(deletion[0].run_id)).ok


async def test_search_count_state_and_history_never_show_another_users_threads(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    tid, _, _ = await _alices_run(alice)
    mine = (await bob.post("/threads", json={"metadata": {"topic": "t"}})).json()["thread_id"]
    found = {t["thread_id"] for t in (await bob.post("/threads/search", json={"limit": 1000})).json()}
    assert mine in found and tid not in found
    assert tid not in {t["thread_id"] for t in (await bob.post("/threads/search", json={"ids": [tid]})).json()}
    assert tid not in {t["thread_id"] for t in (await bob.post("/threads/search", json={"metadata": {"owner": "alice"}})).json()}
    assert (await bob.post("/threads/count", json={"metadata": {"owner": "alice"}})).json() == 0
    assert (await alice.post("/threads/count", json={"ids": [tid, mine]})).json() == 1
    t = f"/threads/{tid}"
    for method, path in [("GET", f"{t}/state"), ("GET", f"{t}/history"), ("POST", f"{t}/history"), ("PATCH", t)]:
        assert (await alice.request(method, path, json={} if method != "GET" else None)).status_code == 200, path
        answer = await bob.request(method, path, json={"metadata": {"x": 1}} if method != "GET" else None)
        assert answer.status_code == 404, (method, path, answer.status_code)
    changed = await bob.post(f"{t}/state", json={"values": {"messages": [{"role": "user", "content": "hijack"}]}})
    assert changed.status_code == 404
    assert "x" not in (await alice.get(t)).json()["metadata"]


async def test_the_reviewers_reads_are_in_the_access_log_under_its_identity(dsn: str, alice: httpx.AsyncClient, reviewer: httpx.AsyncClient) -> None:
    tid, rid, _ = await _alices_run(alice)
    assert (await reviewer.get(f"/threads/{tid}/runs/{rid}/events")).status_code == 200
    assert (await reviewer.get(f"/threads/{tid}/export")).status_code == 200
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT data::text AS data FROM access_log ORDER BY position DESC LIMIT 2")
    finally:
        await conn.close()
    entries = [json.loads(r["data"]) for r in reversed(rows)]
    assert [e["action"] for e in entries] == ["events.read", "export"]
    assert all(e["actor"]["identity"] == "reviewer" and e["resource"]["thread_id"] == tid for e in entries)


async def _first_token(response: httpx.Response) -> None:
    async for line in response.aiter_lines():
        if line.startswith("event: messages"):
            return
    raise AssertionError("the stream ended before its first token")


async def test_a_cancel_on_a_stream_clients_disconnect_records_that_client(alice: httpx.AsyncClient) -> None:
    tid = (await alice.post("/threads", json={})).json()["thread_id"]
    slow = {"assistant_id": "demo", "input": INPUT, "config": {"configurable": {"tokens": 500, "token_delay": 0.02}}, "stream_mode": "messages-tuple"}
    async with alice.stream("POST", f"/threads/{tid}/runs/stream", json={**slow, "on_disconnect": "cancel"}) as response:
        created = response.headers["content-location"].rsplit("/", 1)[1]
        await _first_token(response)
    # the client went away mid-run; the same for a join that asked to cancel on disconnect
    joined = (await alice.post(f"/threads/{tid}/runs", json={**slow, "multitask_strategy": "enqueue"})).json()["run_id"]
    await alice.get(f"/threads/{tid}/runs/{created}/join")
    async with alice.stream("GET", f"/threads/{tid}/runs/{joined}/stream", params={"cancel_on_disconnect": "true"}) as response:
        await _first_token(response)
    for rid in (created, joined):
        assert (await alice.get(f"/threads/{tid}/runs/{rid}/join")).status_code == 200
        assert (await alice.get(f"/threads/{tid}/runs/{rid}")).json()["status"] == "interrupted"
        events = (await alice.get(f"/threads/{tid}/runs/{rid}/events")).json()["events"]
        (cancel,) = [e["data"] for e in events if e["kind"] == "run.cancel_requested"]
        assert cancel["reason"] == "client disconnected" and cancel["actor"] == ALICE_ACTOR, rid


async def test_assistants_are_authorized_as_the_assistants_resource_and_filtered_in_sql(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, reviewer: httpx.AsyncClient
) -> None:
    created = await alice.post("/assistants", json={"graph_id": "whoami", "metadata": {"topic": "t"}, "name": "mine"})
    assert created.status_code == 200, created.text
    assistant = created.json()
    aid = assistant["assistant_id"]
    assert assistant["metadata"] == {"topic": "t", "owner": "alice"}  # stamped by the handler
    a = f"/assistants/{aid}"
    for path in [a, f"{a}/graph", f"{a}/schemas", f"{a}/subgraphs"]:
        assert (await alice.get(path)).status_code == 200, path
        assert (await reviewer.get(path)).status_code == 200, path
        answer = await bob.get(path)
        assert answer.status_code == 404 and "alice" not in answer.text, path
    for method, path, body in [
        ("PATCH", a, {"name": "stolen"}), ("DELETE", a, None), ("POST", f"{a}/versions", {}), ("POST", f"{a}/latest", {"version": 1}),
    ]:
        assert (await bob.request(method, path, json=body)).status_code == 404, (method, path)
    assert (await reviewer.patch(a, json={"name": "reviewed"})).status_code == 404  # an update is not a read
    assert aid not in {x["assistant_id"] for x in (await bob.post("/assistants/search", json={"limit": 1000})).json()}
    assert (await bob.post("/assistants/count", json={"metadata": {"owner": "alice"}})).json() == 0
    assert [x["assistant_id"] for x in (await alice.post("/assistants/search", json={"metadata": {"topic": "t"}})).json()] == [aid]
    assert (await bob.post("/assistants", json={"graph_id": "whoami", "assistant_id": aid, "if_exists": "do_nothing"})).status_code == 409
    assert (await alice.get(a)).json()["name"] == "mine"
    answer = await alice.post("/runs/wait", json={"assistant_id": aid, "input": {}})
    assert answer.status_code == 200 and answer.json()["who"]["identity"] == "alice"


async def test_copies_streams_feedback_and_run_messages_are_authorized_like_their_thread(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, reviewer: httpx.AsyncClient, url: str
) -> None:
    tid, rid, _ = await _alices_run(alice)
    t, r = f"/threads/{tid}", f"/threads/{tid}/runs/{rid}"
    for method, path in [("POST", f"{t}/copy"), ("GET", f"{t}/stream"), ("GET", f"/runs/{rid}/messages"), ("GET", f"{r}/feedback")]:
        answer = await bob.request(method, path)
        assert answer.status_code == 404 and "alice" not in answer.text, (method, path, answer.status_code)
    assert (await bob.post(f"{r}/feedback", json={"key": "k", "score": 1})).status_code == 404
    assert (await reviewer.post(f"{r}/feedback", json={"key": "k", "score": 1})).status_code == 404  # an update, not a read
    async with client(url, MALLORY) as mallory:
        assert (await mallory.post(f"{t}/copy")).status_code == 403

    # A copy: a read of the source, a create of the copy (the handler stamps its owner), recorded with its actor.
    mine = (await alice.post(f"{t}/copy")).json()
    assert mine["metadata"] == {"topic": "t", "owner": "alice"}
    theirs = (await reviewer.post(f"{t}/copy")).json()  # the reviewer reads everything; its copy is its own
    assert theirs["metadata"] == {"topic": "t", "owner": "reviewer"}
    assert (await bob.get(f"/threads/{theirs['thread_id']}")).status_code == 404
    (copy_run,) = (await reviewer.get(f"/threads/{theirs['thread_id']}/runs")).json()
    created = (await reviewer.get(f"/threads/{theirs['thread_id']}/runs/{copy_run['run_id']}/events", params={"kinds": "run.created"})).json()
    assert created["events"][0]["data"]["actor"]["identity"] == "reviewer"
    assert created["events"][0]["data"]["copied_from"]["thread_id"] == tid

    # Feedback records who gave it; the run's messages read by run id is the thread's.
    given = (await alice.post(f"{r}/feedback", json={"key": "helpful", "score": 1})).json()
    assert given["actor"]["identity"] == "alice"
    assert [f["actor"]["identity"] for f in (await reviewer.get(f"{r}/feedback")).json()] == ["alice"]
    assert (await alice.get(f"/runs/{rid}/messages")).json() == (await alice.get(f"{r}/messages")).json()
    async with alice.stream("GET", f"{t}/stream") as answer:
        assert answer.status_code == 200
