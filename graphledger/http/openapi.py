"""``/openapi.json``: the OpenAPI 3.1 description of every route, its parameters, bodies and answers.

Written out rather than derived from the handlers, so that it states the
contract (statuses, shapes) the handlers are tested against: a test checks
that it names exactly the app's routes, and a schemathesis run checks that
the server keeps to it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from graphledger import __version__
from graphledger.http.assistants import MAX_TEXT
from graphledger.http.assistants import SELECT as ASSISTANT_SELECT
from graphledger.http.common import MAX_JSON_DEPTH
from graphledger.http.runs import MAX_BATCH
from graphledger.http.store import MAX_NAME_BYTES, MAX_TTL, MIN_TTL
from graphledger.http.store import OPERATORS as STORE_OPERATORS
from graphledger.http.threads import SELECT
from graphledger.ledger.assistants import SORT_BY as ASSISTANT_SORT_BY
from graphledger.ledger.events import RUN_STATUSES
from graphledger.ledger.threads import SORT_BY
from graphledger.projections.run_status import THREAD_STATUSES
from graphledger.projections.token_usage import TOKEN_FIELDS
from graphledger.projections.usage import BUCKETS, DIMENSIONS, PERCENTILES, SUMS, field_name
from graphledger.runs.lifecycle import BULK_CANCEL_STATUSES
from graphledger.runs.request import (
    CANCEL_ACTIONS,
    IF_NOT_EXISTS,
    MAX_AFTER_SECONDS,
    MAX_WEBHOOK_LENGTH,
    MULTITASK_STRATEGIES,
    ON_COMPLETION,
    ON_DISCONNECT,
    STREAM_MODES,
)
from graphledger.runs.thread_sse import THREAD_STREAM_MODES

UUID = {"type": "string", "format": "uuid"}
TIME = {"type": "string", "format": "date-time"}
OBJECT = {"type": "object"}
ANY: dict[str, Any] = {}
CHECKPOINT_ID = {"type": "string", "format": "uuid", "description": "A checkpoint id (LangGraph's are UUIDs)."}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Any], required: list[str] | None = None, *, extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        schema["required"] = required
    return schema


# One event of a stream (OpenAPI 3.2's itemSchema for text/event-stream); heartbeats are comments, not events.
SSE_EVENT = obj(
    {
        "event": {"type": "string", "description": "metadata, error, or <mode>[|<namespace>]"},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "One line of JSON."},
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "The event's seq: send it back as Last-Event-ID."},
    },
    ["event", "data", "id"],
    extra=True,
)
STREAM_MODE = {"type": "string", "enum": list(STREAM_MODES)}
TOTAL_FIELDS = ["calls", "unknown_usage_calls", *TOKEN_FIELDS]
RUN_COST = {
    "cost": {**nullable({"type": "number", "minimum": 0}), "description": "USD of the priced calls (a run's only); null when none is priced."},
    "unpriced_calls": {"type": "integer", "minimum": 0, "description": "Calls with usage that no price source knows."},
    "cost_sources": {"type": "array", "items": {"type": "string"}},
}
TOTALS = obj(dict.fromkeys(TOTAL_FIELDS, {"type": "integer", "minimum": 0}), TOTAL_FIELDS)



def _group(key: str) -> dict[str, Any]:
    """One row of a usage breakdown: the group's key (null: not recorded) and its totals."""
    return obj({key: nullable({"type": "string"}), **TOTALS["properties"]}, [key, *TOTALS["properties"]])


THREAD_FIELDS: dict[str, Any] = {
    "thread_id": UUID,
    "created_at": TIME,
    "updated_at": TIME,
    "metadata": OBJECT,
    "status": {"type": "string", "enum": list(THREAD_STATUSES)},
    "values": nullable(ANY),
    "interrupts": {"type": "object", "additionalProperties": {"type": "array", "items": ref("Interrupt")}},
}

ASSISTANT_FIELDS: dict[str, Any] = {
    "assistant_id": UUID,
    "graph_id": {"type": "string"},
    "config": OBJECT,
    "context": OBJECT,
    "created_at": TIME,
    "updated_at": TIME,
    "metadata": OBJECT,
    "version": {"type": "integer", "minimum": 1},
    "name": {"type": "string"},
    "description": nullable({"type": "string"}),
}
TEXT = {"type": "string", "maxLength": MAX_TEXT}
JSON_SCHEMA = nullable(OBJECT)
DRAWABLE = obj({"nodes": {"type": "array"}, "edges": {"type": "array"}}, ["nodes", "edges"], extra=True)
GRAPH_SCHEMAS = {name: JSON_SCHEMA for name in ("input_schema", "output_schema", "state_schema", "config_schema", "context_schema")}

LABEL = {"type": "string", "minLength": 1, "pattern": "^[^.]+$", "description": "A namespace label: no periods."}
NAMESPACE = {
    "type": "array", "items": LABEL, "minItems": 1,
    "description": f"The labels joined by '.' are at most {MAX_NAME_BYTES} bytes (UTF-8); the first is not 'langgraph'.",
}
STORE_KEY = {"type": "string", "minLength": 1, "description": f"At most {MAX_NAME_BYTES} bytes (UTF-8)."}
LABELS = nullable({"type": "array", "items": LABEL})
ITEM_FIELDS: dict[str, Any] = {
    "namespace": {"type": "array", "items": {"type": "string"}},
    "key": {"type": "string"},
    "value": OBJECT,
    "created_at": TIME,
    "updated_at": TIME,
}
STORE_FILTER = nullable({
    "type": "object",
    "description": "Top-level keys of an item's value: a value to equal, or {operator: value} with operators "
    + ", ".join(STORE_OPERATORS) + ".",
})
THREAD_SSE_EVENT = obj(
    {
        "event": {"type": "string", "description": "metadata, error, state_update, or <mode>[|<namespace>]"},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "One line of JSON."},
        "id": {"type": "string", "pattern": "^[0-9]+:[0-9]+$", "description": "The event's place in the feed: send it back as Last-Event-ID."},
    },
    ["event", "data", "id"],
    extra=True,
)

SCHEMAS: dict[str, Any] = {
    "Error": obj({"detail": {"type": "string"}}, ["detail"]),
    "StoreItem": obj(ITEM_FIELDS, list(ITEM_FIELDS)),
    "StoreSearchItem": obj({**ITEM_FIELDS, "score": nullable({"type": "number"})}, [*ITEM_FIELDS, "score"]),
    "StorePut": obj(
        {
            "namespace": NAMESPACE,
            "key": STORE_KEY,
            "value": OBJECT,
            "index": {"anyOf": [{"const": False}, {"type": "null"}, {"type": "array", "items": {"type": "string"}}]},
            "ttl": nullable({"type": "number", "minimum": MIN_TTL, "maximum": MAX_TTL, "description": "Minutes until the item expires."}),
        },
        ["namespace", "key", "value"],
        extra=True,
    ),
    "StoreDelete": obj({"namespace": NAMESPACE, "key": STORE_KEY}, ["namespace", "key"], extra=True),
    "StoreSearch": obj(
        {
            "namespace_prefix": LABELS,
            "filter": STORE_FILTER,
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "offset": nullable({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
            "query": nullable({"type": "string", "description": "Ignored: the store has no embeddings configured."}),
            "refresh_ttl": nullable({"type": "boolean"}),
        },
        extra=True,
    ),
    "StoreNamespaces": obj(
        {
            "prefix": LABELS,
            "suffix": LABELS,
            "max_depth": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "offset": nullable({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
        },
        extra=True,
    ),
    "Thread": obj(THREAD_FIELDS, list(THREAD_FIELDS)),
    "ThreadSelected": obj(THREAD_FIELDS),  # a search's ``select``: any of them
    "Assistant": obj(ASSISTANT_FIELDS, list(ASSISTANT_FIELDS)),
    "AssistantSelected": obj(ASSISTANT_FIELDS),
    "AssistantVersion": obj(
        {k: v for k, v in ASSISTANT_FIELDS.items() if k != "updated_at"}, [k for k in ASSISTANT_FIELDS if k != "updated_at"]
    ),
    "AssistantCreate": obj(
        {
            "assistant_id": nullable(UUID),
            "graph_id": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "description": "The name of a served graph."},
            "config": nullable(OBJECT),
            "context": nullable(OBJECT),
            "metadata": nullable(OBJECT),
            "if_exists": nullable({"type": "string", "enum": ["raise", "do_nothing"]}),
            "name": nullable(TEXT),
            "description": nullable(TEXT),
        },
        ["graph_id"],
        extra=True,
    ),
    "AssistantUpdate": obj(
        {
            "graph_id": nullable({"type": "string", "minLength": 1, "maxLength": MAX_TEXT}),
            "config": nullable(OBJECT),
            "context": nullable(OBJECT),
            "metadata": nullable({"type": "object", "description": "Merged into the assistant's (top-level keys replaced)."}),
            "name": nullable(TEXT),
            "description": nullable(TEXT),
        },
        extra=True,
    ),
    "AssistantSearch": obj(
        {
            "graph_id": nullable(TEXT),
            "metadata": nullable(OBJECT),
            "name": nullable(TEXT),
            "sort_by": nullable({"type": "string", "enum": list(ASSISTANT_SORT_BY)}),
            "sort_order": nullable({"type": "string", "enum": ["asc", "desc"]}),
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "offset": nullable({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
            "select": nullable({"type": "array", "items": {"type": "string", "enum": list(ASSISTANT_SELECT)}, "minItems": 1}),
        },
        extra=True,
    ),
    "AssistantCount": obj({"graph_id": nullable(TEXT), "metadata": nullable(OBJECT), "name": nullable(TEXT)}, extra=True),
    "AssistantVersions": obj(
        {
            "metadata": nullable(OBJECT),
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "offset": nullable({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
        },
        extra=True,
    ),
    "AssistantLatest": obj({"version": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}, ["version"], extra=True),
    "GraphSchemas": obj({"graph_id": {"type": "string"}, **GRAPH_SCHEMAS}, ["graph_id", *GRAPH_SCHEMAS]),
    "SubgraphSchemas": {"type": "object", "additionalProperties": obj(GRAPH_SCHEMAS, list(GRAPH_SCHEMAS))},
    "ThreadUpdate": obj({"metadata": nullable(OBJECT), "ttl": ANY}, extra=True),
    "ThreadSearch": obj(
        {
            "metadata": nullable(OBJECT),
            "values": nullable({"type": "object", "maxProperties": 0, "description": "Filtering by state values is not supported."}),
            "ids": nullable({"type": "array", "items": UUID, "maxItems": 1000}),
            "status": nullable({"type": "string", "enum": list(THREAD_STATUSES)}),
            "sort_by": nullable({"type": "string", "enum": list(SORT_BY)}),
            "sort_order": nullable({"type": "string", "enum": ["asc", "desc"]}),
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "offset": nullable({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
            "select": nullable({"type": "array", "items": {"type": "string", "enum": list(SELECT)}, "minItems": 1}),
        },
        extra=True,
    ),
    "ThreadCount": obj(
        {
            "metadata": nullable(OBJECT),
            "values": nullable({"type": "object", "maxProperties": 0, "description": "Filtering by state values is not supported."}),
            "ids": nullable({"type": "array", "items": UUID, "maxItems": 1000}),
            "status": nullable({"type": "string", "enum": list(THREAD_STATUSES)}),
        },
        extra=True,
    ),
    "Checkpoint": obj(
        {
            "thread_id": {"type": "string"},
            "checkpoint_ns": {"type": "string"},
            "checkpoint_id": {"type": "string"},
            "checkpoint_map": nullable(OBJECT),
        },
        ["thread_id", "checkpoint_ns", "checkpoint_id"],
        extra=True,
    ),
    "CheckpointRef": obj(
        {
            "checkpoint_id": nullable(CHECKPOINT_ID),
            "checkpoint_ns": nullable({"type": "string"}),
            "checkpoint_map": nullable({"type": "object", "additionalProperties": {"type": "string"}}),
            "thread_id": nullable({"type": "string"}),
        },
        extra=True,
    ),
    "Interrupt": obj({"id": nullable({"type": "string"}), "value": ANY}, extra=True),
    "Task": obj(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "path": {"type": "array"},
            "error": nullable({"type": "string"}),
            "interrupts": {"type": "array", "items": ref("Interrupt")},
            "checkpoint": nullable(ref("Checkpoint")),
            "state": nullable(ref("ThreadState")),
            "result": ANY,
        },
        ["id", "name", "path", "error", "interrupts", "checkpoint", "state", "result"],
    ),
    "ThreadState": obj(
        {
            "values": ANY,
            "next": {"type": "array", "items": {"type": "string"}},
            "tasks": {"type": "array", "items": ref("Task")},
            "metadata": nullable(OBJECT),
            "created_at": nullable({"type": "string"}),
            "checkpoint": nullable(ref("Checkpoint")),
            "parent_checkpoint": nullable(ref("Checkpoint")),
            "interrupts": {"type": "array", "items": ref("Interrupt")},
            "checkpoint_id": nullable({"type": "string"}),
            "parent_checkpoint_id": nullable({"type": "string"}),
        },
        ["values", "next", "tasks", "metadata", "created_at", "checkpoint", "parent_checkpoint", "interrupts"],
    ),
    "StateCheckpointRequest": obj(
        {"checkpoint": ref("CheckpointRef"), "subgraphs": nullable({"type": "boolean"})}, ["checkpoint"], extra=True
    ),
    "HistoryRequest": obj(
        {
            "limit": nullable({"type": "integer", "minimum": 1, "maximum": 1000}),
            "before": nullable({"anyOf": [CHECKPOINT_ID, ref("CheckpointRef")]}),
            "metadata": nullable(OBJECT),
            "checkpoint": nullable(ref("CheckpointRef")),
        },
        extra=True,
    ),
    "StateUpdate": obj(
        {
            "values": ANY,
            "as_node": nullable({"type": "string", "maxLength": 1000}),
            "checkpoint": nullable(ref("CheckpointRef")),
            "checkpoint_id": nullable(CHECKPOINT_ID),
        },
        extra=True,
    ),
    "StateUpdated": obj(
        {"checkpoint": ref("Checkpoint"), "configurable": ref("Checkpoint"), "checkpoint_id": {"type": "string"}},
        ["checkpoint", "configurable", "checkpoint_id"],
    ),
    "ThreadCreate": obj(
        {
            "thread_id": nullable(UUID),
            "metadata": nullable(OBJECT),
            "if_exists": nullable({"type": "string", "enum": ["raise", "do_nothing"]}),
        },
        extra=True,
    ),
    "Run": obj(
        {
            "run_id": UUID,
            "thread_id": UUID,
            "assistant_id": nullable({"type": "string"}),
            "created_at": TIME,
            "updated_at": TIME,
            "status": {"type": "string", "enum": list(RUN_STATUSES)},
            "metadata": OBJECT,
            "multitask_strategy": nullable({"type": "string"}),
            "kwargs": OBJECT,
        },
        ["run_id", "thread_id", "assistant_id", "created_at", "updated_at", "status", "metadata", "multitask_strategy", "kwargs"],
    ),
    "RunCreate": obj(
        {
            "assistant_id": {"type": "string", "minLength": 1, "description": "An assistant's id, or the name of a served graph."},
            "input": ANY,
            "command": nullable(obj({"resume": ANY, "update": ANY, "goto": ANY}, extra=False) | {"minProperties": 1}),
            "config": nullable(
                obj({"configurable": nullable(OBJECT), "recursion_limit": nullable({"type": "integer", "minimum": 1})}, extra=True)
            ),
            "context": nullable(OBJECT),
            "metadata": nullable(OBJECT),
            "stream_mode": nullable({"anyOf": [STREAM_MODE, {"type": "array", "items": STREAM_MODE, "minItems": 1}]}),
            "stream_subgraphs": nullable({"type": "boolean"}),
            "multitask_strategy": nullable({"type": "string", "enum": list(MULTITASK_STRATEGIES)}),
            "on_disconnect": nullable({"type": "string", "enum": list(ON_DISCONNECT)}),
            "if_not_exists": nullable({"type": "string", "enum": list(IF_NOT_EXISTS)}),
            "interrupt_before": nullable({"anyOf": [{"const": "*"}, {"type": "array", "items": {"type": "string"}}]}),
            "interrupt_after": nullable({"anyOf": [{"const": "*"}, {"type": "array", "items": {"type": "string"}}]}),
            "checkpoint_id": nullable(CHECKPOINT_ID | {
                "description": "Start from this checkpoint of the thread (time travel: the run forks the thread's history there)."
            }),
            "checkpoint": nullable(obj(
                {
                    "checkpoint_id": nullable(CHECKPOINT_ID),
                    "checkpoint_ns": nullable({"const": "", "description": "A run starts from a checkpoint of the thread's graph."}),
                    "checkpoint_map": nullable({"type": "object", "additionalProperties": {"type": "string"}}),
                    "thread_id": nullable({"type": "string"}),
                },
                extra=True,
            )),
            "after_seconds": nullable({
                "type": "number", "minimum": 0, "maximum": MAX_AFTER_SECONDS,
                "description": "The run stays pending this long before a worker may start it.",
            }),
            "on_completion": nullable({
                "type": "string", "enum": list(ON_COMPLETION),
                "description": "A stateless run's new thread, once the run ends: deleted (the default) or kept. Ignored for a thread's run.",
            }),
            "webhook": nullable({
                "type": "string", "minLength": 1, "maxLength": MAX_WEBHOOK_LENGTH,
                "description": (
                    "An http(s) URL the run is POSTed to once it ends (retried on no answer, 5xx and 429). "
                    "A server started with --webhook-host refuses other hosts with 422."
                ),
            }),
        },
        ["assistant_id"],
        extra=True,
    ),
    "RunBatch": {"type": "array", "items": ref("RunCreate"), "minItems": 1, "maxItems": MAX_BATCH},
    "Feedback": obj(
        {
            "feedback_id": {"type": "string"},
            "thread_id": UUID,
            "run_id": UUID,
            "key": {"type": "string"},
            "score": nullable({"type": "number"}),
            "comment": nullable({"type": "string"}),
            "actor": nullable(OBJECT),
            "created_at": TIME,
            "seq": {"type": "integer", "minimum": 1},
        },
        ["feedback_id", "thread_id", "run_id", "key", "score", "comment", "actor", "created_at", "seq"],
    ),
    "FeedbackCreate": obj(
        {
            "key": {"type": "string", "minLength": 1, "maxLength": 200},
            "score": nullable({"type": "number"}),
            "comment": nullable({"type": "string", "maxLength": 10_000}),
        },
        ["key"],
        extra=False,
    ),
    "BulkCancel": {
        "oneOf": [
            obj({"thread_id": UUID, "run_ids": {"type": "array", "items": UUID, "maxItems": 1000}}, ["thread_id", "run_ids"], extra=True),
            obj({"status": {"type": "string", "enum": list(BULK_CANCEL_STATUSES)}}, ["status"], extra=True),
        ]
    },
    "MessagePage": obj(
        {
            "messages": {
                "type": "array",
                "items": obj(
                    {
                        "id": {"type": "string"},
                        "type": {"type": "string"},
                        "run_id": UUID,
                        "seq": {"type": "integer"},
                        "position": {"type": "integer"},
                        "part": {"type": "integer"},
                        "data": OBJECT,
                        "updated_run_id": UUID,
                        "updated_seq": {"type": "integer"},
                        "edited_by_run_id": nullable(UUID),
                        "feedback": {"type": "array", "items": ref("Feedback"), "description": "A run's feedback, on its last AI message."},
                    },
                    ["id", "type", "run_id", "seq", "position", "part", "data", "updated_run_id", "updated_seq", "edited_by_run_id", "feedback"],
                ),
            },
            "has_more": {"type": "boolean"},
            "before": nullable({"type": "string"}),
            "after": nullable({"type": "string"}),
        },
        ["messages", "has_more", "before", "after"],
    ),
    "EventPage": obj(
        {
            "events": {
                "type": "array",
                "items": obj(
                    {
                        "seq": {"type": "integer", "minimum": 1},
                        "kind": {"type": "string"},
                        "ts": TIME,
                        "data": ANY,
                        "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "global_position": {"type": "integer"},
                    },
                    ["seq", "kind", "ts", "data", "hash", "global_position"],
                ),
            },
            "has_more": {"type": "boolean"},
            "next_after": {"type": "integer"},
        },
        ["events", "has_more", "next_after"],
    ),
    "RunSummary": obj(
        {
            "run_id": UUID,
            "thread_id": UUID,
            "assistant_id": nullable({"type": "string"}),
            "status": {"type": "string", "enum": list(RUN_STATUSES)},
            "created_at": nullable(TIME),
            "started_at": nullable(TIME),
            "finished_at": nullable(TIME),
            "duration_ms": nullable({"type": "number", "minimum": 0}),
            "attempt": {"type": "integer"},
            "error": nullable(obj({"type": nullable({"type": "string"}), "message": nullable({"type": "string"})}, ["type", "message"])),
            "llm_calls": {"type": "integer", "minimum": 0},
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
            **RUN_COST,
        },
        [
            "run_id", "thread_id", "assistant_id", "status", "created_at", "started_at", "finished_at", "duration_ms", "attempt",
            "error", "llm_calls", "input_tokens", "output_tokens", "total_tokens", *RUN_COST,
        ],
    ),
    "RunsPage": obj(
        {
            "runs": {"type": "array", "items": ref("RunSummary")},
            "next": nullable({"type": "string", "description": "The cursor of the next page; null on the last page."}),
        },
        ["runs", "next"],
    ),
    "Totals": TOTALS,
    "Usage": obj(
        {
            "thread_id": UUID,
            "run_id": UUID,
            "totals": ref("Totals"),
            **{f"by_{group}": {"type": "array", "items": _group(group)} for group in ("model", "caller", "status")},
            **RUN_COST,
        },
        ["thread_id", "totals", "by_model", "by_caller", "by_status"],
    ),
    "Verification": obj(
        {
            "thread_id": UUID,
            "run_id": UUID,
            "ok": {"type": "boolean"},
            "events": {"type": "integer"},
            "first_bad_seq": nullable({"type": "integer"}),
            "reason": nullable({"type": "string"}),
            "last_hash": nullable({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        },
        ["thread_id", "run_id", "ok", "events", "first_bad_seq", "reason", "last_hash"],
    ),
}

NUMBER_OR_DECIMAL = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}]}
"""A token count, or a cost in USD as an exact decimal string."""
SCHEMAS["BudgetRefusal"] = obj(
    {
        "position": {"type": "integer", "minimum": 1},
        "ts": TIME,
        "budget": {"type": "string"},
        "key": {"type": "string", "description": "The identity, user field or metadata value the budget counts."},
        "identity": nullable({"type": "string"}),
        "actor": nullable(OBJECT),
        "thread_id": nullable(UUID),
        "run_id": UUID,
        "assistant_id": nullable({"type": "string"}),
        "definition": OBJECT,
        "used": NUMBER_OR_DECIMAL,
        "reserved": NUMBER_OR_DECIMAL,
        "limit": NUMBER_OR_DECIMAL,
        "window_start": TIME,
        "unpriced_calls": {"type": "integer", "minimum": 0},
        "retry_after": nullable({"type": "integer", "minimum": 1}),
        "detail": {"type": "string"},
    },
    ["position", "ts", "budget", "key", "identity", "run_id", "definition", "used", "reserved", "limit", "window_start", "detail"],
    extra=True,
)

ERRORS = {
    404: "No such thread, run, assistant, graph, checkpoint or tile.",
    409: "A conflict with the thread's, run's or assistant's state.",
    413: "The request body is larger than the server's limit (--max-body-bytes).",
    422: (
        "An invalid parameter or body. Bodies are UTF-8 JSON nested at most "
        f"{MAX_JSON_DEPTH} deep, with finite numbers and integers within the signed 64-bit range."
    ),
    429: "A budget the run falls under has no room for it (the detail names it); Retry-After when its window frees up.",
    503: "The database cannot be reached.",
}


_USAGE_SUMS = [field_name(name) for name in SUMS]
_UNPRICED = ["calls", *(field_name(name) for name in TOKEN_FIELDS)]
_SPREAD = nullable(obj({f"p{round(q * 100)}": nullable({"type": "number"}) for q in PERCENTILES}))
SCHEMAS["UsageRow"] = obj(
    {
        "start": {"type": "string", "description": "The bucket's start, ISO 8601 with the time zone's offset."},
        **{field_name(name): nullable({"type": "string"}) for name in DIMENSIONS},
        **dict.fromkeys(_USAGE_SUMS, {"type": "integer"}),
        "cost": nullable({"type": "number", "description": "USD, of the priced calls; null when none was priced."}),
        "cost_sources": {"type": "array", "items": {"type": "string"}},
        "unpriced": obj(dict.fromkeys(_UNPRICED, {"type": "integer"}), _UNPRICED),
        "gen_ai.client.operation.duration": _SPREAD,
        "time_to_first_token": _SPREAD,
    },
    ["start", *_USAGE_SUMS, "cost", "cost_sources", "unpriced"],
    extra=True,  # metadata.<key> groups
)
SCHEMAS["UsageSeries"] = obj(
    {
        "bucket": {"type": "string", "enum": list(BUCKETS)},
        "tz": {"type": "string"},
        "since": TIME,
        "until": TIME,
        "group_by": {"type": "array", "items": {"type": "string"}},
        "currency": {"type": "string", "enum": ["USD"]},
        "plan": {"type": "string", "enum": ["rollup", "calls"]},
        "rows": {"type": "array", "items": ref("UsageRow")},
    },
    ["bucket", "tz", "since", "until", "group_by", "currency", "plan", "rows"],
)


def answers(ok: dict[int, Any], *errors: int) -> dict[str, Any]:
    """Responses: ``ok`` maps a status to a schema (None: no body; "sse": an event stream); then the errors."""
    responses: dict[str, Any] = {}
    for status, schema in ok.items():
        if schema is None:
            responses[str(status)] = {"description": "Done; no content."}
        elif schema == "ndjson":
            responses[str(status)] = {
                "description": "An export: a header line, one line per event, a trailer line.",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            }
        elif schema == "thread-sse":
            responses[str(status)] = {
                "description": (
                    "Server-Sent Events of every run of the thread: `event: <mode>[|ns]`, `metadata`, `state_update`, "
                    "`data: <json>`, `id: <tx>:<position>` (a place in the global feed); never ends by itself."
                ),
                "content": {"text/event-stream": {"itemSchema": THREAD_SSE_EVENT}},
            }
        elif schema == "sse":
            responses[str(status)] = {
                "description": "Server-Sent Events: `event: <mode>[|ns]`, `data: <json>`, `id: <seq>`; `metadata` first.",
                "content": {"text/event-stream": {"itemSchema": SSE_EVENT}},
            }
        else:
            responses[str(status)] = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    for status in (*errors, 503):
        responses[str(status)] = {"description": ERRORS[status], "content": {"application/json": {"schema": ref("Error")}}}
    return responses


def path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": UUID}


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


def op(summary: str, responses: dict[str, Any], *parameters: dict[str, Any], request: str | None = None, optional: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": list(parameters), "responses": responses}
    if request is not None:
        operation["requestBody"] = body(request) | ({"required": False} if optional else {})
    return operation


THREAD, RUN = path("thread_id"), path("run_id")
ASSISTANT = {
    "name": "assistant_id", "in": "path", "required": True, "schema": {"type": "string"},
    "description": "An assistant's id (a UUID), or the name of a served graph (its assistant).",
}
LIMIT_1000 = {"type": "integer", "minimum": 1, "maximum": 1000}
WAIT_RESULT = {"description": "The final state values, or {\"__error__\": {...}} for a failed run."}
STREAM_QUERY = [
    query("stream_mode", {"type": "array", "items": {"type": "string", "enum": ["", *STREAM_MODES]}}, "Only these modes."),
    query("cancel_on_disconnect", {"type": "boolean"}),
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}, "description": (
        "Resume after this seq; -1 or 0 replays from the start. Anything but a whole number "
        "from -1 up to the run's last event (the seq of an event this server sent) is refused with 422."
    )},
]
MESSAGE_QUERY = [
    query("limit", LIMIT_1000),
    query("after", {"type": "string"}, "A cursor: the page after it."),
    query("before", {"type": "string"}, "A cursor: the page before it."),
    query("last", {"type": "boolean"}, "The last page."),
]
TIME_QUERY = "ISO 8601, UTC when it names no offset; within years 1 to 9999 in UTC."
_SPAN = "An ISO 8601 time (UTC without an offset) or a span back from the end of this hour: 30d, 12h, 2w."
SERIES_QUERY = [
    query("bucket", {"type": "string", "enum": list(BUCKETS)}, "The buckets' size (default day)."),
    query("tz", {"type": "string"}, "The IANA time zone whose days, weeks and months the buckets follow (default UTC)."),
    query("since", {"type": "string"}, _SPAN + " Default: 30 days before until."),
    query("until", {"type": "string"}, _SPAN + " Default: the end of the current hour."),
    query("group_by", {"type": "string"}, f"Comma-separated dimensions: {', '.join(DIMENSIONS)}, metadata.<key>."),
    query("percentiles", {"type": "boolean"}, "Add p50, p95, p99 of latency and time to first token (read from the calls)."),
    *(query(name, {"type": "string"}, "Keep only calls whose value is one of these (comma-separated or repeated).") for name in DIMENSIONS),
]
USAGE_QUERY = [query("since", TIME, TIME_QUERY), query("until", TIME, TIME_QUERY)]


def _paths() -> dict[str, Any]:
    create = answers({200: ref("Run")}, 404, 409, 413, 422, 429)
    stream = answers({200: "sse"}, 404, 409, 413, 422, 429)
    wait = answers({200: WAIT_RESULT}, 404, 409, 413, 422, 429)
    return {
        "/ok": {"get": op("Readiness", answers({200: obj({"ok": {"type": "boolean"}}, ["ok"])}))},
        "/openapi.json": {"get": op("This description", answers({200: OBJECT}))},
        # Public, like /ok: the Merkle log for monitors (hashes and signed checkpoints only).
        "/log/checkpoint": {"get": {
            "summary": "The latest signed checkpoint of the log (C2SP tlog-checkpoint, signed note); public",
            "parameters": [],
            "responses": {
                "200": {"description": "The signed note.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **{k: v for k, v in answers({}, 404).items()},
            },
        }},
        "/log/tile/{path}": {"get": {
            "summary": "A tile of the Merkle tree (C2SP tlog-tiles: <L>/<N>[.p/<W>], hashes only); immutable; public",
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "Concatenated 32-byte hashes.", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **{k: v for k, v in answers({}, 404).items()},
            },
        }},
        "/assistants": {
            "post": op("Create an assistant (version 1)", answers({200: ref("Assistant")}, 404, 409, 413, 422), request="AssistantCreate")
        },
        "/assistants/search": {
            "post": op(
                "Search assistants by graph, metadata and name",
                answers({200: {"type": "array", "items": ref("AssistantSelected")}}, 413, 422),
                request="AssistantSearch",
                optional=True,
            )
        },
        "/assistants/count": {
            "post": op(
                "Count assistants by graph, metadata and name",
                answers({200: {"type": "integer", "minimum": 0}}, 413, 422),
                request="AssistantCount",
                optional=True,
            )
        },
        "/assistants/{assistant_id}": {
            "get": op("Get an assistant", answers({200: ref("Assistant")}, 404, 422), ASSISTANT),
            "patch": op(
                "Change an assistant: a new version, used from now on (metadata merged)",
                answers({200: ref("Assistant")}, 404, 413, 422),
                ASSISTANT,
                request="AssistantUpdate",
                optional=True,
            ),
            "delete": op("Delete an assistant and its versions", answers({204: None}, 404, 422), ASSISTANT),
        },
        "/assistants/{assistant_id}/graph": {
            "get": op(
                "The assistant's drawable graph (LangGraph's graph.get_graph().to_json())",
                answers({200: DRAWABLE}, 404, 409, 422),
                ASSISTANT,
                query("xray", {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0, "maximum": 999}]}, "Include subgraphs (to this depth)."),
            )
        },
        "/assistants/{assistant_id}/schemas": {
            "get": op("The JSON schemas of the assistant's graph", answers({200: ref("GraphSchemas")}, 404, 409, 422), ASSISTANT)
        },
        "/assistants/{assistant_id}/subgraphs": {
            "get": op(
                "The schemas of the assistant's subgraphs, by namespace",
                answers({200: ref("SubgraphSchemas")}, 404, 409, 422),
                ASSISTANT,
                query("recurse", {"type": "boolean"}),
            )
        },
        "/assistants/{assistant_id}/subgraphs/{namespace}": {
            "get": op(
                "The schemas of one subgraph of the assistant's graph",
                answers({200: ref("SubgraphSchemas")}, 404, 409, 422),
                ASSISTANT,
                {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
                query("recurse", {"type": "boolean"}),
            )
        },
        "/assistants/{assistant_id}/versions": {
            "post": op(
                "An assistant's versions, newest first",
                answers({200: {"type": "array", "items": ref("AssistantVersion")}}, 404, 413, 422),
                ASSISTANT,
                request="AssistantVersions",
                optional=True,
            )
        },
        "/assistants/{assistant_id}/latest": {
            "post": op("Use one of an assistant's versions", answers({200: ref("Assistant")}, 404, 413, 422), ASSISTANT, request="AssistantLatest")
        },
        "/threads": {"post": op("Create a thread", answers({200: ref("Thread")}, 409, 413, 422), request="ThreadCreate", optional=True)},
        "/threads/search": {
            "post": op(
                "Search threads by metadata, ids and status",
                answers({200: {"type": "array", "items": ref("ThreadSelected")}}, 413, 422),
                request="ThreadSearch",
                optional=True,
            )
        },
        "/threads/count": {
            "post": op(
                "Count threads by metadata, ids and status",
                answers({200: {"type": "integer", "minimum": 0}}, 413, 422),
                request="ThreadCount",
                optional=True,
            )
        },
        "/threads/{thread_id}": {
            "get": op("Get a thread", answers({200: ref("Thread")}, 404, 422), THREAD),
            "patch": op(
                "Merge metadata into a thread's (top-level keys replaced)",
                answers({200: ref("Thread")}, 404, 413, 422),
                THREAD,
                request="ThreadUpdate",
            ),
            "delete": op(
                "Delete a thread's state (checkpoints); its runs, events and projections stay readable",
                answers({204: None}, 404, 409, 422),
                THREAD,
            ),
        },
        "/threads/{thread_id}/copy": {
            "post": op(
                "Copy a thread: a new thread with its metadata, state and checkpoint history (recorded as a run of the copy)",
                answers({200: ref("Thread")}, 404, 409, 422),
                THREAD,
            )
        },
        "/threads/{thread_id}/stream": {
            "get": op(
                "Follow every run of a thread as it happens",
                answers({200: "thread-sse"}, 404, 422),
                THREAD,
                query("stream_mode", {"type": "array", "items": {"type": "string", "enum": ["", *THREAD_STREAM_MODES]}}, "Repeated."),
                query("stream_modes", {"type": "string"}, "Comma-separated: run_modes (the default), lifecycle, state_update."),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}, "description": (
                    "Resume after this id (tx:position, as sent); -1 or 0 replays the thread from its start. "
                    "Anything else, or an id that names no event of the thread, is refused with 422."
                )},
            )
        },
        "/threads/{thread_id}/state": {
            "get": op(
                "A thread's current state (empty without runs)",
                answers({200: ref("ThreadState")}, 404, 422),
                THREAD,
                query("subgraphs", {"type": "boolean"}),
            ),
            "post": op(
                "Update a thread's state (recorded as a run of the thread)",
                answers({200: ref("StateUpdated")}, 404, 409, 413, 422),
                THREAD,
                request="StateUpdate",
            ),
        },
        "/threads/{thread_id}/state/checkpoint": {
            "post": op("A thread's state at a checkpoint", answers({200: ref("ThreadState")}, 404, 413, 422), THREAD, request="StateCheckpointRequest")
        },
        "/threads/{thread_id}/state/{checkpoint_id}": {
            "get": op(
                "A thread's state at a checkpoint",
                answers({200: ref("ThreadState")}, 404, 422),
                THREAD,
                {"name": "checkpoint_id", "in": "path", "required": True, "schema": {"type": "string"}},
                query("subgraphs", {"type": "boolean"}),
            )
        },
        "/threads/{thread_id}/history": {
            "get": op(
                "A thread's past states, newest first",
                answers({200: {"type": "array", "items": ref("ThreadState")}}, 404, 422),
                THREAD,
                query("limit", LIMIT_1000),
                query("before", CHECKPOINT_ID, "Only states older than this checkpoint."),
            ),
            "post": op(
                "A thread's past states, newest first",
                answers({200: {"type": "array", "items": ref("ThreadState")}}, 404, 413, 422),
                THREAD,
                request="HistoryRequest",
                optional=True,
            ),
        },
        "/threads/{thread_id}/runs": {
            "post": op("Create a background run", create, THREAD, request="RunCreate"),
            "get": op(
                "List a thread's runs, newest first",
                answers({200: {"type": "array", "items": ref("Run")}}, 404, 422),
                THREAD,
                query("limit", LIMIT_1000),
                query("offset", {"type": "integer", "minimum": 0}),
                query("status", {"type": "string", "enum": list(RUN_STATUSES)}),
            ),
        },
        "/runs": {
            "post": op("Create a background run on a new thread", create, request="RunCreate"),
            "get": op(
                "The runs of every thread the caller may see, newest first (keyset pages)",
                answers({200: ref("RunsPage")}, 422),
                query("status", {"type": "string", "enum": list(RUN_STATUSES)}),
                query("thread_id", UUID),
                query("assistant_id", {"type": "string"}, "An assistant's id, or a served graph's name for its assistant."),
                *USAGE_QUERY,
                query("limit", LIMIT_1000),
                query("cursor", {"type": "string"}, "The next of the page before."),
            )
        },
        "/ui": {"get": {
            "summary": "The web viewer (docs/viewer.md); public: it holds no data and reads through the routes here",
            "parameters": [],
            "responses": {"200": {"description": "The viewer's page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/ui/{path}": {"get": {
            "summary": "A script, style sheet or licence of the web viewer; public",
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "The file.",
                    "content": {t: {"schema": {"type": "string"}} for t in ("text/javascript", "text/css", "text/plain", "image/png", "image/svg+xml")},
                },
                **{k: v for k, v in answers({}, 404).items()},
            },
        }},
        "/threads/{thread_id}/runs/stream": {"post": op("Create a run and stream it", stream, THREAD, request="RunCreate")},
        "/threads/{thread_id}/runs/wait": {"post": op("Create a run and wait for its result", wait, THREAD, request="RunCreate")},
        "/runs/batch": {
            "post": op(
                "Create background runs on new threads, all or none",
                answers({200: {"type": "array", "items": ref("Run")}}, 404, 409, 413, 422, 429),
                request="RunBatch",
            )
        },
        "/runs/stream": {"post": op("Create a run on a new thread and stream it", stream, request="RunCreate")},
        "/runs/wait": {"post": op("Create a run on a new thread and wait for its result", wait, request="RunCreate")},
        "/runs/cancel": {
            "post": op(
                "Cancel runs: thread_id and run_ids, or every run in a status (204; 404 when none was cancelled)",
                answers({204: None}, 404, 413, 422),
                query("action", {"type": "string", "enum": list(CANCEL_ACTIONS)}),
                request="BulkCancel",
            )
        },
        "/threads/{thread_id}/runs/{run_id}": {
            "get": op("Get a run", answers({200: ref("Run")}, 404, 422), THREAD, RUN),
            "delete": op(
                "Delete a finished run: recorded, hidden from the API; its events stay readable and verifiable",
                answers({204: None}, 404, 409, 422),
                THREAD,
                RUN,
            ),
        },
        "/threads/{thread_id}/runs/{run_id}/cancel": {
            "post": op(
                "Cancel a run (202 unless wait)",
                answers({200: ref("Run"), 202: ref("Run")}, 404, 409, 422),
                THREAD,
                RUN,
                query("wait", {"type": "boolean"}),
                query("action", {"type": "string", "enum": list(CANCEL_ACTIONS)}),
            )
        },
        "/threads/{thread_id}/runs/{run_id}/join": {"get": op("Wait for a run's result", answers({200: WAIT_RESULT}, 404, 422), THREAD, RUN)},
        "/threads/{thread_id}/runs/{run_id}/stream": {
            "get": op("Join a run's stream", answers({200: "sse"}, 404, 422), THREAD, RUN, *STREAM_QUERY),
            "post": op(
                "Cancel a run, then stream it to its end",
                answers({200: "sse"}, 404, 409, 422),
                THREAD,
                RUN,
                *STREAM_QUERY,
                query("action", {"type": "string", "enum": list(CANCEL_ACTIONS)}),
            ),
        },
        "/threads/{thread_id}/messages": {
            "get": op("A page of a thread's messages", answers({200: ref("MessagePage")}, 404, 422), THREAD, *MESSAGE_QUERY)
        },
        "/threads/{thread_id}/usage": {
            "get": op("A thread's token usage", answers({200: ref("Usage")}, 404, 422), THREAD, *USAGE_QUERY)
        },
        "/threads/{thread_id}/runs/{run_id}/messages": {
            "get": op("A page of the messages a run recorded", answers({200: ref("MessagePage")}, 404, 422), THREAD, RUN, *MESSAGE_QUERY)
        },
        "/runs/{run_id}/messages": {
            "get": op(
                "A page of the messages a run recorded (its thread found from the run)",
                answers({200: ref("MessagePage")}, 404, 422),
                RUN,
                *MESSAGE_QUERY,
            )
        },
        "/threads/{thread_id}/runs/{run_id}/feedback": {
            "post": op(
                "Give feedback on a run (recorded in its log, also after it ended)",
                answers({201: ref("Feedback")}, 404, 413, 422),
                THREAD,
                RUN,
                request="FeedbackCreate",
            ),
            "get": op("A run's feedback, oldest first", answers({200: {"type": "array", "items": ref("Feedback")}}, 404, 422), THREAD, RUN),
        },
        "/threads/{thread_id}/runs/{run_id}/events": {
            "get": op(
                "A run's stored events in seq order",
                answers({200: ref("EventPage")}, 404, 422),
                THREAD,
                RUN,
                query("after", {"type": "integer", "minimum": 0}),
                query("limit", LIMIT_1000),
                query("kinds", {"type": "string"}, "Comma-separated kinds; a trailing * matches a prefix."),
            )
        },
        "/threads/{thread_id}/runs/{run_id}/usage": {
            "get": op("A run's token usage", answers({200: ref("Usage")}, 404, 422), THREAD, RUN, *USAGE_QUERY)
        },
        "/threads/{thread_id}/export": {
            "get": op("Download the NDJSON export of a thread's runs (docs/export.md)", answers({200: "ndjson"}, 404, 422), THREAD)
        },
        "/threads/{thread_id}/runs/{run_id}/export": {
            "get": op("Download the NDJSON export of one run (docs/export.md)", answers({200: "ndjson"}, 404, 422), THREAD, RUN)
        },
        "/usage": {
            "get": op(
                "Token usage and cost per time bucket and group, over the threads the caller may see",
                answers({200: ref("UsageSeries")}, 422),
                *SERIES_QUERY,
            )
        },
        "/threads/{thread_id}/runs/{run_id}/verify": {
            "get": op("Recompute a run's hash chain", answers({200: ref("Verification")}, 404, 422), THREAD, RUN)
        },
        "/store/items": {
            "put": op("Store or replace an item (recorded in the access log)", answers({204: None}, 413, 422), request="StorePut"),
            "get": op(
                "An item; null when there is none",
                answers({200: nullable(ref("StoreItem"))}, 422),
                {"name": "namespace", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                 "description": "The namespace's labels joined by '.'."},
                {"name": "key", "in": "query", "required": True, "schema": STORE_KEY},
                query("refresh_ttl", {"type": "boolean"}),
            ),
            "delete": op("Delete an item (recorded in the access log)", answers({204: None}, 413, 422), request="StoreDelete"),
        },
        "/store/items/search": {
            "post": op(
                "Items under a namespace prefix whose values match a filter",
                answers({200: obj({"items": {"type": "array", "items": ref("StoreSearchItem")}}, ["items"])}, 413, 422),
                request="StoreSearch",
                optional=True,
            )
        },
        "/store/namespaces": {
            "post": op(
                "The namespaces that hold items",
                answers({200: obj({"namespaces": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}}, ["namespaces"])}, 413, 422),
                request="StoreNamespaces",
                optional=True,
            )
        },
        "/budgets/refusals": {
            "get": op(
                "Admissions a budget refused, newest first (the caller's own unless its authorization is unfiltered)",
                answers({200: obj({"refusals": {"type": "array", "items": ref("BudgetRefusal")}}, ["refusals"])}, 422),
                *USAGE_QUERY,
                query("identity", {"type": "string", "maxLength": 256}, "Only this identity's refusals."),
                query("budget", {"type": "string", "maxLength": 256}, "Only this budget's refusals."),
                query("limit", LIMIT_1000),
            )
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "graphledger", "version": __version__, "description": "LangGraph runs on an event-sourced ledger."},
        "paths": _paths(),
        "components": {"schemas": SCHEMAS},
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document())
