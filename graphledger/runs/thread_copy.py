"""Copying a thread: a new thread with the source's metadata, state and checkpoint history.

The copy is a change of the record, and the log only holds events of runs:
like a deletion or a state update it is written as a short run, here of the
new thread, executed by its caller, in the transaction that creates the
thread and copies the checkpoints:

``run.created`` ``{"command": "copy_thread", "copied_from": {"thread_id",
"checkpoint_id", "checkpoints"}, "actor", "graph_id", "assistant_id",
"executor": "caller"}``, then ``stream:values`` (the state copied, so the
messages projection shows the copy's messages) and ``run.succeeded``.

So the copy's own record says which thread (and which of its checkpoints) it
was copied from and who copied it, chained, exported and verified like
every command. The source's runs and events are not copied: they stay the
source's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID, uuid4

from graphledger.ledger import Ledger
from graphledger.ledger.errors import ThreadNotFound
from graphledger.ledger.events import NewEvent
from graphledger.ledger.threads import Thread, Visibility
from graphledger.runs import checkpoint, lifecycle
from graphledger.runs.errors import ThreadBusy
from graphledger.runs.recorder import stream_kind
from graphledger.runs.state import ThreadState

COPY_THREAD = "copy_thread"
"""The ``command`` of the run that records a thread's copy (a run of the new thread)."""
ATTEMPTS = 3


async def copy_thread(
    ledger: Ledger,
    states: ThreadState,
    source: UUID,
    *,
    metadata: Mapping[str, Any],
    visible: Visibility | None = None,
    actor: Mapping[str, Any] | None = None,
    thread_id: UUID | None = None,
) -> Thread:
    """Copy thread ``source`` into a new thread (``thread_id``, else a new id) with ``metadata``; return the new thread.

    Raises :class:`ThreadNotFound` when the source does not exist, was
    deleted or is not ``visible``, and :class:`ThreadBusy` while one of its
    runs is pending or running (its checkpoints are still being written).
    """
    target = thread_id or uuid4()
    for _ in range(ATTEMPTS):
        # The state is read through the source's graph before the transaction
        # (the checkpointer has its own connections); the transaction then
        # checks, under the source's admission lock, that it is still the latest.
        state = await states.get(source)
        graph_id = await states.assistant_of(source)
        async with ledger.transaction() as tx:
            if await tx.threads.lock(source, visible):
                raise ThreadNotFound(f"thread {source} not found")
            active = await tx.heads.active(source)
            if active:
                other, status = active[0]
                raise ThreadBusy(f"thread {source} has an active run ({other.run_id}, {status}); it cannot be copied now")
            latest = await checkpoint.latest_id(tx.connection, source)
            if latest != (state["checkpoint"] or {}).get("checkpoint_id"):
                continue  # the state changed since it was read (a state update): read it again
            thread = await tx.threads.insert(target, metadata)
            if thread is None:
                raise ThreadBusy(f"thread {target} already exists")
            copied = await checkpoint.copy(tx.connection, source, target)
            fields: dict[str, Any] = {"copied_from": {"thread_id": str(source), "checkpoint_id": latest, "checkpoints": copied}}
            if graph_id is not None:
                fields["assistant_id"] = fields["graph_id"] = graph_id  # the copy's state reads through the same graph
            values = [NewEvent.of(stream_kind("values"), state["values"])] if state["checkpoint"] is not None else []
            await lifecycle.record_command(tx, target, COPY_THREAD, actor, fields, values)  # who copied it, inside the hashed payload
            return thread
    raise ThreadBusy(f"thread {source} kept changing while it was copied; try again")
