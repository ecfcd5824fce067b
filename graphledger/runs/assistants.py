"""Assistants: the graphs served, and configured copies of them, as a run names them.

Every served graph is an assistant, registered when the server starts, whose
id is derived from the graph's name as the LangGraph Agent Server derives it
(a UUID 5 in a fixed namespace), so that both servers give a graph the same
id. A run names its assistant by that id, by the id of an assistant created
over the API, or by the graph's name. The assistant's config and context are
the run's defaults: the run's own values win, ``configurable`` key by key.
The run's ``run.created`` records the assistant's id and version and the
graph it executes (``graph_id``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any
from uuid import UUID, uuid5

from langgraph._internal._pydantic import create_model
from langgraph.warnings import LangGraphDeprecatedSinceV10

from graphledger.ledger import Ledger
from graphledger.ledger.assistants import Assistant
from graphledger.runs.errors import UnknownAssistant
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.serialize import to_jsonable

NAMESPACE_GRAPH = UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""The namespace of the ids of the served graphs' assistants (the LangGraph Agent Server's)."""
SYSTEM_METADATA = {"created_by": "system"}


def graph_assistant_id(graph_id: str) -> UUID:
    """The id of the assistant of the served graph named ``graph_id``."""
    return uuid5(NAMESPACE_GRAPH, graph_id)


def parse_id(value: str) -> UUID | None:
    """``value`` as an assistant id, or None when it is not a UUID (then it may name a graph)."""
    try:
        return UUID(value)
    except ValueError:
        return None


async def register(ledger: Ledger, graphs: GraphRegistry) -> None:
    """Create the assistant of each served graph that has none yet (version 1, no config)."""
    async with ledger.session() as session:
        for name in graphs.names:
            await session.assistants.insert(graph_assistant_id(name), name, name=name, metadata=SYSTEM_METADATA)


async def find(ledger: Ledger, graphs: GraphRegistry, assistant_id: str) -> Assistant:
    """The assistant ``assistant_id`` names (an id, or a served graph's name); :class:`UnknownAssistant` otherwise.

    The assistant of a served graph is registered again when it was deleted.
    """
    found_id = parse_id(assistant_id)
    if found_id is None:
        graphs.check(assistant_id)
        found_id = graph_assistant_id(assistant_id)
    served = {graph_assistant_id(name): name for name in graphs.names}
    async with ledger.session() as session:
        found = await session.assistants.get(found_id)
        if found is None and found_id in served:
            name = served[found_id]
            await session.assistants.insert(found_id, name, name=name, metadata=SYSTEM_METADATA)
            found = await session.assistants.get(found_id)
    if found is None:
        raise UnknownAssistant(f"assistant {assistant_id} not found")
    if found.graph_id not in graphs:
        raise UnknownAssistant(f"assistant {assistant_id} runs graph {found.graph_id!r}, which this server does not serve")
    return found


def with_defaults(body: Mapping[str, Any], assistant: Assistant) -> dict[str, Any]:
    """A run request ``body`` with the assistant's config and context under its own values, naming the assistant."""
    merged = dict(body)
    config = body.get("config")
    if isinstance(config, Mapping) and assistant.config:
        configurable = config.get("configurable")
        defaults = assistant.config.get("configurable")
        merged["config"] = {**assistant.config, **config}
        if isinstance(configurable, Mapping) and isinstance(defaults, Mapping):
            merged["config"]["configurable"] = {**defaults, **configurable}
    elif config is None and assistant.config:
        merged["config"] = dict(assistant.config)
    context = body.get("context")
    if isinstance(context, Mapping) and assistant.context:
        merged["context"] = {**assistant.context, **context}
    elif context is None and assistant.context:
        merged["context"] = dict(assistant.context)
    merged["assistant_id"] = str(assistant.assistant_id)
    return merged


# -- what the API shows of a graph -------------------------------------------------------


async def drawable(graph: Any, xray: bool | int = False) -> dict[str, Any]:
    """The drawable graph, as LangGraph gives it: ``graph.get_graph(xray=...).to_json()``.

    As in the reference, a node that runs code shows its name, not the
    LangChain class path of its runnable.
    """
    found = await graph.aget_graph(xray=xray) if hasattr(graph, "aget_graph") else graph.get_graph(xray=xray)
    json: dict[str, Any] = to_jsonable(found.to_json())
    for node in json.get("nodes") or []:
        if isinstance(node, dict) and node.get("type") == "runnable" and isinstance(node.get("data"), dict):
            node["data"].pop("id", None)
    return json


def _schema(make: Any) -> Any:
    try:
        return to_jsonable(make())
    except Exception:  # a schema pydantic cannot express: the reference answers null as well
        return None


def state_schema(graph: Any, title: str) -> Any:
    """The JSON schema of the graph's state: one field per channel it streams, of the channel's update type."""
    channels = getattr(graph, "channels", None) or {}
    fields: dict[str, Any] = {}
    for name in getattr(graph, "stream_channels_list", None) or []:
        channel = channels.get(name)
        if channel is None:
            continue
        try:
            create_model(name, root=(channel.UpdateType, None)).model_json_schema()
            fields[name] = (channel.UpdateType, None)
        except Exception:  # a type pydantic cannot describe: any value
            fields[name] = (Any, None)
    # LangGraph's own model factory, as its input and output schemas use: it takes any field name.
    return create_model(title, field_definitions=fields).model_json_schema()


def _config_schema(graph: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)  # still what the reference answers
        schema: dict[str, Any] = graph.config_schema().model_json_schema()
    return schema if schema.get("properties") else {}  # nothing configurable: {}, as the reference answers


def schemas(graph: Any, graph_id: str) -> dict[str, Any]:
    """The graph's input, output, state, config and context JSON schemas (null where it has none to give)."""
    return {
        "input_schema": _schema(graph.get_input_jsonschema),
        "output_schema": _schema(graph.get_output_jsonschema),
        "state_schema": _schema(lambda: state_schema(graph, f"{graph_id}_state")),
        "config_schema": _schema(lambda: _config_schema(graph)),
        "context_schema": _schema(graph.get_context_jsonschema),
    }


async def subgraphs(graph: Any, graph_id: str, *, namespace: str | None = None, recurse: bool = False) -> dict[str, Any]:
    """The schemas of the graph's subgraphs, by namespace (only ``namespace``'s when given; nested ones with ``recurse``)."""
    found: dict[str, Any] = {}
    async for name, subgraph in graph.aget_subgraphs(namespace=namespace, recurse=recurse):
        found[name] = schemas(subgraph, f"{graph_id}_{name}")
    return found
