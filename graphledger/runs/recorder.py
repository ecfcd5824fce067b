"""Turning a graph's stream into events of a run: the one place where chunks become the log.

A :class:`Recording` appends, for one run of the ledger, every part a
``graph.astream(...)`` yields (``stream:<mode>[|<namespace>]``), one
``llm.usage`` event per LLM call (from a LangChain callback handler), and the
run's end. Workers use it for the runs they claim; :class:`Recorder` offers it
to callers that drive ``astream`` themselves and only want the ledger.

Chunks are fed to the group-commit writer without waiting; the terminal event
is awaited, and because a run's events commit in order, every chunk before it
is durable when it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import add_usage
from langchain_core.outputs import ChatGeneration, LLMResult
from langgraph.types import Command

from graphledger.ledger import Ledger
from graphledger.ledger.errors import LedgerError, RunFinished
from graphledger.ledger.events import (
    EXECUTOR_CALLER,
    LLM_USAGE,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_SUCCEEDED,
    RUN_TIMED_OUT,
    STREAM_ERROR,
    STREAM_PREFIX,
    Event,
    RunRef,
)
from graphledger.runs import actor, checkpoint, lifecycle
from graphledger.runs.errors import InvalidRequest
from graphledger.runs.leases import LeaseKeeper
from graphledger.runs.request import (
    CHECKPOINT_KEYS,
    EVENTS,
    STREAM_MODES,
    RunRequest,
    stream_modes,
    with_message_ids,
)
from graphledger.runs.serialize import encode, to_jsonable

_log = logging.getLogger("graphledger.runs")

INTERRUPT_KEY = "__interrupt__"


def stream_kind(mode: str, namespace: Sequence[str] = ()) -> str:
    """The event kind of a chunk: ``stream:<mode>`` with ``|<namespace>`` parts for subgraphs (the SSE event name)."""
    return STREAM_PREFIX + "|".join((mode, *namespace))


def caller_of(metadata: Mapping[str, Any] | None) -> str | None:
    """Who made an LLM call: the graph node, with its subgraph path (``outer/inner``), from LangGraph's metadata."""
    if not metadata:
        return None
    namespace = metadata.get("langgraph_checkpoint_ns")
    if isinstance(namespace, str) and namespace:
        return "/".join(part.split(":", 1)[0] for part in namespace.split("|"))
    node = metadata.get("langgraph_node")
    return str(node) if node is not None else None


@dataclass(slots=True)
class _Call:
    started: float
    model: str | None
    caller: str | None
    provider: str | None = None  # LangChain's ls_provider
    first_token: float | None = None  # when the first streamed token came
    usage: Any = None  # summed from streamed chunks that carried usage


class UsageHandler(AsyncCallbackHandler):
    """Records one ``llm.usage`` event per LLM call of a run.

    A call that fails, or is still open when the run ends (cancelled, timed
    out), is recorded too, with whatever usage its stream reported so far and
    ``"incomplete": true``: tokens a provider reported are never dropped.
    """

    run_inline = True  # awaited in place: no task per streamed token (its methods never wait)
    # Only LLM events matter here. Without these, every node, tool and retry
    # event calls an inherited no-op coroutine, and where the event is raised
    # synchronously (a sync tool runs in a thread) LangChain runs that
    # coroutine in a new event loop, created and closed per event.
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.calls: dict[UUID, _Call] = {}

    def _open(self, run_id: UUID, serialized: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> None:
        params = kwargs.get("invocation_params") or {}
        model = params.get("model") or params.get("model_name") or (metadata or {}).get("ls_model_name")
        if model is None and serialized:
            model = (serialized.get("kwargs") or {}).get("model") or (serialized.get("kwargs") or {}).get("model_name")
        provider = (metadata or {}).get("ls_provider")
        self.calls[run_id] = _Call(
            time.monotonic(), str(model) if model else None, caller_of(metadata), str(provider) if provider else None
        )

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, *, run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._open(run_id, serialized, metadata, kwargs)

    async def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._open(run_id, serialized, metadata, kwargs)

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        call = self.calls.get(run_id)
        if call is not None and call.first_token is None:
            call.first_token = time.monotonic()
        usage = getattr(getattr(chunk, "message", None), "usage_metadata", None)
        if call is not None and usage:
            call.usage = add_usage(call.usage, usage)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self.calls.pop(run_id, None)
        if call is None:
            return
        usage, model = _usage_of(response)
        self._record(run_id, call, usage if usage is not None else call.usage, model or call.model)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self.calls.pop(run_id, None)
        if call is not None:
            self._record(run_id, call, call.usage, call.model, error=error)

    def close(self) -> None:
        """Record every call still open (the run is ending)."""
        for run_id, call in list(self.calls.items()):
            self._record(run_id, call, call.usage, call.model, incomplete=True)
        self.calls.clear()

    def _record(self, run_id: UUID, call: _Call, usage: Any, model: str | None, *, error: BaseException | None = None, incomplete: bool = False) -> None:
        payload: dict[str, Any] = {
            "call_id": str(run_id),
            "model": model,
            "caller": call.caller,
            "usage": to_jsonable(usage) if usage else None,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 3),
        }
        if call.provider is not None:
            payload["provider"] = call.provider
        if call.first_token is not None:
            payload["ttft_ms"] = round((call.first_token - call.started) * 1000, 3)
        if error is not None:
            payload["error"] = type(error).__name__
        if error is not None or incomplete:
            payload["incomplete"] = True
        self.recording.feed(LLM_USAGE, payload)


def _usage_of(response: LLMResult) -> tuple[Any, str | None]:
    """The usage and model a finished call reports (LangChain's ``usage_metadata``, else the OpenAI-style ``token_usage``)."""
    usage = None
    model = None
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                message = generation.message
                if getattr(message, "usage_metadata", None):
                    usage = add_usage(usage, message.usage_metadata)  # type: ignore[attr-defined]  # only AI messages have it: checked above
                meta = message.response_metadata or {}
                model = model or meta.get("model_name") or meta.get("model")
    if usage is None and response.llm_output:
        counts = response.llm_output.get("token_usage") or response.llm_output.get("usage")
        if isinstance(counts, Mapping):
            inputs = counts.get("prompt_tokens", counts.get("input_tokens"))
            outputs = counts.get("completion_tokens", counts.get("output_tokens"))
            if isinstance(inputs, int) and isinstance(outputs, int):
                usage = {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": counts.get("total_tokens", inputs + outputs)}
        model = model or response.llm_output.get("model_name") or response.llm_output.get("model")
    return usage, model


def _name_messages(chunk: Any) -> None:
    """Give every message of a node's update an id if it has none, on the message object itself.

    LangGraph's ``add_messages`` keeps an id a message already has, so the
    update in the log and the message in the thread's state carry the same id
    (the messages projection deduplicates by it).
    """
    if not isinstance(chunk, Mapping):
        return
    for update in chunk.values():
        if isinstance(update, Mapping):
            messages = update.get("messages")
            for message in messages if isinstance(messages, (list, tuple)) else (messages,):
                if isinstance(message, BaseMessage) and not message.id:
                    message.id = str(uuid.uuid4())


async def with_events(
    graph: Any, input: Any, config: dict[str, Any], run_id: UUID, name: str, options: Mapping[str, Any]
) -> AsyncIterator[tuple[Any, ...]]:
    """The graph's stream parts, and LangChain's ``astream_events`` (v2) as parts of mode ``events``.

    As the LangGraph API streams the ``events`` mode: the graph runs once,
    under ``astream_events``, with the run's id as the root run's id and
    the graph's name (``graph_id``) as its name; the
    root's own ``on_chain_stream`` events carry the graph's stream parts
    (the other modes, namespaced as usual) and are not sent as events; every
    other event is, whole, with no namespace (subgraphs' events included).
    """
    config = {**config, "run_id": run_id, "run_name": name}
    async for event in graph.astream_events(input, config, version="v2", **options):
        if event.get("event") == "on_chain_stream" and not event.get("parent_ids"):
            part = event.get("data", {}).get("chunk")
            if isinstance(part, tuple) and len(part) in (2, 3):
                yield part
            continue
        yield (EVENTS, event)


class Recording:
    """The events of one run of the ledger, written as its graph streams."""

    def __init__(self, ledger: Ledger, ref: RunRef, request: RunRequest) -> None:
        self.ledger = ledger
        self.ref = ref
        self.request = request
        self.usage = UsageHandler(self)
        self.interrupts: list[Any] = []
        self.breakpoint = False
        """The graph stopped at a static breakpoint (``interrupt_before`` / ``interrupt_after``): an empty ``__interrupt__``."""
        self.chunks = 0
        self.ended: Event | None = None
        self.graph_thread_id = str(ref.thread_id)
        self.resume = False
        """Continue the graph from the thread's latest checkpoint (input None) rather than from the request's input."""
        self.scrubber = request.scrubber()
        """Replaces the run's known secret values in every payload before it is hashed (None: the run has none)."""

    def config(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The run's config for LangGraph: ``base`` (else the request's) with the run's ids and the usage handler.

        ``graph_thread_id`` is the thread id the graph's checkpointer sees
        (the ledger's thread, unless a recorder's caller named its own).
        """
        config = dict(base) if base is not None else copy.deepcopy(dict(self.request.config))
        ids = {"run_id": str(self.ref.run_id), "assistant_id": self.request.assistant_id}
        config["configurable"] = {**(config.get("configurable") or {}), **ids, "thread_id": self.graph_thread_id}
        if self.resume:  # a later attempt continues from the run's own latest checkpoint, not from where it forked
            for key in CHECKPOINT_KEYS:
                config["configurable"].pop(key, None)
        if self.request.actor is not None:
            config["configurable"].update(actor.configurable(self.request.actor))
        config["metadata"] = {**self.request.metadata, **(config.get("metadata") or {}), **ids, "thread_id": str(self.ref.thread_id)}
        callbacks = config.get("callbacks")
        config["callbacks"] = [*(callbacks if isinstance(callbacks, list) else []), self.usage]
        return config

    def graph_input(self) -> Any:
        """What the graph is invoked with: None to resume from the latest checkpoint, else the request's command or input."""
        if self.resume:
            return None
        return Command(**self.request.command) if self.request.command else self.request.input

    def scrubbed(self, payload: Any) -> Any:
        """A JSON-like payload with the run's known secret values replaced."""
        return payload if self.scrubber is None else self.scrubber.json(payload)

    def feed(self, kind: str, payload: Any) -> None:
        self.ledger.feed(self.ref, kind, self.scrubbed(payload))

    def record(self, namespace: tuple[str, ...], mode: str, chunk: Any) -> None:
        """Append one part of the stream."""
        if mode == "updates":
            _name_messages(chunk)
            if not namespace and isinstance(chunk, Mapping) and INTERRUPT_KEY in chunk:
                value = chunk[INTERRUPT_KEY]
                self.interrupts.extend(value if isinstance(value, (list, tuple)) else [value])
                self.breakpoint = self.breakpoint or not value
        self.chunks += 1
        data = encode(chunk)
        if self.scrubber is not None:
            data = self.scrubber.text(data)
        self.ledger.feed_encoded(self.ref, stream_kind(mode, namespace), data)

    async def stream(
        self, graph: Any, input: Any = None, config: Mapping[str, Any] | None = None
    ) -> AsyncIterator[tuple[tuple[str, ...], str, Any]]:
        """Run ``graph`` as the request says, recording each part; yield ``(namespace, mode, chunk)``.

        ``input`` and ``config`` default to the request's.
        """
        request = self.request
        options: dict[str, Any] = {"stream_mode": request.graph_modes, "subgraphs": request.stream_subgraphs}
        for name in ("interrupt_before", "interrupt_after", "context"):
            if getattr(request, name) is not None:
                options[name] = getattr(request, name)
        if input is None:
            input = self.graph_input()
        if EVENTS in request.stream_mode:
            parts = with_events(graph, input, self.config(config), self.ref.run_id, request.graph, options)
        else:
            parts = graph.astream(input, self.config(config), **options)
        with checkpoint.scrubbing(self.ref.run_id, self.scrubber):
            async for part in parts:
                if len(part) == 3:
                    namespace, mode, chunk = part
                else:
                    (mode, chunk), namespace = part, ()
                self.record(tuple(namespace), mode, chunk)
                yield tuple(namespace), mode, chunk

    # -- the end -------------------------------------------------------------------

    async def _end(self, kind: str, payload: Mapping[str, Any], error: Mapping[str, Any] | None = None) -> Event | None:
        """Append the terminal event (and an ``error`` stream event before it); None if the run had ended already."""
        self.usage.close()
        try:
            if error is not None:
                self.feed(STREAM_ERROR, {"error": error["type"], "message": error["message"]})
            if self.request.on_completion == "delete":  # a stateless run's thread goes with its end, in one transaction
                self.ended = await lifecycle.end(self.ledger, self.ref, kind, self.scrubbed(dict(payload)))
            else:
                self.ended = await self.ledger.append(self.ref, kind, self.scrubbed(dict(payload)))
        except RunFinished as exc:
            _log.warning("run %s was ended elsewhere (%s) before this process could end it", self.ref.run_id, exc.status)
            return None
        return self.ended

    async def succeed(self) -> Event | None:
        """End the run: success, or interrupted when the graph stopped at an interrupt or a breakpoint."""
        if self.interrupts:
            return await self._end(RUN_INTERRUPTED, {"reason": "interrupt", "interrupts": to_jsonable(self.interrupts)})
        if self.breakpoint:
            return await self._end(RUN_INTERRUPTED, {"reason": "breakpoint"})
        return await self._end(RUN_SUCCEEDED, {})

    async def fail(self, exc: BaseException) -> Event | None:
        error = {"type": type(exc).__name__, "message": str(exc)}
        return await self._end(RUN_FAILED, {"error": error}, error)

    async def time_out(self, seconds: float) -> Event | None:
        error = {"type": "TimeoutError", "message": f"the run did not finish within {seconds:g} s"}
        return await self._end(RUN_TIMED_OUT, {"error": error}, error)

    async def release(self, owner: str, reason: str, attempt: int) -> Event | None:
        """Give the run back unfinished (see :func:`lifecycle.release <graphledger.runs.lifecycle.release>`).

        The LLM calls still open are recorded first, as incomplete: the tokens
        this attempt spent count. None if ``owner`` no longer held the run.
        """
        self.usage.close()
        return await lifecycle.release(self.ledger, self.ref, owner, reason=reason, attempt=attempt, secrets=self.request.secrets)

    async def interrupt(self, reason: str, action: str | None = None) -> Event | None:
        payload = {"reason": reason}
        if action is not None:
            payload["action"] = action
        return await self._end(RUN_INTERRUPTED, payload)


class Recorder:
    """Record runs that the caller drives itself, for teams with their own server.

    ::

        recorder = Recorder(ledger)
        async for chunk in recorder.astream(graph, {"messages": [...]}, config, stream_mode="messages"):
            ...  # exactly what graph.astream(...) would have yielded

    Each call is one run of the ledger, with the same events a worker writes:
    ``run.created``, ``run.started``, every stream part, LLM usage, and the
    end (success, failure with the error, or interrupted when the caller stops
    iterating early or is cancelled). The run holds a lease renewed while it
    streams, so a process that dies mid-run leaves a run the reaper ends.
    """

    def __init__(self, ledger: Ledger, *, lease_seconds: float = 60.0, owner: str | None = None) -> None:
        self.ledger = ledger
        self.lease_seconds = lease_seconds
        self.owner = owner or f"recorder {os.uname().nodename}:{os.getpid()}"

    async def astream(
        self,
        graph: Any,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        stream_mode: str | Sequence[str] = "values",
        subgraphs: bool = False,
        thread_id: UUID | str | None = None,
        assistant_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        run_id: UUID | None = None,
    ) -> AsyncIterator[Any]:
        """Stream ``graph`` like ``graph.astream(input, config, stream_mode=..., subgraphs=...)``, recording the run."""
        single = isinstance(stream_mode, str)
        modes = stream_modes([stream_mode] if single else list(stream_mode))
        if EVENTS in modes:  # graph.astream has no such mode; this yields what it would
            raise InvalidRequest('stream_mode "events" is not a mode of graph.astream; the HTTP API streams it')
        wanted = {STREAM_MODES[m] for m in modes}
        config = dict(config or {})
        # Input messages get their ids here, so the log and the graph's state name them alike.
        input = with_message_ids(input)
        external = thread_id if thread_id is not None else (config.get("configurable") or {}).get("thread_id")
        thread = ledger_thread_id(external)
        body = {
            "assistant_id": assistant_id or getattr(graph, "name", None) or "graph",
            "input": input if not isinstance(input, Command) else None,
            "command": _command_body(input) if isinstance(input, Command) else None,
            "config": {k: v for k, v in config.items() if k not in ("callbacks", "configurable")}
            | {"configurable": {k: v for k, v in (config.get("configurable") or {}).items() if k != "thread_id"}},
            "metadata": dict(metadata or {}),
            "stream_mode": modes,
            "stream_subgraphs": subgraphs,
            "if_not_exists": "create",
        }
        request = RunRequest.parse(body)
        thread_meta = {"thread_id": str(external)} if external is not None and str(external) != str(thread) else {}
        admitted = await lifecycle.admit(
            self.ledger, request, thread_id=thread, run_id=run_id, thread_metadata=thread_meta, executor=EXECUTOR_CALLER,
            start_as=(self.owner, self.lease_seconds),
        )
        ref = admitted.ref
        recording = Recording(self.ledger, ref, request)
        if external is not None:
            recording.graph_thread_id = str(external)
        keeper = LeaseKeeper(self.ledger, self.owner, self.lease_seconds)
        keeper.hold(ref)
        keeper.start()
        try:
            # The caller's own objects go to the graph unchanged; the log holds their JSON form.
            async for namespace, mode, chunk in recording.stream(graph, input, config):
                if mode not in wanted or (namespace and not subgraphs):
                    continue
                if subgraphs:
                    yield (namespace, chunk) if single else (namespace, mode, chunk)
                else:
                    yield chunk if single else (mode, chunk)
        except (GeneratorExit, asyncio.CancelledError):
            with contextlib.suppress(LedgerError):
                await asyncio.shield(recording.interrupt("caller stopped"))
            raise
        except BaseException as exc:
            await recording.fail(exc)
            raise
        else:
            await recording.succeed()
        finally:
            await keeper.close()

    async def ainvoke(self, graph: Any, input: Any, config: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Like ``graph.ainvoke``: the final state values, with the run recorded."""
        last = None
        async for chunk in self.astream(graph, input, config, stream_mode="values", **options):
            last = chunk
        return last


def _command_body(command: Command[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if command.resume is not None:
        body["resume"] = command.resume
    if command.update is not None:
        body["update"] = command.update
    if command.goto:
        body["goto"] = command.goto
    return body


THREAD_NAMESPACE = uuid.UUID("0b4a1c52-5a0e-4d1e-9d57-6f1c1f2f5e10")


def ledger_thread_id(thread: UUID | str | None) -> UUID | None:
    """The ledger's thread for a caller's thread id: itself when it is a UUID, else a UUID derived from it."""
    if thread is None:
        return None
    if isinstance(thread, UUID):
        return thread
    try:
        return UUID(str(thread))
    except ValueError:
        return uuid.uuid5(THREAD_NAMESPACE, str(thread))
