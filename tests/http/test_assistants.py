"""Assistants over real HTTP, with the official langgraph-sdk: the served graphs, created assistants, versions, runs."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4, uuid5

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError

from graphledger.runs import demo
from graphledger.runs.assistants import NAMESPACE_GRAPH, graph_assistant_id
from graphledger.runs.serialize import to_jsonable

DEMO_ID = str(uuid5(NAMESPACE_GRAPH, "demo"))
INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}


def test_a_graphs_assistant_id_is_the_reference_servers() -> None:
    # What the LangGraph Agent Server (langgraph dev, API 0.16) shows for graphs named "agent" and "demo".
    assert str(graph_assistant_id("agent")) == "fe096781-5601-53d2-b2f6-0d3403f7e9ca"
    assert str(graph_assistant_id("demo")) == DEMO_ID


async def test_a_served_graph_is_an_assistant(sdk: LangGraphClient) -> None:
    found = await sdk.assistants.search(graph_id="demo")
    system = [a for a in found if a["metadata"] == {"created_by": "system"}]
    assert [a["assistant_id"] for a in system] == [DEMO_ID]
    assistant = system[0]
    assert (assistant["graph_id"], assistant["name"], assistant["version"], assistant["config"], assistant["context"]) == ("demo", "demo", 1, {}, {})
    assert await sdk.assistants.get(DEMO_ID) == assistant
    assert await sdk.assistants.get("demo") == assistant  # by the graph's name
    assert await sdk.assistants.count(metadata={"created_by": "system"}) == 1
    assert await sdk.assistants.count(graph_id="nope") == 0


async def test_the_drawable_graph_and_the_schemas_are_langgraphs(sdk: LangGraphClient) -> None:
    drawn = await sdk.assistants.get_graph(DEMO_ID)
    langgraphs = to_jsonable(demo.graph.get_graph().to_json())
    assert drawn["edges"] == langgraphs["edges"]
    # As the reference shows them: a node's name, without its runnable's class path.
    assert drawn["nodes"] == [{**n, "data": {"name": n["data"]["name"]}} if n.get("type") == "runnable" else n for n in langgraphs["nodes"]]
    assert {node["id"] for node in drawn["nodes"]} >= {"__start__", "agent", "tools", "__end__"}
    schemas = await sdk.assistants.get_schemas(DEMO_ID)
    assert schemas["graph_id"] == "demo"
    assert schemas["input_schema"] == to_jsonable(demo.graph.get_input_jsonschema())
    assert schemas["output_schema"] == to_jsonable(demo.graph.get_output_jsonschema())
    assert set(schemas["state_schema"]["properties"]) == {"messages"} and schemas["state_schema"]["title"] == "demo_state"
    assert set(schemas) == {"graph_id", "input_schema", "output_schema", "state_schema", "config_schema", "context_schema"}
    assert await sdk.assistants.get_subgraphs(DEMO_ID) == {}


async def test_create_change_list_versions_pick_one_and_delete(sdk: LangGraphClient) -> None:
    created = await sdk.assistants.create(
        "demo", config={"configurable": {"tokens": 5}}, metadata={"team": "a"}, name="five tokens", description="short"
    )
    aid = created["assistant_id"]
    assert (created["graph_id"], created["version"], created["name"], created["description"]) == ("demo", 1, "five tokens", "short")
    assert created["config"] == {"configurable": {"tokens": 5}} and created["metadata"] == {"team": "a"}
    assert created["context"] == {"tokens": 5}  # as the reference: the context mirrors a configurable given alone
    with pytest.raises(ConflictError):
        await sdk.assistants.create("demo", assistant_id=aid)
    assert (await sdk.assistants.create("demo", assistant_id=aid, if_exists="do_nothing"))["version"] == 1

    changed = await sdk.assistants.update(aid, config={"configurable": {"tokens": 7}}, metadata={"stage": "b"})
    assert changed["version"] == 2 and changed["config"] == {"configurable": {"tokens": 7}} and changed["context"] == {"tokens": 7}
    assert changed["metadata"] == {"team": "a", "stage": "b"} and changed["name"] == "five tokens"  # merged, kept
    versions = await sdk.assistants.get_versions(aid)
    assert [v["version"] for v in versions] == [2, 1] and "updated_at" not in versions[0]
    assert [v["version"] for v in await sdk.assistants.get_versions(aid, metadata={"stage": "b"})] == [2]
    assert [a["assistant_id"] for a in await sdk.assistants.search(metadata={"team": "a"})] == [aid]

    back = await sdk.assistants.set_latest(aid, 1)
    assert back["version"] == 1 and back["config"] == {"configurable": {"tokens": 5}} and back["metadata"] == {"team": "a"}
    assert (await sdk.assistants.update(aid, name="renamed"))["version"] == 3  # after the highest, not after the one in use

    await sdk.assistants.delete(aid)
    with pytest.raises(NotFoundError):
        await sdk.assistants.get(aid)
    assert await sdk.assistants.count(metadata={"team": "a"}) == 0


async def test_search_sorts_and_pages(sdk: LangGraphClient) -> None:
    tag = str(uuid4())
    ids = [(await sdk.assistants.create("demo", metadata={"tag": tag}, name=f"n{i}"))["assistant_id"] for i in range(3)]
    newest_first = await sdk.assistants.search(metadata={"tag": tag})
    assert [a["assistant_id"] for a in newest_first] == ids[::-1]
    by_name = await sdk.assistants.search(metadata={"tag": tag}, sort_by="name", sort_order="asc", limit=2, offset=1)
    assert [a["name"] for a in by_name] == ["n1", "n2"]
    selected = await sdk.assistants.search(metadata={"tag": tag}, select=["assistant_id", "name"], limit=1)
    assert selected == [{"assistant_id": ids[-1], "name": "n2"}]


async def _created(http: httpx.AsyncClient, thread_id: str, run_id: str) -> dict[str, Any]:
    events = (await http.get(f"/threads/{thread_id}/runs/{run_id}/events", params={"kinds": "run.created"})).json()["events"]
    created: dict[str, Any] = events[0]["data"]
    return created


async def test_a_run_uses_its_assistants_config_and_records_the_assistant_and_version(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    assistant = await sdk.assistants.create("demo", config={"configurable": {"fail": "the assistant says no"}})
    aid = assistant["assistant_id"]
    thread = await sdk.threads.create()
    failed = await sdk.runs.wait(thread["thread_id"], aid, input=INPUT, raise_error=False)
    assert failed == {"__error__": {"error": "RuntimeError", "message": "the assistant says no"}}
    run = (await sdk.runs.list(thread["thread_id"]))[0]
    assert run["assistant_id"] == aid
    created = await _created(http, thread["thread_id"], run["run_id"])
    assert (created["assistant_id"], created["assistant_version"], created["graph_id"]) == (aid, 1, "demo")

    overridden = await sdk.runs.wait(thread["thread_id"], aid, input=INPUT, config={"configurable": {"fail": ""}})
    assert "__error__" not in overridden  # the run's own config wins, key by key

    await sdk.assistants.update(aid, config={"configurable": {"tokens": 3}})
    ok = await sdk.runs.wait(thread["thread_id"], aid, input=INPUT)
    assert ok["messages"][-1]["type"] == "ai"
    latest = (await sdk.runs.list(thread["thread_id"]))[0]
    assert (await _created(http, thread["thread_id"], latest["run_id"]))["assistant_version"] == 2
    by_name = await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT)  # a graph's name still works
    assert "__error__" not in by_name
    newest = (await sdk.runs.list(thread["thread_id"]))[0]
    created = await _created(http, thread["thread_id"], newest["run_id"])
    assert (created["assistant_id"], created["graph_id"], created["assistant_version"]) == (DEMO_ID, "demo", 1)
    state = await sdk.threads.get_state(thread["thread_id"])  # read through the graph the runs executed
    assert state["values"]["messages"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/assistants/not-a-graph-or-uuid", None, 422),
        ("GET", f"/assistants/{uuid4()}", None, 404),
        ("GET", f"/assistants/{uuid4()}/graph", None, 404),
        ("GET", f"/assistants/{DEMO_ID}/graph?xray=maybe", None, 422),
        ("POST", "/assistants", {}, 422),
        ("POST", "/assistants", {"graph_id": "nope"}, 404),
        ("POST", "/assistants", {"graph_id": "demo", "assistant_id": "demo"}, 422),
        ("POST", "/assistants", {"graph_id": "demo", "name": "a\u0000b"}, 422),
        ("POST", "/assistants", {"graph_id": "demo", "config": {"k": "a\u0000"}}, 422),
        ("POST", "/assistants", {"graph_id": "demo", "metadata": []}, 422),
        ("POST", "/assistants", {"graph_id": "demo", "if_exists": "explode"}, 422),
        ("POST", "/assistants/search", {"sort_by": "bogus"}, 422),
        ("POST", "/assistants/search", {"limit": 0}, 422),
        ("POST", "/assistants/search", {"select": ["nope"]}, 422),
        ("POST", "/assistants/count", {"metadata": "x"}, 422),
        ("PATCH", f"/assistants/{uuid4()}", {"name": "x"}, 404),
        ("PATCH", f"/assistants/{DEMO_ID}", {"graph_id": "nope"}, 404),
        ("DELETE", f"/assistants/{uuid4()}", None, 404),
        ("POST", f"/assistants/{DEMO_ID}/latest", {"version": 0}, 422),
        ("POST", f"/assistants/{DEMO_ID}/latest", {"version": 99}, 404),
        ("POST", f"/assistants/{uuid4()}/versions", {}, 404),
        ("POST", "/runs/wait", {"assistant_id": str(uuid4())}, 404),
    ],
)
async def test_bad_input_gets_a_clear_4xx(http: httpx.AsyncClient, method: str, path: str, body: Any, status: int) -> None:
    content = json.dumps(body).encode() if body is not None else None
    response = await http.request(method, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)
