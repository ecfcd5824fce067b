"""A graph that answers with who started its run, as LangGraph passes it."""

from __future__ import annotations

from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    x: Any
    who: Any


def whoami(state: State, config: RunnableConfig) -> State:
    configurable = config["configurable"]
    user = configurable.get("langgraph_auth_user")
    return {
        "who": {
            "identity": user.identity if user is not None else None,
            "item": user["identity"] if user is not None else None,
            "user_id": configurable.get("langgraph_auth_user_id"),
            "permissions": list(configurable.get("langgraph_auth_permissions") or []),
        }
    }


builder = StateGraph(State)
builder.add_node("whoami", whoami)
builder.add_edge(START, "whoami")
builder.add_edge("whoami", END)
graph = builder.compile()
