"""A run request: what a caller asks for, validated, and how it is recorded.

The ``run.created`` event records the request as admitted (see
:meth:`RunRequest.record`), minus secrets (:mod:`graphledger.runs.secrets`):
values under keys that name a secret and URL passwords, in the config, the
context and the run metadata, are replaced by ``[redacted]`` and kept in
``run_secrets`` until a worker claims the run; the payload lists their paths
in ``redacted``, and every known secret value is scrubbed from the rest of
the payload (the input included). Input messages get an id when they have none, so
the log, the checkpointer and the messages projection name them alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from langchain_core.messages import BaseMessage

from graphledger.runs import secrets
from graphledger.runs import secrets as secrets_module
from graphledger.runs.actor import split as split_actor
from graphledger.runs.errors import InvalidRequest
from graphledger.runs.secrets import Scrubber
from graphledger.runs.secrets import is_secret_key as is_secret_key
from graphledger.runs.serialize import to_jsonable

STREAM_MODES = {
    # requested mode -> the LangGraph stream mode that produces it
    "values": "values",
    "updates": "updates",
    "messages-tuple": "messages",
    "messages": "messages",
    "custom": "custom",
    "debug": "debug",
    "tasks": "tasks",
    "checkpoints": "checkpoints",
    "events": "events",  # LangChain's astream_events (v2); not a LangGraph stream mode (see graph_modes)
}
EVENTS = "events"
MULTITASK_STRATEGIES = ("reject", "interrupt", "rollback", "enqueue")
CANCEL_ACTIONS = ("interrupt", "rollback")
ON_DISCONNECT = ("cancel", "continue")
ON_COMPLETION = ("delete", "keep")
IF_NOT_EXISTS = ("create", "reject")
MAX_AFTER_SECONDS = 366 * 24 * 3600
"""The longest delay a run may be admitted with (``after_seconds``): a year."""
CHECKPOINT_KEYS = ("checkpoint_id", "checkpoint_ns", "checkpoint_map")
"""The keys of ``config.configurable`` that name the checkpoint a run starts from."""
COMMAND_KEYS = {"resume", "update", "goto"}

CONTEXT_SECRETS = "$context"
METADATA_SECRETS = "$metadata"
ACTOR_SECRETS = "$actor"
KNOWN_VALUES = "$values"
"""Reserved keys of a run's stored secrets (``run_secrets``): the config's secrets sit at the top, as the
config nests them; the context's, the run metadata's and the actor's (the authenticated user's) under these
keys; and under ``$values`` the other secret values known at admission (the thread's metadata), which are
only scrubbed, never given back."""
RESERVED = (CONTEXT_SECRETS, METADATA_SECRETS, ACTOR_SECRETS, KNOWN_VALUES)


def split_secrets(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` with its secrets replaced by ``[redacted]``, and those secrets (see :func:`secrets.split_secrets`)."""
    kept, found, _ = secrets.split_secrets(dict(config))
    return kept, dict(found or {})


def merge_secrets(config: Mapping[str, Any], found: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``found`` (from :func:`split_secrets`) put back."""
    merged: dict[str, Any] = secrets.merge_secrets(dict(config), dict(found) if found else None)
    return merged


def _choice(name: str, value: Any, allowed: tuple[str, ...] | set[str] | dict[str, str]) -> str:
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(sorted(allowed))}, not {value!r}")
    return str(value)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidRequest(f"{name} must be an object")
    return dict(value)


def _nodes(name: str, value: Any) -> str | list[str] | None:
    if value is None:
        return None
    if value == "*":
        return "*"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequest(f'{name} must be "*" or a list of node names')


def _checkpoint_id(name: str, value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidRequest(f"{name} must be a checkpoint id (a UUID), not {str(value)[:100]!r}")


def start_checkpoint(body: Mapping[str, Any], configurable: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint a run starts from (``{}``: the thread's latest), from ``checkpoint_id``, ``checkpoint`` or ``config.configurable``.

    They must agree. A run forks the thread's history at a checkpoint of the
    thread's own graph: ``checkpoint_ns`` must be empty (a subgraph's
    checkpoints are not a place to start a run from).
    """
    found: dict[str, Any] = {}
    sources = [("config.configurable", configurable)]
    checkpoint = body.get("checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, Mapping):
            raise InvalidRequest("checkpoint must be an object with a checkpoint_id")
        sources.append(("checkpoint", checkpoint))
    if body.get("checkpoint_id") not in (None, ""):
        sources.append(("", {"checkpoint_id": body["checkpoint_id"]}))
    for prefix, source in sources:
        for key in CHECKPOINT_KEYS:
            value = source.get(key)
            if value is None or (key == "checkpoint_id" and value == ""):
                continue
            name = f"{prefix}.{key}" if prefix else key
            if key == "checkpoint_id":
                value = _checkpoint_id(name, value)
            elif key == "checkpoint_ns":
                if value != "":
                    raise InvalidRequest(f"{name} must be empty: a run starts from a checkpoint of the thread's graph, not of a subgraph")
            elif not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise InvalidRequest(f"{name} must be an object of strings")
            else:
                value = dict(value)
            if key in found and found[key] != value:
                raise InvalidRequest(f"{name} names another checkpoint than the request's other checkpoint fields")
            found[key] = value
    if "checkpoint_id" not in found:
        return {}  # a namespace or map alone names no checkpoint: the run starts from the latest
    return found


def _after_seconds(value: Any) -> float:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_AFTER_SECONDS:
        raise InvalidRequest(f"after_seconds must be a number of seconds from 0 to {MAX_AFTER_SECONDS}, not {str(value)[:50]}")
    return value


def stream_modes(value: Any) -> list[str]:
    """The requested stream modes as a list (a single string is accepted), in order, without repeats."""
    if value is None:
        return ["values"]
    modes = [value] if isinstance(value, str) else value
    if not isinstance(modes, list) or not modes:
        raise InvalidRequest("stream_mode must be a mode name or a non-empty list of mode names")
    seen: list[str] = []
    for mode in modes:
        _choice("stream_mode", mode, STREAM_MODES)
        if mode not in seen:
            seen.append(mode)
    return seen


MAX_WEBHOOK_LENGTH = 2048
WEBHOOK_SCHEMES = ("http", "https")


def webhook_url(value: Any) -> str | None:
    """A run's ``webhook``: an absolute http(s) URL with a host (None: no webhook).

    Checked for its form only: whether its host answers is the delivery's business.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest("webhook must be an http or https URL")
    if len(value) > MAX_WEBHOOK_LENGTH:
        raise InvalidRequest(f"webhook must be at most {MAX_WEBHOOK_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidRequest("webhook must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # a port that is not a number, or out of range, raises here
    except ValueError as exc:
        raise InvalidRequest(f"webhook is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in WEBHOOK_SCHEMES:
        raise InvalidRequest(f"webhook must be an http or https URL, not {parts.scheme or 'a relative one'!r}"[:200])
    if not parts.hostname:
        raise InvalidRequest("webhook must name a host")
    return value


def with_message_ids(value: Any) -> Any:
    """``value`` with an id on every message of ``value["messages"]`` that has none (messages are copied, not changed)."""
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
        return value
    messages = []
    for message in value["messages"]:
        if isinstance(message, dict) and not message.get("id") and ("content" in message or "type" in message or "role" in message):
            message = {**message, "id": str(uuid.uuid4())}
        elif isinstance(message, BaseMessage) and not message.id:
            message = message.model_copy(update={"id": str(uuid.uuid4())})
        messages.append(message)
    return {**value, "messages": messages}


@dataclass(slots=True)
class RunRequest:
    """What a caller asks a run to do (the LangGraph Platform run-create body)."""

    assistant_id: str
    input: Any = None
    command: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stream_mode: list[str] = field(default_factory=lambda: ["values"])
    stream_subgraphs: bool = False
    multitask_strategy: str = "enqueue"
    on_disconnect: str = "continue"
    if_not_exists: str = "reject"
    interrupt_before: str | list[str] | None = None
    interrupt_after: str | list[str] | None = None
    after_seconds: float = 0
    """How long the run stays pending before a worker may start it (recorded when not 0; the ``runs`` row's ``due_at``)."""
    on_completion: str | None = None
    """What becomes of a stateless run's thread when the run ends: ``delete`` or ``keep`` (None: a thread's own run)."""
    secrets: dict[str, Any] = field(default_factory=dict)
    """The request's secrets as ``run_secrets`` keeps them (see :data:`CONTEXT_SECRETS`)."""
    redacted: list[str] = field(default_factory=list)
    """Where secrets were replaced by ``[redacted]``: paths in the ``run.created`` payload."""
    actor: dict[str, Any] | None = None
    """Who asked for the run (see :mod:`graphledger.runs.actor`); set by the server (:meth:`set_actor`), never read from a body.

    As recorded (secrets ``[redacted]``) at admission; with its secrets put back in a claimed run's request."""
    graph_id: str | None = None
    """The graph the run executes, when ``assistant_id`` names an assistant (see :mod:`graphledger.runs.assistants`); set by the server."""
    assistant_version: int | None = None
    """The version of the assistant the run was admitted with; set by the server."""
    webhook: str | None = None
    """Where to POST the run once it ends, as given (see :func:`webhook_url`); recorded with its user-info and query redacted."""

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> RunRequest:
        """Validate a request body; unknown keys are ignored (clients send more than a server uses)."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object")
        assistant_id = body.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise InvalidRequest("assistant_id is required: the name of a registered graph")
        command = body.get("command")
        if command is not None:
            command = _mapping("command", command)
            unknown = set(command) - COMMAND_KEYS
            if unknown or not command:
                raise InvalidRequest(f"command takes {', '.join(sorted(COMMAND_KEYS))}, got {sorted(command) or 'nothing'}")
        config = _mapping("config", body.get("config"))
        if "configurable" in config:
            config["configurable"] = _mapping("config.configurable", config["configurable"])
        start = start_checkpoint(body, config.get("configurable") or {})
        if config.get("configurable") or start:  # the run starts from ``start``, as LangGraph reads it: in configurable
            configurable = {k: v for k, v in (config.get("configurable") or {}).items() if k not in CHECKPOINT_KEYS}
            config["configurable"] = {**configurable, **start}
        recursion_limit = config.get("recursion_limit")
        if recursion_limit is not None and (not isinstance(recursion_limit, int) or isinstance(recursion_limit, bool) or recursion_limit < 1):
            raise InvalidRequest("config.recursion_limit must be a positive integer")
        config, config_secrets, redacted = secrets.split_secrets(config, "config")
        context = _mapping("context", body.get("context")) if body.get("context") is not None else None
        context, context_secrets, context_paths = secrets.split_secrets(context, "context")
        metadata, metadata_secrets, metadata_paths = secrets.split_secrets(_mapping("metadata", body.get("metadata")), "metadata")
        stored: dict[str, Any] = dict(config_secrets or {})
        if context_secrets is not None:
            stored[CONTEXT_SECRETS] = context_secrets
        if metadata_secrets is not None:
            stored[METADATA_SECRETS] = metadata_secrets
        subgraphs = body.get("stream_subgraphs", False)
        if not isinstance(subgraphs, bool):
            raise InvalidRequest("stream_subgraphs must be true or false")
        return cls(
            assistant_id=assistant_id,
            input=with_message_ids(to_jsonable(body.get("input"))),
            command=to_jsonable(command),
            config=to_jsonable(config),
            context=to_jsonable(context),
            metadata=to_jsonable(metadata),
            stream_mode=stream_modes(body.get("stream_mode")),
            stream_subgraphs=subgraphs,
            multitask_strategy=_choice("multitask_strategy", body.get("multitask_strategy") or "enqueue", MULTITASK_STRATEGIES),
            on_disconnect=_choice("on_disconnect", body.get("on_disconnect") or "continue", ON_DISCONNECT),
            if_not_exists=_choice("if_not_exists", body.get("if_not_exists") or "reject", IF_NOT_EXISTS),
            interrupt_before=_nodes("interrupt_before", body.get("interrupt_before")),
            interrupt_after=_nodes("interrupt_after", body.get("interrupt_after")),
            after_seconds=_after_seconds(body.get("after_seconds")),
            on_completion=_choice("on_completion", body["on_completion"], ON_COMPLETION) if body.get("on_completion") is not None else None,
            secrets=to_jsonable(stored),
            redacted=sorted([*redacted, *context_paths, *metadata_paths]),
            webhook=webhook_url(body.get("webhook")),
        )

    def set_actor(self, user: Mapping[str, Any] | None) -> None:
        """Record ``user`` (a user's JSON form, see :func:`graphledger.runs.actor.actor_json`) as who asked for the run.

        Its secret fields are recorded as ``[redacted]`` (their paths listed in
        ``redacted``, their values scrubbed from the rest of the payload) and
        kept with the run's secrets, so that the graph sees the whole user.
        """
        self.secrets.pop(ACTOR_SECRETS, None)
        self.redacted = [path for path in self.redacted if not path.startswith("actor.")]
        if user is None:
            self.actor = None
            return
        self.actor, found, paths = split_actor(user)
        if found is not None:
            self.secrets[ACTOR_SECRETS] = found
            self.redacted = sorted([*self.redacted, *paths])

    def know(self, values: Any) -> None:
        """Add the strings of ``values`` (secrets found beside the request, such as the thread's metadata) to the run's known secret values."""
        known = [v for v in secrets.strings(values) if v not in self.secrets.get(KNOWN_VALUES, [])]
        if known:
            self.secrets[KNOWN_VALUES] = [*self.secrets.get(KNOWN_VALUES, []), *known]

    def scrubber(self) -> Scrubber | None:
        """What replaces the run's known secret values in its payloads (None: the run has none)."""
        return Scrubber.of(secrets.strings(self.secrets))

    def record(self) -> dict[str, Any]:
        """The payload of the run's ``run.created`` event (no secrets)."""
        payload: dict[str, Any] = {
            "assistant_id": self.assistant_id,
            "input": self.input,
            "config": self.config,
            "metadata": self.metadata,
            "stream_mode": self.stream_mode,
            "stream_subgraphs": self.stream_subgraphs,
            "multitask_strategy": self.multitask_strategy,
            "on_disconnect": self.on_disconnect,
        }
        for name in ("graph_id", "assistant_version", "command", "context", "interrupt_before", "interrupt_after", "on_completion"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        if self.after_seconds:
            payload["after_seconds"] = self.after_seconds
        scrubber = self.scrubber()
        if scrubber is not None:
            payload = scrubber.json(payload)
        redacted = list(self.redacted)
        if self.webhook is not None:
            payload["webhook"] = secrets.without_url_secrets(self.webhook)
            if payload["webhook"] != self.webhook:
                redacted = sorted([*redacted, "webhook"])
        if redacted:
            payload["redacted"] = redacted
        if self.actor is not None:
            payload["actor"] = self.actor
        return payload

    @classmethod
    def recorded(cls, payload: Mapping[str, Any], secrets: Mapping[str, Any] | None = None) -> RunRequest:
        """The request a ``run.created`` payload records, with its secrets put back (``run_secrets``' form)."""
        stored = dict(secrets or {})
        config_secrets = {k: v for k, v in stored.items() if k not in RESERVED}
        actor = payload.get("actor")
        if isinstance(actor, Mapping):
            actor = dict(secrets_module.merge_secrets(dict(actor), stored.get(ACTOR_SECRETS)))
        return cls(
            assistant_id=str(payload.get("assistant_id") or ""),
            input=payload.get("input"),
            command=payload.get("command"),
            config=merge_secrets(dict(payload.get("config") or {}), config_secrets),
            context=secrets_module.merge_secrets(payload.get("context"), stored.get(CONTEXT_SECRETS)),
            metadata=dict(secrets_module.merge_secrets(dict(payload.get("metadata") or {}), stored.get(METADATA_SECRETS))),
            stream_mode=list(payload.get("stream_mode") or ["values"]),
            stream_subgraphs=bool(payload.get("stream_subgraphs")),
            multitask_strategy=str(payload.get("multitask_strategy") or "enqueue"),
            on_disconnect=str(payload.get("on_disconnect") or "continue"),
            interrupt_before=payload.get("interrupt_before"),
            interrupt_after=payload.get("interrupt_after"),
            after_seconds=payload["after_seconds"] if isinstance(payload.get("after_seconds"), (int, float)) else 0,
            on_completion=payload["on_completion"] if payload.get("on_completion") in ON_COMPLETION else None,
            secrets=stored,
            redacted=list(payload.get("redacted") or []),
            actor=actor if isinstance(actor, dict) else None,
            graph_id=payload["graph_id"] if isinstance(payload.get("graph_id"), str) else None,
            assistant_version=payload["assistant_version"] if isinstance(payload.get("assistant_version"), int) else None,
        )

    @property
    def graph(self) -> str:
        """The name of the graph the run executes: ``graph_id``, else (runs that name a graph) ``assistant_id``."""
        return self.graph_id or self.assistant_id

    def check_stateless(self) -> None:
        """Refuse what a run on a new thread cannot do: start from a checkpoint (the thread has none)."""
        if self.checkpoint_id is not None:
            raise InvalidRequest("checkpoint_id names a checkpoint of a thread; a stateless run's new thread has none")

    @property
    def checkpoint_id(self) -> str | None:
        """The checkpoint of the thread the run starts from (None: the thread's latest)."""
        found = (self.config.get("configurable") or {}).get("checkpoint_id")
        return found if isinstance(found, str) else None

    @property
    def graph_modes(self) -> list[str]:
        """The LangGraph stream modes to run with: the requested ones, plus ``updates`` (messages and interrupts come from it).

        ``events`` is not one of them: it asks for LangChain's ``astream_events`` (see :meth:`Recording.stream`).
        """
        modes = [STREAM_MODES[m] for m in self.stream_mode if m != EVENTS]
        if "updates" not in modes:
            modes.append("updates")
        return list(dict.fromkeys(modes))
