"""``/store``: the official SDK's store client, graphs that use the store in a run, bad inputs, authorization and the access log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import asyncpg
import httpx
import pytest
from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph_sdk import Auth
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError

from graphledger.http.app import create_app
from graphledger.http.auth import Authorizer
from graphledger.http.store import combined
from graphledger.runs import GraphRegistry, RunSettings, demo
from tests.http.conftest import serve


class Memory(TypedDict, total=False):
    user: str
    fact: str
    recalled: Any


async def remember(state: Memory, *, store: BaseStore) -> Memory:
    """Writes a fact under the user's namespace with the injected store, and reads back everything there."""
    await store.aput(("memories", state["user"]), state["fact"], {"fact": state["fact"]})
    found = await store.asearch(("memories", state["user"]))
    return {"recalled": sorted(item.value["fact"] for item in found)}


async def recall(state: Memory) -> Memory:
    """Reads an item with ``get_store()`` (no store parameter)."""
    item = await get_store().aget(("profiles",), state["user"])
    return {"recalled": item.value if item is not None else None}


def _graph(node: Any) -> Any:
    builder = StateGraph(Memory)
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.add_edge("node", END)
    return builder.compile()


GRAPHS = GraphRegistry({"demo": demo.graph, "remember": _graph(remember), "recall": _graph(recall)})
SETTINGS = RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0)


@pytest.fixture(scope="module")
async def url(dsn: str) -> AsyncIterator[str]:
    async with serve(create_app(dsn, graphs=GRAPHS, settings=SETTINGS)) as base:
        yield base


@pytest.fixture
async def http(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture
def sdk(http: httpx.AsyncClient) -> LangGraphClient:
    return LangGraphClient(http)


async def test_put_get_search_namespaces_delete_through_the_sdk(sdk: LangGraphClient) -> None:
    await sdk.store.put_item(["docs", "ada"], key="a", value={"title": "A", "n": 1})
    await sdk.store.put_item(["docs", "ada"], key="b", value={"title": "B", "n": 2})
    await sdk.store.put_item(["docs", "bob", "drafts"], key="c", value={"title": "C", "n": 3})
    item = await sdk.store.get_item(["docs", "ada"], key="a")
    assert {k: item[k] for k in ("namespace", "key", "value")} == {"namespace": ["docs", "ada"], "key": "a", "value": {"title": "A", "n": 1}}
    assert item["created_at"] and item["updated_at"]
    await sdk.store.put_item(["docs", "ada"], key="a", value={"title": "A2", "n": 1})
    again = await sdk.store.get_item(["docs", "ada"], key="a")
    assert again["value"]["title"] == "A2" and again["created_at"] == item["created_at"] and again["updated_at"] > item["updated_at"]
    assert await sdk.store.get_item(["docs", "ada"], key="missing") is None

    found = await sdk.store.search_items(["docs"])
    assert sorted(i["key"] for i in found["items"]) == ["a", "b", "c"]
    assert all(i["score"] is None for i in found["items"])
    assert [i["key"] for i in (await sdk.store.search_items(["docs"], filter={"n": 2}))["items"]] == ["b"]
    assert sorted(i["key"] for i in (await sdk.store.search_items(["docs"], filter={"n": {"$gte": 2}}))["items"]) == ["b", "c"]
    assert [i["key"] for i in (await sdk.store.search_items(["docs", "bob"]))["items"]] == ["c"]
    page = await sdk.store.search_items(["docs"], limit=2)
    rest = await sdk.store.search_items(["docs"], limit=2, offset=2)
    assert len(page["items"]) == 2 and len(rest["items"]) == 1
    assert {i["key"] for i in page["items"] + rest["items"]} == {"a", "b", "c"}

    listed = await sdk.store.list_namespaces(prefix=["docs"])
    assert sorted(listed["namespaces"]) == [["docs", "ada"], ["docs", "bob", "drafts"]]
    assert sorted((await sdk.store.list_namespaces(prefix=["docs"], max_depth=2))["namespaces"]) == [["docs", "ada"], ["docs", "bob"]]
    assert (await sdk.store.list_namespaces(prefix=["docs"], suffix=["drafts"]))["namespaces"] == [["docs", "bob", "drafts"]]

    await sdk.store.delete_item(["docs", "ada"], key="a")
    assert await sdk.store.get_item(["docs", "ada"], key="a") is None
    await sdk.store.delete_item(["docs", "ada"], key="a")  # deleting what is gone is not an error


async def test_a_graph_uses_the_store_in_a_run_and_sees_what_the_api_wrote(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    first = await sdk.runs.wait(thread["thread_id"], "remember", input={"user": "ada", "fact": "likes tea"})
    assert first["recalled"] == ["likes tea"]
    other = await sdk.threads.create()  # the store is shared across threads
    second = await sdk.runs.wait(other["thread_id"], "remember", input={"user": "ada", "fact": "has a cat"})
    assert second["recalled"] == ["has a cat", "likes tea"]
    written = await sdk.store.get_item(["memories", "ada"], key="has a cat")
    assert written["value"] == {"fact": "has a cat"}

    await sdk.store.put_item(["profiles"], key="ada", value={"name": "Ada"})
    read = await sdk.runs.wait(None, "recall", input={"user": "ada"})
    assert read["recalled"] == {"name": "Ada"}


async def test_an_item_with_a_ttl_expires(sdk: LangGraphClient, dsn: str) -> None:
    await sdk.store.put_item(["ttl"], key="short", value={"v": 1}, ttl=5)
    assert (await sdk.store.get_item(["ttl"], key="short"))["value"] == {"v": 1}
    conn = await asyncpg.connect(dsn)
    try:
        minutes = await conn.fetchval("SELECT ttl_minutes FROM langgraph.store WHERE prefix = 'ttl' AND key = 'short'")
        await conn.execute("UPDATE langgraph.store SET expires_at = now() - interval '1 second' WHERE prefix = 'ttl'")
    finally:
        await conn.close()
    assert minutes == 5
    assert await sdk.store.get_item(["ttl"], key="short") is None
    assert (await sdk.store.search_items(["ttl"]))["items"] == []


BAD: list[tuple[str, str, dict[str, Any], str]] = [
    ("PUT", "/store/items", {"json": {"namespace": ["a.b"], "key": "k", "value": {}}}, "namespace label 'a.b'"),
    ("PUT", "/store/items", {"json": {"namespace": ["a", ""], "key": "k", "value": {}}}, "namespace label ''"),
    ("PUT", "/store/items", {"json": {"namespace": [], "key": "k", "value": {}}}, "namespace must not be empty"),
    ("PUT", "/store/items", {"json": {"namespace": "a", "key": "k", "value": {}}}, "namespace must be a list"),
    ("PUT", "/store/items", {"json": {"namespace": [1], "key": "k", "value": {}}}, "namespace label '1'"),
    ("PUT", "/store/items", {"json": {"namespace": ["langgraph"], "key": "k", "value": {}}}, "langgraph"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "value": {}}}, "key is required"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "", "value": {}}}, "key must be a non-empty string"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": 5, "value": {}}}, "key must be a non-empty string"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k"}}, "value must be an object"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": [1]}}, "value must be an object"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": {"s": "a\u0000b"}}}, "U+0000"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": {}, "ttl": 0}}, "ttl must be"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": {}, "ttl": "x"}}, "ttl must be"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": {}, "ttl": 1e300}}, "ttl must be"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": {}, "ttl": 1e-7}}, "ttl must be"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k" * 1025, "value": {}}}, "key must be at most 1024 bytes"),
    ("PUT", "/store/items", {"json": {"namespace": ["a" * 600, "b" * 600], "key": "k", "value": {}}}, "at most 1024 bytes"),
    ("PUT", "/store/items", {"json": {"namespace": ["a"], "key": "k", "value": {}, "index": True}}, "index must be"),
    ("PUT", "/store/items", {"content": b"not json"}, "not valid JSON"),
    ("GET", "/store/items", {"params": {"namespace": "a"}}, "key is required"),
    ("GET", "/store/items", {"params": {"key": "k"}}, "namespace is required"),
    ("GET", "/store/items", {"params": {"namespace": "a..b", "key": "k"}}, "namespace label ''"),
    ("GET", "/store/items", {"params": {"namespace": "a", "key": "k", "refresh_ttl": "maybe"}}, "refresh_ttl must be"),
    ("DELETE", "/store/items", {"json": {"namespace": ["a"]}}, "key is required"),
    ("DELETE", "/store/items", {"json": {"key": "k"}}, "namespace must be a list"),
    ("DELETE", "/store/items", {"json": {"namespace": ["a.b"], "key": "k"}}, "namespace label 'a.b'"),
    ("DELETE", "/store/items", {}, "a JSON object body is required"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": ["a"], "limit": 0}}, "limit must be"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": ["a"], "limit": -1}}, "limit must be"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": ["a"], "limit": 1001}}, "limit must be"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": ["a"], "limit": "x"}}, "limit must be"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": ["a"], "offset": -1}}, "offset must be"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": "a"}}, "namespace_prefix must be a list"),
    ("POST", "/store/items/search", {"json": {"namespace_prefix": ["a.b"]}}, "namespace label 'a.b'"),
    ("POST", "/store/items/search", {"json": {"filter": "x"}}, "filter must be an object"),
    ("POST", "/store/items/search", {"json": {"filter": {"n": {"$like": 1}}}}, "operators"),
    ("POST", "/store/items/search", {"json": {"filter": {"n": {"nested": 1}}}}, "$eq"),
    ("POST", "/store/items/search", {"json": {"query": 5}}, "query must be"),
    ("POST", "/store/items/search", {"json": {"refresh_ttl": "yes"}}, "refresh_ttl must be"),
    ("POST", "/store/namespaces", {"json": {"prefix": "a"}}, "prefix must be a list"),
    ("POST", "/store/namespaces", {"json": {"suffix": ["a.b"]}}, "namespace label 'a.b'"),
    ("POST", "/store/namespaces", {"json": {"max_depth": 0}}, "max_depth must be"),
    ("POST", "/store/namespaces", {"json": {"limit": 0}}, "limit must be"),
    ("POST", "/store/namespaces", {"json": {"offset": -1}}, "offset must be"),
]


@pytest.mark.parametrize(("method", "path", "request_", "detail"), BAD, ids=[f"{m} {p} {d}" for m, p, _, d in BAD])
async def test_bad_inputs_are_422_with_a_detail_and_change_nothing(
    http: httpx.AsyncClient, dsn: str, method: str, path: str, request_: dict[str, Any], detail: str
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval("SELECT count(*) FROM langgraph.store"), await conn.fetchval("SELECT position FROM access_log_head")
        answer = await http.request(method, path, **request_)
        after = await conn.fetchval("SELECT count(*) FROM langgraph.store"), await conn.fetchval("SELECT position FROM access_log_head")
    finally:
        await conn.close()
    assert answer.status_code == 422, answer.text
    assert detail in answer.json()["detail"]
    assert after == before


async def test_the_sdk_raises_on_a_bad_limit(sdk: LangGraphClient) -> None:
    with pytest.raises(UnprocessableEntityError):
        await sdk.store.search_items(["a"], limit=0)


async def test_writes_are_recorded_in_the_access_log_and_reads_are_not(sdk: LangGraphClient, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval("SELECT position FROM access_log_head")
        await sdk.store.put_item(["audit"], key="k", value={"b": 2, "a": "é"})
        await sdk.store.get_item(["audit"], key="k")
        await sdk.store.search_items(["audit"])
        await sdk.store.delete_item(["audit"], key="k")
        rows = await conn.fetch("SELECT data::jsonb AS data FROM access_log WHERE position > $1 ORDER BY position", before)
    finally:
        await conn.close()
    entries = [json.loads(row["data"]) for row in rows]
    digest = hashlib.sha256('{"a":"é","b":2}'.encode()).hexdigest()
    assert [(e["action"], e["resource"]) for e in entries] == [
        ("store.put", {"namespace": "audit", "key": "k", "value_sha256": digest}),
        ("store.delete", {"namespace": "audit", "key": "k"}),
    ]
    assert all(e["actor"] is None for e in entries)  # no auth on this server


def test_an_authorization_filter_is_added_to_the_callers() -> None:
    assert combined(None, {"owner": "ada"}) == {"owner": {"$eq": "ada"}}
    assert combined({"n": 1}, {"owner": "ada"}) == {"n": 1, "owner": {"$eq": "ada"}}
    assert combined({"owner": "ada"}, {"owner": "ada"}) == {"owner": {"$eq": "ada"}}
    assert combined({"owner": "bob"}, {"owner": "ada"}) is None  # both cannot hold: nothing matches
    assert combined({"owner": {"$ne": "bob"}}, {"owner": "ada"}) == {"owner": {"$ne": "bob", "$eq": "ada"}}
    assert combined({"n": 1}, None) == {"n": 1}


STORE_AUTH = Auth()


@STORE_AUTH.authenticate
async def _authenticate(authorization: str | None) -> str:
    if not authorization:
        raise Auth.exceptions.HTTPException(status_code=401, detail="missing token")
    return authorization.removeprefix("Bearer ")


@STORE_AUTH.on.store
async def _own_namespace(ctx: Auth.types.AuthContext, value: dict[str, Any]) -> Any:
    """Each user works under a namespace of their own; mallory may not; reads are filtered by owner when asked."""
    if ctx.user.identity == "mallory":
        return False
    value["namespace"] = (ctx.user.identity, *(value["namespace"] or ()))
    if ctx.action in ("get", "search") and value.get("key") != "public" and ctx.user.identity == "filtered":
        return {"owner": "filtered"}
    return None


@pytest.fixture(scope="module")
async def auth_url(dsn: str) -> AsyncIterator[str]:
    async with serve(create_app(dsn, graphs=GRAPHS, settings=SETTINGS, auth=Authorizer(STORE_AUTH))) as base:
        yield base


async def test_handlers_scope_the_namespace_deny_and_filter(auth_url: str, dsn: str) -> None:
    def as_user(name: str) -> LangGraphClient:
        return LangGraphClient(httpx.AsyncClient(base_url=auth_url, headers={"Authorization": f"Bearer {name}"}, timeout=60))

    ada, bob, mallory, filtered = (as_user(n) for n in ("ada", "bob", "mallory", "filtered"))
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval("SELECT position FROM access_log_head")
        await ada.store.put_item(["notes"], key="n1", value={"text": "ada's"})
        await bob.store.put_item(["notes"], key="n1", value={"text": "bob's"})
        assert (await ada.store.get_item(["notes"], key="n1"))["value"] == {"text": "ada's"}
        assert (await bob.store.get_item(["notes"], key="n1"))["namespace"] == ["bob", "notes"]
        assert [i["value"] for i in (await ada.store.search_items(["notes"]))["items"]] == [{"text": "ada's"}]
        assert (await ada.store.list_namespaces())["namespaces"] == [["ada", "notes"]]
        answer = await mallory.http.client.put("/store/items", json={"namespace": ["notes"], "key": "x", "value": {}})
        assert (answer.status_code, answer.json()) == (403, {"detail": "Forbidden"})
        assert (await mallory.http.client.post("/store/items/search", json={})).status_code == 403

        await filtered.store.put_item(["f"], key="mine", value={"owner": "filtered", "n": 1})
        await filtered.store.put_item(["f"], key="other", value={"owner": "someone", "n": 2})
        assert [i["key"] for i in (await filtered.store.search_items(["f"]))["items"]] == ["mine"]
        assert (await filtered.store.search_items(["f"], filter={"owner": "someone"}))["items"] == []
        assert await filtered.store.get_item(["f"], key="other") is None
        assert (await filtered.store.get_item(["f"], key="mine"))["value"]["n"] == 1
        entries = [
            json.loads(r["data"])
            for r in await conn.fetch("SELECT data::jsonb AS data FROM access_log WHERE position > $1 ORDER BY position", before)
        ]
    finally:
        await conn.close()
        for client in (ada, bob, mallory, filtered):
            await client.http.client.aclose()
    assert [(e["actor"]["identity"], e["action"], e["resource"]["namespace"]) for e in entries] == [
        ("ada", "store.put", "ada.notes"),
        ("bob", "store.put", "bob.notes"),
        ("filtered", "store.put", "filtered.f"),
        ("filtered", "store.put", "filtered.f"),
    ]
