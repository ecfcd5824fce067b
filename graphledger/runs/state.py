"""A thread's state: read and updated through the compiled graph of the thread's assistant.

The assistant of a thread is the one its latest run named. Reads go through
``graph.aget_state`` / ``graph.aget_state_history`` with the server's
checkpointer, so ``values``, ``next`` and ``tasks`` (with their interrupts)
are LangGraph's own; they are answered in the LangGraph Platform's
ThreadState shape. A thread without runs answers an empty state.

An update of the state (``graph.aupdate_state``) is a change of the record,
and the log only holds events of runs: it is recorded as a short run of its
own, executed by its caller (the HTTP request), with the usual lifecycle:
``run.created`` (``{"command": "update_state", "values", "as_node",
"checkpoint"}``), ``run.started``, ``stream:updates`` (``{as_node: values}``),
``stream:values`` (the state after the update) and ``run.succeeded`` with the
new checkpoint's id (``run.failed`` when LangGraph refuses the update). It is
chained, exported and verified like every run, and the messages projection
sees the messages it added.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from langgraph.types import Interrupt, StateSnapshot

from graphledger.ledger import Ledger
from graphledger.ledger.errors import DatabaseUnavailable, ThreadNotFound
from graphledger.ledger.events import (
    EXECUTOR_CALLER,
    RUN_FAILED,
    RUN_SUCCEEDED,
    STREAM_ERROR,
    RunRef,
)
from graphledger.runs import lifecycle, snapshots
from graphledger.runs.checkpoint import TRANSIENT
from graphledger.runs.errors import CheckpointNotFound, InvalidRequest, NoGraph, ThreadBusy
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.recorder import stream_kind
from graphledger.runs.request import with_message_ids
from graphledger.runs.serialize import to_jsonable

UPDATE_STATE = "update_state"
"""The ``command`` of a run that records an update of a thread's state."""
UPDATE_LEASE_SECONDS = 60.0
RENDER_PAGE = 100
"""Checkpoints rendered at a time when a run's snapshot documents are made."""

EMPTY_STATE: dict[str, Any] = {
    "values": {},
    "next": [],
    "tasks": [],
    "metadata": None,
    "created_at": None,
    "checkpoint": None,
    "parent_checkpoint": None,
    "interrupts": [],
    "checkpoint_id": None,
    "parent_checkpoint_id": None,
}


def graph_config(thread_id: UUID, checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config that names the thread (and one of its checkpoints) to the checkpointer."""
    configurable: dict[str, Any] = {"thread_id": str(thread_id), "checkpoint_ns": ""}
    for key in ("checkpoint_ns", "checkpoint_id", "checkpoint_map"):
        if checkpoint is not None and checkpoint.get(key) is not None:
            configurable[key] = checkpoint[key]
    return {"configurable": configurable}


def checkpoint_json(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint as the API names it (None when ``config`` names no checkpoint)."""
    configurable = (config or {}).get("configurable") or {}
    if not configurable.get("checkpoint_id"):
        return None
    return {
        "thread_id": str(configurable.get("thread_id")),
        "checkpoint_ns": configurable.get("checkpoint_ns") or "",
        "checkpoint_id": str(configurable["checkpoint_id"]),
        "checkpoint_map": to_jsonable(configurable.get("checkpoint_map")),
    }


def interrupt_json(value: Any) -> Any:
    if isinstance(value, Interrupt):
        return {"id": value.id, "value": to_jsonable(value.value)}
    return to_jsonable(value)


def _task_json(task: Any) -> dict[str, Any]:
    state = task.state
    error = task.error
    return {
        "id": task.id,
        "name": task.name,
        "path": to_jsonable(task.path),
        "error": None if error is None else (f"{type(error).__name__}({error})" if isinstance(error, BaseException) else str(error)),
        "interrupts": [interrupt_json(i) for i in task.interrupts],
        "checkpoint": checkpoint_json(state) if isinstance(state, Mapping) else None,
        "state": snapshot_json(state) if isinstance(state, StateSnapshot) else None,
        "result": to_jsonable(task.result),
    }


def snapshot_json(snapshot: StateSnapshot) -> dict[str, Any]:
    """LangGraph's state snapshot in the API's ThreadState shape."""
    checkpoint = checkpoint_json(snapshot.config)
    if checkpoint is None or snapshot.metadata is None:
        return dict(EMPTY_STATE)
    parent = checkpoint_json(snapshot.parent_config)
    return {
        "values": to_jsonable(snapshot.values),
        "next": list(snapshot.next),
        "tasks": [_task_json(task) for task in snapshot.tasks],
        "metadata": to_jsonable(snapshot.metadata),
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint,
        "parent_checkpoint": parent,
        "interrupts": [interrupt_json(i) for i in snapshot.interrupts],
        "checkpoint_id": checkpoint["checkpoint_id"],
        "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
    }


def pending_interrupts(state: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The interrupts a state waits on, by task id (the ``interrupts`` of a thread)."""
    return {task["id"]: task["interrupts"] for task in state.get("tasks") or [] if task.get("interrupts")}


def _root(checkpoint: Mapping[str, Any] | None) -> bool:
    """Whether ``checkpoint`` names nothing, or only a checkpoint of the root graph by id (what documents serve)."""
    return checkpoint is None or (not checkpoint.get("checkpoint_ns") and not checkpoint.get("checkpoint_map"))


async def _assistant_of(session: Any, thread_id: UUID) -> str | None:
    thread = await session.threads.get(thread_id)
    if thread is None or thread.deleted:
        raise ThreadNotFound(f"thread {thread_id} not found")
    found: str | None = await session.heads.latest_assistant(thread_id)
    return found


class ThreadState:
    """Reads and updates of threads' state through their assistants' graphs."""

    def __init__(self, ledger: Ledger, graphs: GraphRegistry, checkpointer: Any) -> None:
        self.ledger = ledger
        self.graphs = graphs
        self.checkpointer = checkpointer

    async def _assistant(self, thread_id: UUID) -> str | None:
        async with self.ledger.session() as session:
            return await _assistant_of(session, thread_id)

    async def assistant_of(self, thread_id: UUID) -> str | None:
        """The graph the thread's latest run named (None: no runs yet); :class:`ThreadNotFound` for a deleted thread."""
        return await self._assistant(thread_id)

    async def graph(self, thread_id: UUID) -> Any | None:
        """The compiled graph of the thread's latest run, on the server's checkpointer (None: no runs yet)."""
        assistant = await self._assistant(thread_id)
        if assistant is None:
            return None
        return await self.graphs.resolve(assistant, graph_config(thread_id), self.checkpointer)

    async def get(self, thread_id: UUID, checkpoint: Mapping[str, Any] | None = None, *, subgraphs: bool = False) -> dict[str, Any]:
        """The thread's state (at ``checkpoint`` when given: :class:`CheckpointNotFound` if it has none such)."""
        graph = await self.graph(thread_id)
        if graph is None:
            if checkpoint is not None:
                raise CheckpointNotFound(f"thread {thread_id} has no checkpoint {checkpoint.get('checkpoint_id')}")
            return dict(EMPTY_STATE)
        state = snapshot_json(await graph.aget_state(graph_config(thread_id, checkpoint), subgraphs=subgraphs))
        if checkpoint is not None and state["checkpoint"] is None:
            raise CheckpointNotFound(f"thread {thread_id} has no checkpoint {checkpoint.get('checkpoint_id')}")
        return state

    async def state_document(
        self, thread_id: UUID, checkpoint: Mapping[str, Any] | None = None, *, subgraphs: bool = False
    ) -> str:
        """:meth:`get` as JSON text, served from the checkpoint's snapshot document when it is fresh.

        A missing or stale document is rendered live (:meth:`get`) and stored.
        What documents cannot hold (``subgraphs``, a subgraph's namespace, a
        ``checkpoint_map``) is always rendered live.
        """
        if subgraphs or not _root(checkpoint) or (checkpoint is not None and checkpoint.get("checkpoint_id") is None):
            return snapshots.dumps(await self.get(thread_id, checkpoint, subgraphs=subgraphs))
        tid = str(thread_id)
        async with self.ledger.session() as session:
            graph = await _assistant_of(session, thread_id)
            if graph is None:
                found = None
            elif checkpoint is None:
                found = await snapshots.latest(session.connection, tid, graph)
            else:
                page = await snapshots.history_page(session.connection, tid, graph, 1, checkpoint_id=checkpoint["checkpoint_id"])
                found = page[0] if page else None
        if graph is None or found is None:
            return snapshots.dumps(await self.get(thread_id, checkpoint))  # no runs, or no such checkpoint: as LangGraph answers
        checkpoint_id, version, document = found
        if document is not None:
            return document
        state = await self.get(thread_id, checkpoint)
        document = snapshots.dumps(state)
        if state["checkpoint_id"] == checkpoint_id:  # (the latest may have moved on since the read: not kept then)
            row = (checkpoint_id, version, None, document) if checkpoint is None else (checkpoint_id, version, document, None)
            async with self.ledger.session() as session:
                await snapshots.store(session.connection, tid, graph, [row])
        return document

    async def history_document(
        self,
        thread_id: UUID,
        *,
        limit: int = 10,
        before: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        checkpoint: Mapping[str, Any] | None = None,
    ) -> str:
        """:meth:`history` as JSON text: one read of the page's snapshot documents, joined as they are stored.

        The documents a page misses (or holds stale) are rendered live and
        stored: each on its own when some of the page is there, the whole page
        through ``aget_state_history`` when none is. A ``checkpoint`` other
        than a root checkpoint id is read live.
        """
        if not _root(checkpoint):
            return snapshots.dumps(await self.history(thread_id, limit=limit, before=before, metadata=metadata, checkpoint=checkpoint))
        tid = str(thread_id)
        checkpoint_id = checkpoint.get("checkpoint_id") if checkpoint else None
        async with self.ledger.session() as session:
            graph = await _assistant_of(session, thread_id)
            if graph is None:
                return "[]"
            page = await snapshots.history_page(
                session.connection, tid, graph, limit, before=before, metadata=dict(metadata) if metadata else None, checkpoint_id=checkpoint_id
            )
        missing = [(cid, version) for cid, version, document in page if document is None]
        if not missing:
            return snapshots.joined([document for _, _, document in page if document is not None])
        rendered: dict[str, str] = {}
        if len(missing) == len(page):
            states = await self.history(thread_id, limit=limit, before=before, metadata=metadata, checkpoint=checkpoint)
            texts = [snapshots.dumps(state) for state in states]
            rendered = {state["checkpoint_id"]: text for state, text in zip(states, texts, strict=True)}
            if [state["checkpoint_id"] for state in states] != [cid for cid, _, _ in page]:
                # The page changed between the two reads (a new checkpoint, a rollback): answer
                # LangGraph's page, keep what the first read versioned.
                await self._keep(tid, graph, missing, rendered)
                return snapshots.joined(texts)
        else:
            try:
                for cid, _ in missing:
                    rendered[cid] = snapshots.dumps(await self.get(thread_id, {"checkpoint_id": cid}))
            except CheckpointNotFound:  # deleted since the page was read (a rollback): answer LangGraph's page
                states = await self.history(thread_id, limit=limit, before=before, metadata=metadata, checkpoint=checkpoint)
                return snapshots.dumps(states)
        await self._keep(tid, graph, missing, rendered)
        return snapshots.joined([document if document is not None else rendered[cid] for cid, _, document in page])

    async def render_run(self, thread_id: UUID, run_id: UUID) -> None:
        """Render and store the snapshot documents of the checkpoints run ``run_id`` wrote, and of the thread's latest."""
        before: str | None = None
        while True:
            page = await self.history_document(thread_id, limit=RENDER_PAGE, before=before, metadata={"run_id": str(run_id)})
            states = json.loads(page)
            if len(states) < RENDER_PAGE:
                break
            before = states[-1]["checkpoint_id"]
        await self.state_document(thread_id)

    async def _keep(self, thread_id: str, graph: str, missing: list[tuple[str, str]], rendered: Mapping[str, str]) -> None:
        rows = [(cid, version, rendered[cid], None) for cid, version in missing if cid in rendered]
        async with self.ledger.session() as session:
            await snapshots.store(session.connection, thread_id, graph, rows)

    async def history(
        self,
        thread_id: UUID,
        *,
        limit: int = 10,
        before: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        checkpoint: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The thread's states, newest first: at most ``limit``, older than checkpoint ``before``, matching ``metadata``."""
        graph = await self.graph(thread_id)
        if graph is None:
            return []
        before_config = {"configurable": {"checkpoint_id": before}} if before else None
        found = graph.aget_state_history(graph_config(thread_id, checkpoint), filter=dict(metadata) if metadata else None, before=before_config, limit=limit)
        return [snapshot_json(snapshot) async for snapshot in found]

    async def update(
        self,
        thread_id: UUID,
        values: Any,
        *,
        as_node: str | None = None,
        checkpoint: Mapping[str, Any] | None = None,
        owner: str | None = None,
        actor: Mapping[str, Any] | None = None,
    ) -> tuple[RunRef, dict[str, Any]]:
        """Apply ``graph.aupdate_state`` and record it as a run of the thread; return the run and the new checkpoint's config.

        Raises :class:`NoGraph` for a thread without runs, :class:`ThreadBusy`
        while a run of the thread is active, and :class:`InvalidRequest` when
        LangGraph refuses the update (the run then ends failed).
        """
        assistant = await self._assistant(thread_id)
        if assistant is None:
            raise NoGraph(f"thread {thread_id} has no runs yet: no graph to update its state with")
        graph = await self.graphs.resolve(assistant, graph_config(thread_id), self.checkpointer)
        values = with_message_ids(values)  # the log and the state name new messages alike
        ref = RunRef(thread_id, uuid.uuid4())
        created = {
            "assistant_id": assistant,
            "command": UPDATE_STATE,
            "values": values,
            "as_node": as_node,
            "checkpoint": dict(checkpoint) if checkpoint is not None else None,
            "metadata": {},
            "executor": EXECUTOR_CALLER,
        }
        if actor is not None:
            created["actor"] = dict(actor)  # who changed the state, inside the hashed payload
        async with self.ledger.transaction() as tx:
            # The admission lock: no run joins the thread while this one is admitted.
            if await tx.threads.lock(thread_id):
                raise ThreadNotFound(f"thread {thread_id} not found")
            active = await tx.heads.active(thread_id)
            if active:
                other, status = active[0]
                raise ThreadBusy(f"thread {thread_id} has an active run ({other.run_id}, {status}); its state cannot be updated now")
            await tx.create_run(ref, created)
            # Started in the same transaction: a run left pending here would hold the thread up for good.
            owner = owner or f"update_state {os.uname().nodename}:{os.getpid()}"
            await lifecycle.start(tx, ref, owner, lease_seconds=UPDATE_LEASE_SECONDS)
        config = graph_config(thread_id, checkpoint)
        ids = {"run_id": str(ref.run_id), "thread_id": str(thread_id), "assistant_id": assistant}
        config["metadata"] = ids  # copied into the checkpoint's metadata, like a run's
        try:
            new_config = await graph.aupdate_state(config, values, as_node=as_node)
            after = await graph.aget_state(new_config)
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            await self.ledger.append(ref, STREAM_ERROR, {"error": error["type"], "message": error["message"]})
            await self.ledger.append(ref, RUN_FAILED, {"error": error})
            if isinstance(exc, TRANSIENT):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
            # What else the graph refuses (an unknown node, values its reducers cannot take) is the caller's to fix.
            raise InvalidRequest(f"the state update was refused: {type(exc).__name__}: {exc}") from exc
        await self.ledger.append(ref, stream_kind("updates"), {as_node or UPDATE_STATE: to_jsonable(values)})
        await self.ledger.append(ref, stream_kind("values"), to_jsonable(after.values))
        new = checkpoint_json(new_config)
        await self.ledger.append(ref, RUN_SUCCEEDED, {"checkpoint": new})
        return ref, dict(new_config)
