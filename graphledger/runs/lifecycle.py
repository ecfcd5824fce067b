"""Run lifecycle commands, each one transaction on the log: admit, cancel, claim, start, renew, reap.

Every transition is an event appended with :func:`~graphledger.ledger.append.append_at`
while the run's head row is locked, so the decision and its record commit
together or not at all:

* **admit** locks the thread row (admissions of one thread are serialised),
  then its active runs, decides the multitask strategy, cancels what it must
  and appends ``run.created``;
* **cancel** appends ``run.cancel_requested``; a pending run also gets its
  terminal ``run.interrupted`` at once, a running one is stopped by the worker
  that holds it (it follows the run's events);
* **claim** takes pending runs with ``FOR UPDATE SKIP LOCKED``, a thread's
  runs strictly in admission order and never while another of its runs is
  running, sets the lease and appends ``run.started``;
* **renew** extends the leases a worker still holds; **reap** ends runs whose
  lease expired more than a grace period ago with ``run.failed``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from graphledger.ledger import Ledger
from graphledger.ledger.append import INSERT_RUN_SQL, append_at, load_heads
from graphledger.ledger.errors import InvalidEvent, RunNotFound, ThreadNotFound, translate
from graphledger.ledger.events import (
    RUN_CANCEL_REQUESTED,
    RUN_CREATED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_STARTED,
    TERMINAL_STATUSES,
    Event,
    NewEvent,
    RunRef,
    jsonb_text,
)
from graphledger.ledger.read import read_run
from graphledger.runs import checkpoint
from graphledger.runs.errors import InvalidRequest, NotCancellable, NotPending, ThreadBusy
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.periodic import Periodic
from graphledger.runs.request import CANCEL_ACTIONS, RunRequest

_log = logging.getLogger("graphledger.runs")

ENSURE_THREAD_SQL = "INSERT INTO threads (thread_id, metadata) VALUES ($1, $2::jsonb) ON CONFLICT (thread_id) DO NOTHING"
# NO KEY UPDATE serialises admissions of a thread, yet lets other transactions
# take the KEY SHARE lock that the foreign key check of an update of one of its
# runs takes (a run row updated twice in one transaction is checked again).
LOCK_THREAD_SQL = "SELECT deleted_at IS NOT NULL AS deleted FROM threads WHERE thread_id = $1 FOR NO KEY UPDATE"
ACTIVE_SQL = "SELECT run_id, status FROM runs WHERE thread_id = $1 AND status IN ('pending', 'running') LIMIT 1"
MARK_DELETED_SQL = "UPDATE threads SET deleted_at = now(), updated_at = now() WHERE thread_id = $1"
LOCK_ACTIVE_SQL = """
SELECT run_id, status FROM runs
WHERE thread_id = $1 AND status IN ('pending', 'running')
ORDER BY run_id FOR UPDATE
"""
LOCK_RUN_SQL = "SELECT status FROM runs WHERE thread_id = $1 AND run_id = $2 FOR UPDATE"
INSERT_SECRETS_SQL = "INSERT INTO run_secrets (thread_id, run_id, secrets) VALUES ($1, $2, $3::jsonb)"
TAKE_SECRETS_SQL = "DELETE FROM run_secrets WHERE thread_id = $1 AND run_id = $2 RETURNING secrets"

# A thread's pending run is claimable only when no run of the thread is
# running and none was admitted before it and is still pending. Runs being
# claimed by another worker are locked, skipped here, and still 'pending' to
# this snapshot, so they hold back the runs after them.
CLAIM_SQL = """
SELECT r.thread_id, r.run_id FROM runs r
WHERE r.status = 'pending'
  AND NOT EXISTS (
    SELECT 1 FROM runs o
    WHERE o.thread_id = r.thread_id AND o.status IN ('pending', 'running')
      AND (o.status = 'running' OR o.queue_position < r.queue_position))
ORDER BY r.queue_position
LIMIT $1
FOR UPDATE OF r SKIP LOCKED
"""
SET_LEASE_SQL = """
UPDATE runs SET lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4)
WHERE thread_id = $1 AND run_id = $2
"""
RENEW_SQL = """
UPDATE runs r SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($2::uuid[], $3::uuid[]) AS k(thread_id, run_id)
WHERE r.thread_id = k.thread_id AND r.run_id = k.run_id AND r.lease_owner = $1 AND r.status = 'running'
RETURNING r.thread_id, r.run_id
"""
# A running run with no lease (started by a writer that takes none) is judged
# by its last append instead.
EXPIRED_SQL = """
SELECT thread_id, run_id, lease_owner, lease_expires_at FROM runs
WHERE status = 'running'
  AND coalesce(lease_expires_at, updated_at + make_interval(secs => $2)) < now() - make_interval(secs => $1)
ORDER BY lease_expires_at NULLS FIRST
LIMIT $3
FOR UPDATE SKIP LOCKED
"""


@dataclass(slots=True)
class Admitted:
    """A run admitted to the log, and the runs its multitask strategy cancelled."""

    ref: RunRef
    created: Event
    cancelled: list[RunRef] = field(default_factory=list)


@dataclass(slots=True)
class Claimed:
    """A run a worker now holds: its request (secrets put back) and its ``run.started`` event."""

    ref: RunRef
    request: RunRequest
    started: Event


def _event(kind: str, payload: Any) -> NewEvent:
    return NewEvent.of(kind, payload)


async def _commit(ledger: Ledger, events: Iterable[Event]) -> None:
    """Hand events appended in a transaction that just committed to this process's subscribers."""
    events = list(events)
    if events and ledger.hub is not None:
        ledger.hub.publish(events)


async def admit(
    ledger: Ledger,
    request: RunRequest,
    *,
    thread_id: UUID | None = None,
    run_id: UUID | None = None,
    thread_metadata: Mapping[str, Any] | None = None,
    graphs: GraphRegistry | None = None,
) -> Admitted:
    """Admit a run on ``thread_id`` (a new thread when None) under the request's multitask strategy.

    Raises :class:`~graphledger.ledger.errors.ThreadNotFound` for an unknown
    thread unless ``if_not_exists`` is ``create``, and :class:`ThreadBusy`
    when the strategy is ``reject`` and the thread has an active run. With
    ``interrupt`` or ``rollback`` the active runs are cancelled in the same
    transaction; the new run starts once they have ended. With ``graphs``,
    an ``assistant_id`` that names none of them raises :class:`UnknownAssistant`.
    """
    if graphs is not None:
        graphs.check(request.assistant_id)
    create = thread_id is None or request.if_not_exists == "create"
    thread_id = thread_id or uuid4()
    ref = RunRef(thread_id, run_id or uuid4())
    appended: list[Event] = []
    cancelled: list[RunRef] = []
    async with ledger.pool.acquire() as conn:
        with translate():
            async with conn.transaction():
                if create:
                    await conn.execute(ENSURE_THREAD_SQL, thread_id, jsonb_text(dict(thread_metadata or {}), "thread metadata"))
                deleted = await conn.fetchval(LOCK_THREAD_SQL, thread_id)
                if deleted is None:
                    raise ThreadNotFound(f"thread {thread_id} not found")
                if deleted:
                    raise ThreadNotFound(f"thread {thread_id} was deleted; it takes no new runs")
                active = await conn.fetch(LOCK_ACTIVE_SQL, thread_id)
                if active and request.multitask_strategy == "reject":
                    raise ThreadBusy(
                        f"thread {thread_id} has an active run ({active[0]['run_id']}, {active[0]['status']}); "
                        "multitask_strategy is reject"
                    )
                if active and request.multitask_strategy in CANCEL_ACTIONS:
                    for row in active:
                        other = RunRef(thread_id, row["run_id"])
                        appended += await _cancel_locked(
                            conn, ledger, other, row["status"], request.multitask_strategy, reason="multitask", by=ref.run_id
                        )
                        cancelled.append(other)
                try:
                    await conn.execute(INSERT_RUN_SQL, ref.thread_id, ref.run_id, request.assistant_id, jsonb_text(request.metadata, "metadata"))
                except asyncpg.UniqueViolationError:
                    raise InvalidEvent(f"run {ref.run_id} already exists") from None
                (created,) = await append_at(conn, ref, [_event(RUN_CREATED, request.record())], 0, projector=ledger.projector)
                if request.secrets:
                    await conn.execute(INSERT_SECRETS_SQL, ref.thread_id, ref.run_id, jsonb_text(request.secrets, "secret config values"))
    ledger.writer.seed(ref, created)
    await _commit(ledger, [*appended, created])
    return Admitted(ref, created, cancelled)


async def delete_thread(ledger: Ledger, thread_id: UUID) -> None:
    """Delete a thread: its state (checkpoints) goes, its record stays.

    The thread is marked deleted: it takes no new runs and its id is not
    reused, while its runs, their events and the projections remain readable,
    exportable and verifiable. Refused with :class:`ThreadBusy` while a run of
    the thread is pending or running (cancel it first).
    """
    async with ledger.pool.acquire() as conn:
        with translate():
            async with conn.transaction():
                # Under the admission lock no run can join the thread; runs only leave the active set.
                deleted = await conn.fetchval(LOCK_THREAD_SQL, thread_id)
                if deleted is None or deleted:
                    raise ThreadNotFound(f"thread {thread_id} not found")
                active = await conn.fetch(ACTIVE_SQL, thread_id)
                if active:
                    raise ThreadBusy(
                        f"thread {thread_id} has an active run ({active[0]['run_id']}, {active[0]['status']}); cancel it first"
                    )
                await conn.execute(MARK_DELETED_SQL, thread_id)
                await checkpoint.forget(conn, thread_id)


async def _lock_run(conn: asyncpg.Connection, ref: RunRef) -> str:
    """Lock a run's head row for this transaction; return its status."""
    status: str | None = await conn.fetchval(LOCK_RUN_SQL, ref.thread_id, ref.run_id)
    if status is None:
        raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
    return status


async def _cancel_locked(
    conn: asyncpg.Connection, ledger: Ledger, ref: RunRef, status: str, action: str, *, reason: str, by: UUID | None = None
) -> list[Event]:
    """Cancel a run whose head row this transaction holds: end it if pending, else ask its worker."""
    request: dict[str, Any] = {"action": action, "reason": reason}
    if by is not None:
        request["by_run_id"] = str(by)
    head = (await load_heads(conn, [ref]))[ref]
    new = [_event(RUN_CANCEL_REQUESTED, request)]
    if status == "pending":
        new.append(_event(RUN_INTERRUPTED, {"reason": "cancel", "action": action}))
        await conn.execute("DELETE FROM run_secrets WHERE thread_id = $1 AND run_id = $2", ref.thread_id, ref.run_id)
    return await append_at(conn, ref, new, head.seq, projector=ledger.projector)


@dataclass(slots=True)
class Cancelled:
    """What a cancel did: ``status`` is the run's status right after it."""

    ref: RunRef
    status: str
    requested: bool  # a cancel request was appended (False: the run had already been interrupted)


async def cancel(ledger: Ledger, ref: RunRef, action: str = "interrupt", *, reason: str = "cancel") -> Cancelled:
    """Cancel a run: a pending one ends at once, a running one is stopped by its worker.

    Cancelling an interrupted run again succeeds and changes nothing;
    cancelling a run that ended otherwise raises :class:`NotCancellable`.
    """
    if action not in CANCEL_ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(CANCEL_ACTIONS)}, not {action!r}")
    async with ledger.pool.acquire() as conn:
        with translate():
            async with conn.transaction():
                status = await _lock_run(conn, ref)
                if status == "interrupted":
                    return Cancelled(ref, status, requested=False)
                if status in TERMINAL_STATUSES:
                    raise NotCancellable(f"run {ref.run_id} already ended ({status}); there is nothing to cancel")
                events = await _cancel_locked(conn, ledger, ref, status, action, reason=reason)
    await _commit(ledger, events)
    return Cancelled(ref, "interrupted" if status == "pending" else status, requested=True)


async def _start_locked(conn: asyncpg.Connection, ledger: Ledger, ref: RunRef, owner: str, lease_seconds: float) -> Event:
    await conn.execute(SET_LEASE_SQL, ref.thread_id, ref.run_id, owner, float(lease_seconds))
    head = (await load_heads(conn, [ref]))[ref]
    started = {"worker": owner, "lease_seconds": lease_seconds}
    (event,) = await append_at(conn, ref, [_event(RUN_STARTED, started)], head.seq, projector=ledger.projector)
    return event


async def claim(ledger: Ledger, owner: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
    """Take up to ``limit`` pending runs for ``owner``: lease set and ``run.started`` appended."""
    if limit <= 0:
        return []
    claimed: list[Claimed] = []
    async with ledger.pool.acquire() as conn:
        with translate():
            async with conn.transaction():
                for row in await conn.fetch(CLAIM_SQL, limit):
                    ref = RunRef(row["thread_id"], row["run_id"])
                    (created,) = await read_run(conn, ref, 0, 1)
                    secrets = await conn.fetchval(TAKE_SECRETS_SQL, ref.thread_id, ref.run_id)
                    request = RunRequest.recorded(created.value, json.loads(secrets) if secrets else None)
                    started = await _start_locked(conn, ledger, ref, owner, lease_seconds)
                    claimed.append(Claimed(ref, request, started))
    for item in claimed:
        ledger.writer.seed(item.ref, item.started, "running")
    await _commit(ledger, [c.started for c in claimed])
    return claimed


async def start(ledger: Ledger, ref: RunRef, owner: str, *, lease_seconds: float) -> Event:
    """Start a pending run that ``owner`` executes itself (the recorder): lease set and ``run.started`` appended."""
    async with ledger.pool.acquire() as conn:
        with translate():
            async with conn.transaction():
                status = await _lock_run(conn, ref)
                if status != "pending":
                    raise NotPending(f"run {ref.run_id} is {status}, not pending: it cannot be started")
                event = await _start_locked(conn, ledger, ref, owner, lease_seconds)
    ledger.writer.seed(ref, event, "running")
    await _commit(ledger, [event])
    return event


async def renew(ledger: Ledger, owner: str, refs: Iterable[RunRef], *, lease_seconds: float) -> set[RunRef]:
    """Extend ``owner``'s leases on ``refs``; return those it still holds (the others ended or were reaped)."""
    refs = list(refs)
    if not refs:
        return set()
    async with ledger.pool.acquire() as conn:
        with translate():
            rows = await conn.fetch(RENEW_SQL, owner, [r.thread_id for r in refs], [r.run_id for r in refs], float(lease_seconds))
    return {RunRef(row["thread_id"], row["run_id"]) for row in rows}


async def reap(ledger: Ledger, *, grace_seconds: float, idle_seconds: float, limit: int = 100) -> list[Event]:
    """End running runs whose lease expired ``grace_seconds`` ago with ``run.failed``; return those events.

    A running run that never took a lease is reaped once it appended
    nothing for ``idle_seconds`` plus the grace.
    """
    failed: list[Event] = []
    async with ledger.pool.acquire() as conn:
        with translate():
            async with conn.transaction():
                for row in await conn.fetch(EXPIRED_SQL, float(grace_seconds), float(idle_seconds), limit):
                    ref = RunRef(row["thread_id"], row["run_id"])
                    head = (await load_heads(conn, [ref]))[ref]
                    owner = row["lease_owner"] or "a writer without a lease"
                    error = {"type": "LeaseExpired", "message": f"{owner} stopped renewing its lease on the run"}
                    new = [_event("stream:error", {"error": error["type"], "message": error["message"]}), _event(RUN_FAILED, {"error": error})]
                    failed += await append_at(conn, ref, new, head.seq, projector=ledger.projector)
    await _commit(ledger, failed)
    return failed


class LeaseKeeper(Periodic):
    """Renews ``owner``'s leases on the runs it holds, every third of the lease.

    A run missing from a renewal ended or was reaped meanwhile: ``on_lost``
    is called for it, and the holder must stop writing to it.
    """

    name = "lease renewal"

    def __init__(
        self, ledger: Ledger, owner: str, lease_seconds: float, on_lost: Callable[[RunRef], None] | None = None
    ) -> None:
        super().__init__(lease_seconds / 3, delay_first=True)
        self.ledger = ledger
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.on_lost = on_lost
        self.held: set[RunRef] = set()

    def hold(self, ref: RunRef) -> None:
        self.held.add(ref)

    def release(self, ref: RunRef) -> None:
        self.held.discard(ref)

    async def tick(self) -> None:
        asked = set(self.held)
        kept = await renew(self.ledger, self.owner, asked, lease_seconds=self.lease_seconds)
        for ref in asked - kept:
            if ref in self.held:  # not released while renewing: it was taken from us
                self.held.discard(ref)
                _log.warning("lease on run %s lost: it ended or was reaped", ref.run_id)
                if self.on_lost is not None:
                    self.on_lost(ref)


async def join(ledger: Ledger, ref: RunRef) -> Event:
    """Wait for the run's terminal event (from any process) and return it."""
    async with ledger.pool.acquire() as conn:
        with translate():
            head = (await load_heads(conn, [ref])).get(ref)
            if head is None:
                raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
            if head.terminal:
                (last,) = await read_run(conn, ref, head.seq - 1, 1)
                return last
    async for event in ledger.tail(ref, head.seq):
        if event.is_terminal:
            return event
    raise RunNotFound(f"run {ref.run_id} ended without a terminal event in view")  # the tail always ends with one
