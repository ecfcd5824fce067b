"""A test graph with a subgraph that writes to the custom stream: namespaces and the events stream."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph


def inner(state: MessagesState) -> dict[str, Any]:
    get_stream_writer()({"inner": "hello"})
    return {"messages": [AIMessage(content="from inner", id="ai-inner")]}


def outer(state: MessagesState) -> dict[str, Any]:
    get_stream_writer()({"outer": 1})
    return {"messages": [AIMessage(content="outer done", id="ai-outer")]}


_child = StateGraph(MessagesState)
_child.add_node("inner", inner)
_child.add_edge(START, "inner")
_child.add_edge("inner", END)

_parent = StateGraph(MessagesState)
_parent.add_node("child", _child.compile())
_parent.add_node("outer", outer)
_parent.add_edge(START, "child")
_parent.add_edge("child", "outer")
_parent.add_edge("outer", END)
graph = _parent.compile()
