"""Graphs by name from langgraph.json, --graph flags, or the bundled demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphledger.runs import GraphLoadError, GraphRegistry, UnknownAssistant

AGENT = """
from langgraph.graph import StateGraph, START, END, MessagesState
from helper import reply  # a neighbour of this file

async def node(state):
    return {"messages": [("ai", reply)]}

builder = StateGraph(MessagesState)
builder.add_node("node", node)
builder.add_edge(START, "node")
builder.add_edge("node", END)
graph = builder.compile()

def make_graph(config):
    assert "configurable" in config
    return graph

async def make_graph_async():
    return graph

not_a_graph = 42
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "agent.py").write_text(AGENT)
    (tmp_path / "src" / "helper.py").write_text("reply = 'hello'\n")
    (tmp_path / "langgraph.json").write_text(
        json.dumps({"dependencies": ["."], "graphs": {"agent": "./src/agent.py:graph", "factory": {"path": "./src/agent.py:make_graph"}}})
    )
    return tmp_path


async def test_langgraph_json_paths_are_relative_to_the_file(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    registry = GraphRegistry.configure(project / "langgraph.json", cwd=elsewhere)
    assert registry.names == ["agent", "factory"]
    graph = await registry.resolve("agent", {"configurable": {}})
    result = await graph.ainvoke({"messages": []})
    assert result["messages"][-1].content == "hello"
    assert await registry.resolve("factory", {"configurable": {}}) is await registry.resolve("agent", {})


def test_the_working_directory_langgraph_json_is_read_when_present(project: Path) -> None:
    assert GraphRegistry.configure(cwd=project).names == ["agent", "factory"]


async def test_flags_add_graphs_and_factories_may_be_async(project: Path) -> None:
    registry = GraphRegistry.configure(flags=["late=./src/agent.py:make_graph_async", "demo2=graphledger.runs.demo:graph"], cwd=project)
    assert registry.names == ["agent", "demo2", "factory", "late"]
    assert (await registry.resolve("late", {})).name == "LangGraph"


def test_the_demo_is_served_when_nothing_is_configured(tmp_path: Path) -> None:
    assert GraphRegistry.configure(cwd=tmp_path).names == ["demo"]


async def test_a_checkpointer_is_attached_unless_the_graph_has_one(project: Path) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    registry = GraphRegistry.configure(cwd=project)
    saver = InMemorySaver()
    graph = await registry.resolve("agent", {}, saver)
    assert graph.checkpointer is saver
    own = InMemorySaver()
    registry = GraphRegistry({"own": (await registry.resolve("agent", {})).copy(update={"checkpointer": own})})
    assert (await registry.resolve("own", {}, saver)).checkpointer is own


def test_an_unknown_assistant_names_the_registered_graphs(project: Path) -> None:
    with pytest.raises(UnknownAssistant, match="'nope' not found; registered graphs: agent, factory"):
        GraphRegistry.configure(cwd=project).check("nope")


@pytest.mark.parametrize(
    ("graphs", "message"),
    [
        ({"a": "./src/missing.py:graph"}, "not found"),
        ({"a": "./src/agent.py:nothing"}, "has no attribute 'nothing'"),
        ({"a": "./src/agent.py:not_a_graph"}, "is a int, not a compiled graph"),
        ({"a": "no_such_package_xyz.module:graph"}, "cannot import no_such_package_xyz.module"),
        ({"a": "./src/agent.py"}, "must be ./file.py:attribute"),
        ({"a": 5}, "needs a spec string"),
        ({}, 'needs a "graphs" object'),
    ],
)
def test_bad_specs_are_clear(project: Path, graphs: dict[str, object], message: str) -> None:
    (project / "langgraph.json").write_text(json.dumps({"graphs": graphs}))
    with pytest.raises(GraphLoadError, match=message):
        GraphRegistry.configure(cwd=project)


def test_a_file_that_fails_to_import_says_why(project: Path) -> None:
    (project / "src" / "broken.py").write_text("raise ValueError('no key configured')\n")
    with pytest.raises(GraphLoadError, match="ValueError: no key configured"):
        GraphRegistry.configure(flags=["b=./src/broken.py:graph"], cwd=project)


def test_bad_files_and_flags(project: Path) -> None:
    with pytest.raises(GraphLoadError, match="cannot read"):
        GraphRegistry.configure(project / "absent.json")
    (project / "bad.json").write_text("{not json")
    with pytest.raises(GraphLoadError, match="not valid JSON"):
        GraphRegistry.configure(project / "bad.json")
    with pytest.raises(GraphLoadError, match="must be NAME="):
        GraphRegistry.configure(flags=["just-a-name"], cwd=project)
