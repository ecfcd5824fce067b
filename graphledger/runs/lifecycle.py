"""Run lifecycle commands, each one transaction on the log: admit, cancel, claim, start, renew, reap.

Every transition is an event appended in a ledger transaction
(:meth:`Ledger.transaction <graphledger.ledger.Ledger.transaction>`) while the
run's head row is locked, so the decision and its record commit together or
not at all:

* **admit** locks the thread row (admissions of one thread are serialised),
  then its active runs, decides the multitask strategy, cancels what it must
  and appends ``run.created``;
* **cancel** appends ``run.cancel_requested``; a pending run also gets its
  terminal ``run.interrupted`` at once, a running one is stopped by the worker
  that holds it (it follows the run's events);
* **claim** takes pending runs with ``FOR UPDATE SKIP LOCKED``, a thread's
  runs strictly in admission order and never while another of its runs is
  running, sets the lease and appends ``run.started``;
* **release** gives a running run back unfinished (its worker's process is
  stopping): the lease is cleared, the run's secrets are put back and
  ``run.released`` makes it pending again, so that any worker claims it and
  resumes it as the run's next attempt;
* **renew** extends the leases a worker still holds; **reap** ends runs whose
  lease expired more than a grace period ago with ``run.failed`` (the loops
  that call them are in :mod:`graphledger.runs.leases`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from graphledger.ledger import Ledger
from graphledger.ledger.errors import DatabaseUnavailable, LedgerError, RunNotFound, ThreadNotFound
from graphledger.ledger.events import (
    ACTIVE_STATUSES,
    EXECUTOR_CALLER,
    EXECUTOR_SERVER,
    RUN_CANCEL_REQUESTED,
    RUN_CREATED,
    RUN_FAILED,
    RUN_INTERRUPTED,
    RUN_RELEASED,
    RUN_STARTED,
    RUN_SUCCEEDED,
    STREAM_ERROR,
    TERMINAL_STATUSES,
    Event,
    NewEvent,
    RunRef,
)
from graphledger.ledger.session import Transaction
from graphledger.ledger.threads import Visibility
from graphledger.runs import budget_use, checkpoint, pricing, secrets
from graphledger.runs.budgets import Budget
from graphledger.runs.errors import (
    CheckpointNotFound,
    InvalidRequest,
    NotCancellable,
    NotPending,
    OverBudget,
    RunBusy,
    ThreadBusy,
)
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.pricing import Pricer
from graphledger.runs.request import CANCEL_ACTIONS, RunRequest

_log = logging.getLogger("graphledger.runs")

DELETE_THREAD = "delete_thread"
"""The ``command`` of the run that records a thread's deletion."""
DELETE_RUN = "delete_run"
"""The ``command`` of the run that records a run's deletion (its ``record_of`` names the deleted run)."""
BULK_CANCEL_STATUSES = {"pending": ("pending",), "running": ("running",), "all": ("pending", "running")}


@dataclass(slots=True)
class Admitted:
    """A run admitted to the log, and the runs its multitask strategy cancelled."""

    ref: RunRef
    created: Event
    cancelled: list[RunRef] = field(default_factory=list)


class ClaimUncertain(DatabaseUnavailable):
    """The database was lost during a claim that had prepared ``claimed``: whether it committed is unknown."""

    def __init__(self, claimed: list[Claimed], cause: DatabaseUnavailable) -> None:
        super().__init__(f"claim of {len(claimed)} runs may or may not have committed: {cause}")
        self.claimed = claimed


@dataclass(slots=True)
class Claimed:
    """A run a worker now holds: its request (secrets put back) and its ``run.started`` event."""

    ref: RunRef
    request: RunRequest
    started: Event

    @property
    def attempt(self) -> int:
        """Which attempt of the run this is: 1, or more when an earlier one was released."""
        value = self.started.value
        attempt = value.get("attempt") if isinstance(value, dict) else None
        return attempt if isinstance(attempt, int) else 1


def _event(kind: str, payload: Any) -> NewEvent:
    return NewEvent.of(kind, payload)


async def admit(
    ledger: Ledger,
    request: RunRequest,
    *,
    thread_id: UUID | None = None,
    run_id: UUID | None = None,
    thread_metadata: Mapping[str, Any] | None = None,
    graphs: GraphRegistry | None = None,
    executor: str = EXECUTOR_SERVER,
    visible: Visibility | None = None,
    pricer: Pricer = pricing.DEFAULT,
    start_as: tuple[str, float] | None = None,
) -> Admitted:
    """Admit a run on ``thread_id`` (a new thread when None) under the request's multitask strategy.

    Raises :class:`~graphledger.ledger.errors.ThreadNotFound` for an unknown
    thread unless ``if_not_exists`` is ``create``, and :class:`ThreadBusy`
    when the strategy is ``reject`` and the thread has an active run. With
    ``interrupt`` or ``rollback`` the active runs are cancelled in the same
    transaction; the new run starts once they have ended. With ``graphs``,
    an ``assistant_id`` that names none of them raises :class:`UnknownAssistant`.
    ``executor`` is recorded in ``run.created``: workers claim only
    ``server`` runs; a ``caller`` run is started by its creator.
    A thread outside ``visible`` (an authorization filter) is not found;
    ``request.actor`` is recorded in ``run.created`` and in the cancel
    requests of the runs its strategy cancels. A request that starts from a
    checkpoint the thread does not have raises :class:`CheckpointNotFound`.

    Budgets come first (:func:`graphledger.runs.budget_use.check`): the keys
    of every budget the run falls under are locked, and a budget without room
    refuses the run with :class:`OverBudget`. Nothing of the admission is
    written (no thread, no run); the refusal is recorded in a transaction of
    its own. ``pricer`` prices calls for cost budgets.

    ``start_as`` (an owner and a lease, for a caller that executes the run
    itself) starts the run in the admission's transaction: a run admitted
    and not yet started would hold its thread up, with no lease for the
    reaper to judge, if the caller died or lost the database in between.
    """
    if graphs is not None:
        graphs.check(request.graph)
    # notify=False: notified after the commit, not in it; admissions come in
    # bursts, and commits that notify are flushed one at a time.
    try:
        async with ledger.transaction(notify=False) as tx:
            admitted = await _admit_locked(
                tx, request, thread_id=thread_id, run_id=run_id, thread_metadata=thread_metadata, executor=executor, visible=visible,
                pricer=pricer,
            )
            if start_as is not None:
                await start(tx, admitted.ref, start_as[0], lease_seconds=start_as[1])
            return admitted
    except budget_use.Refused as refused:  # rolled back: nothing of the admission was written
        raise await _refuse(ledger, refused) from None


async def _refuse(ledger: Ledger, refused: budget_use.Refused) -> OverBudget:
    """Record a refusal, and the error that answers it."""
    await budget_use.record(ledger, refused)
    return OverBudget(refused.use.detail(), budget=refused.use.budget.name, retry_after=refused.retry_after)


@dataclass(slots=True)
class Admission:
    """One run of a batch (:func:`admit_batch`): the arguments :func:`admit` takes for it."""

    request: RunRequest
    thread_id: UUID | None = None
    run_id: UUID | None = None
    thread_metadata: Mapping[str, Any] | None = None
    visible: Visibility | None = None


async def admit_batch(
    ledger: Ledger,
    admissions: Iterable[Admission],
    *,
    graphs: GraphRegistry | None = None,
    executor: str = EXECUTOR_SERVER,
    pricer: Pricer = pricing.DEFAULT,
) -> list[Admitted]:
    """Admit several runs in one transaction: all of them, or (on any error) none.

    Each run is checked against the budgets after the runs before it in the
    batch were charged; a run over a budget refuses the whole batch with
    :class:`OverBudget` (that refusal recorded).
    """
    admissions = list(admissions)
    if graphs is not None:
        for admission in admissions:
            graphs.check(admission.request.graph)
    try:
        async with ledger.transaction(notify=False) as tx:
            # Every key of the batch first, in one order: two batches never hold each other's.
            await budget_use.lock(tx, [{**a.request.record(), "executor": executor} for a in admissions])
            return [
                await _admit_locked(
                    tx, a.request, thread_id=a.thread_id, run_id=a.run_id, thread_metadata=a.thread_metadata, executor=executor,
                    visible=a.visible, pricer=pricer,
                )
                for a in admissions
            ]
    except budget_use.Refused as refused:
        raise await _refuse(ledger, refused) from None


async def _admit_locked(
    tx: Transaction,
    request: RunRequest,
    *,
    thread_id: UUID | None,
    run_id: UUID | None,
    thread_metadata: Mapping[str, Any] | None,
    executor: str,
    visible: Visibility | None,
    pricer: Pricer,
) -> Admitted:
    """The body of :func:`admit`, in the caller's transaction."""
    if thread_id is None:
        if executor == EXECUTOR_SERVER:
            request.check_stateless()
    else:
        request.on_completion = None  # only a stateless run's own new thread goes with it
    create = thread_id is None or request.if_not_exists == "create"
    thread_given = thread_id is not None
    thread_id = thread_id or uuid4()
    ref = RunRef(thread_id, run_id or uuid4())
    cancelled: list[RunRef] = []
    thread_metadata, thread_secrets = thread_metadata_without_secrets(thread_metadata)
    request.know(thread_secrets)
    payload = {**request.record(), "executor": executor}
    # Budget locks before the thread's row, in every admission: see ledger/budgets.py. When no
    # budget is defined (most admissions), that check and the thread's locks are one round trip.
    locks = None if create else await tx.heads.admission_locks_unbudgeted(thread_id, visible)
    under: list[tuple[Budget, str]] = []
    if locks is None:
        under = await budget_use.check(tx, payload, ref, thread_given=thread_given, pricer=pricer)
        if create:
            # A stateless run's own thread records that its end deletes it, until that is done (see complete_due).
            due = ref.run_id if not thread_given and request.on_completion == "delete" else None
            await tx.threads.insert(thread_id, thread_metadata, delete_after_run=due)
        locks = await tx.heads.admission_locks(thread_id, visible)  # the thread's row, then its active runs
    deleted, active = locks
    if deleted:
        raise ThreadNotFound(f"thread {thread_id} was deleted; it takes no new runs")
    # Under the admission lock: no deletion of the thread's checkpoints (a
    # thread deletion) can come between this check and the run.created. A
    # caller's run (the recorder) runs on the caller's own checkpointer.
    starts_at = request.checkpoint_id if executor == EXECUTOR_SERVER else None
    if starts_at is not None and not await checkpoint.exists(tx.connection, thread_id, starts_at):
        raise CheckpointNotFound(f"thread {thread_id} has no checkpoint {request.checkpoint_id} to start a run from")
    if active and request.multitask_strategy == "reject":
        other, status = active[0]
        raise ThreadBusy(f"thread {thread_id} has an active run ({other.run_id}, {status}); multitask_strategy is reject")
    if active and request.multitask_strategy in CANCEL_ACTIONS:
        for other, status in active:
            await _cancel_locked(tx, other, status, request.multitask_strategy, reason="multitask", by=ref.run_id, actor=request.actor)
            cancelled.append(other)
    created = await tx.create_run(ref, payload)
    await budget_use.charge(tx, ref, under)
    if request.secrets:
        await tx.secrets.put(ref, request.secrets)
    if request.webhook is not None:
        await tx.heads.set_webhook(ref, request.webhook)  # the address as given: the log has it redacted
    return Admitted(ref, created, cancelled)


def thread_metadata_without_secrets(metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """A thread's metadata with its secrets replaced by ``[redacted]``, and those secrets (None: it has none)."""
    kept, found, _ = secrets.split_secrets(dict(metadata or {}))
    return kept, found


async def delete_thread(
    ledger: Ledger, thread_id: UUID, *, visible: Visibility | None = None, actor: Mapping[str, Any] | None = None
) -> None:
    """Delete a thread: its state (checkpoints) goes, its record stays.

    The thread is marked deleted: it takes no new runs and its id is not
    reused, while its runs, their events and the projections remain readable,
    exportable and verifiable. Refused with :class:`ThreadBusy` while a run of
    the thread is pending or running (cancel it first). A thread outside
    ``visible`` is not found.

    The deletion is part of the record: it is written as a short run of the
    thread, in the same transaction (``run.created`` with ``{"command":
    "delete_thread", "actor": ...}``, then ``run.succeeded``), so who deleted
    the thread is inside a hashed payload, chained, exported and verifiable
    like any command. ``actor`` is also kept on the thread's row
    (``deleted_by``).
    """
    async with ledger.transaction() as tx:
        # Under the admission lock no run can join the thread; runs only leave the active set.
        if await tx.threads.lock(thread_id, visible):
            raise ThreadNotFound(f"thread {thread_id} not found")
        active = await tx.heads.active(thread_id)
        if active:
            other, status = active[0]
            raise ThreadBusy(f"thread {thread_id} has an active run ({other.run_id}, {status}); cancel it first")
        await _delete_thread_locked(tx, thread_id, actor)


async def record_command(
    tx: Transaction,
    thread_id: UUID,
    command: str,
    actor: Mapping[str, Any] | None,
    fields: Mapping[str, Any],
    before_end: Sequence[NewEvent] = (),
) -> RunRef:
    """Record a command given outside any run as a short run of the thread, in ``tx``.

    ``run.created`` carries the command, its ``fields`` and who gave it
    (``actor``, inside the hashed payload); ``before_end`` follows, then
    ``run.succeeded``. Executed by its caller: no worker claims it.
    """
    created: dict[str, Any] = {"command": command, "executor": EXECUTOR_CALLER, "metadata": {}, **fields}
    if actor is not None:
        created["actor"] = dict(actor)
    ref = RunRef(thread_id, uuid4())
    await tx.create_run(ref, created)
    await tx.append(ref, [*before_end, _event(RUN_SUCCEEDED, {})])
    return ref


async def _delete_thread_locked(tx: Transaction, thread_id: UUID, actor: Mapping[str, Any] | None, **why: Any) -> None:
    """Record the thread's deletion (a short run of the thread), mark it deleted and forget its checkpoints; under its admission lock."""
    await record_command(tx, thread_id, DELETE_THREAD, actor, why)
    await tx.threads.mark_deleted(thread_id, actor)
    await checkpoint.forget(tx.connection, thread_id)


async def complete(ledger: Ledger, ref: RunRef) -> bool:
    """Once a stateless run has ended, delete its thread if its request says ``on_completion: delete``; return whether it did.

    For runs that a cancel or the reaper ended; a worker ends its runs with
    :func:`end`, which does this in the terminal event's transaction. Safe to
    repeat (see :func:`_complete_locked`).
    """
    async with ledger.session() as session:  # most runs are not stateless: no lock taken for them
        created = (await session.first_events([ref])).get(ref)
    if created is None or not isinstance(created.value, dict) or created.value.get("on_completion") != "delete":
        return False
    async with ledger.transaction() as tx:
        if await tx.threads.lock(ref.thread_id):
            return False  # deleted already
        return await _complete_locked(tx, ref)


async def complete_due(ledger: Ledger, limit: int = 100, *, grace_seconds: float = 10.0) -> list[RunRef]:
    """Delete the threads of stateless runs that ended without it (the process that ended them died meanwhile).

    A cancel or the reaper ends a stateless run and deletes its thread in
    the next transaction (:func:`complete`); the thread's
    ``delete_after_run`` stays set until the deletion is done (or the thread
    is kept), so whatever a crash between the two left is found here. Runs
    that ended less than ``grace_seconds`` ago are left to whoever ended
    them. Returns the runs whose threads were deleted. The reaper calls this
    in every round that reaps.
    """
    async with ledger.session() as session:
        due = await session.threads.deletions_due(limit, grace_seconds)
    done = []
    for thread_id, run_id in due:
        ref = RunRef(thread_id, run_id)
        if await complete(ledger, ref):
            _log.warning("deleted thread %s of stateless run %s, which had ended without it", thread_id, run_id)
            done.append(ref)
        else:  # kept (cleared then), or its run asks for no deletion: either way not due any more
            async with ledger.session() as session:
                await session.threads.clear_deletion(thread_id)
    return done


async def end(ledger: Ledger, ref: RunRef, kind: str, payload: Mapping[str, Any]) -> Event:
    """Append a stateless run's terminal event and, in the same transaction, delete its thread as :func:`complete` does.

    The run's events fed to this process's writer are written first, so the
    terminal event follows every one of them. A client that sees the run
    end (a join, a wait) therefore finds the thread deleted.
    """
    try:
        await ledger.sync(ref)
    except LedgerError as exc:  # those events are not in the log; what is there stays gapless
        _log.warning("run %s: events before its end were not written: %s", ref.run_id, exc)
    delay = 0.1
    while True:  # through an outage, like every write of a worker; a retry after a lost commit finds the run ended (RunFinished)
        try:
            async with ledger.transaction() as tx:
                deleted = await tx.threads.lock(ref.thread_id)  # the admission lock first, as an admission takes it
                (event,) = await tx.append(ref, [_event(kind, dict(payload))])
                if not deleted:
                    await _complete_locked(tx, ref)
            return event
        except DatabaseUnavailable as exc:
            _log.warning("ending run %s: %s; retrying in %.2f s", ref.run_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _complete_locked(tx: Transaction, ref: RunRef) -> bool:
    """Delete the thread of ended run ``ref`` if its ``run.created`` says ``on_completion: delete``; under the thread's admission lock.

    The deletion follows :func:`delete_thread`: the thread's checkpoints go,
    its record stays, and the deletion is recorded as a short run of the
    thread (``{"command": "delete_thread", "reason": "on_completion",
    "by_run_id": ...}`` with the run's recorded actor). Nothing is done when
    another run was admitted on the thread: that keeps it, whether the run is
    still pending or running or has ended.
    """
    created = (await tx.first_events([ref])).get(ref)
    request = created.value if created is not None and isinstance(created.value, dict) else {}
    if request.get("on_completion") != "delete":
        return False
    status, others = await tx.heads.completion(ref)
    if status in ACTIVE_STATUSES:
        return False  # not ended: its own end completes it
    if others:
        # The other run may be pending or running, or ended already: a run that interrupted
        # this one at its admission ended it there, and nothing completed it then.
        _log.info("thread %s of stateless run %s is kept: another run was admitted on it", ref.thread_id, ref.run_id)
        await tx.threads.clear_deletion(ref.thread_id)
        return False
    actor = request.get("actor")
    await _delete_thread_locked(tx, ref.thread_id, actor if isinstance(actor, dict) else None, reason="on_completion", by_run_id=str(ref.run_id))
    return True


async def delete_run(
    ledger: Ledger, ref: RunRef, *, visible: Visibility | None = None, actor: Mapping[str, Any] | None = None
) -> None:
    """Delete a run: its checkpoints go, its record stays, and the LangGraph API no longer shows it.

    The deletion is written as a short run of the thread, in one transaction
    with the checks (``run.created`` with ``{"command": "delete_run",
    "record_of": <run id>, "actor": ...}``, then ``run.succeeded``). A run
    with such a record is hidden from lists, gets and joins, while its events
    stay in the log, its exports and its verification. The checkpoints the run
    wrote are deleted, as a rollback deletes them. Refused with
    :class:`RunBusy` while the run is pending or running (cancel it first).
    A run of a thread outside ``visible``, a run already deleted and a record
    run are not found.
    """
    async with ledger.transaction() as tx:
        # Under the thread's admission lock: no admission cancels or enqueues meanwhile.
        try:
            deleted = await tx.threads.lock(ref.thread_id, visible)
        except ThreadNotFound:
            deleted = True  # unknown, or outside the filter: its runs are as unknown
        if deleted:
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        status = await tx.heads.lock(ref)
        if await tx.heads.hidden(ref):
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        if status not in TERMINAL_STATUSES:
            raise RunBusy(f"run {ref.run_id} is {status}; cancel it first")
        await record_command(tx, ref.thread_id, DELETE_RUN, actor, {"record_of": str(ref.run_id)})
        await checkpoint.rollback(tx.connection, ref.thread_id, ref.run_id)


async def cancel_many(
    ledger: Ledger,
    *,
    refs: Iterable[RunRef] | None = None,
    status: str | None = None,
    action: str = "interrupt",
    actor: Mapping[str, Any] | None = None,
    visible: Visibility | None = None,
) -> list[Cancelled]:
    """Cancel the active runs among ``refs``, or every run in ``status`` (pending, running, all), in one transaction.

    Runs that are unknown, hidden, outside ``visible`` or already ended are
    left out, as the LangGraph API leaves them; what was cancelled is
    returned (nothing: the caller answers that no run was found). Each
    cancel is that of :func:`cancel`, ``actor`` recorded in its
    ``run.cancel_requested``.
    """
    if action not in CANCEL_ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(CANCEL_ACTIONS)}, not {action!r}")
    if (refs is None) == (status is None):
        raise InvalidRequest("give either run ids or a status")
    done: list[Cancelled] = []
    async with ledger.transaction() as tx:
        if refs is not None:
            # Locked in key order, as every transaction that locks several runs does: no deadlock.
            targets = []
            for ref in sorted(set(refs), key=lambda r: (r.thread_id, r.run_id)):
                if await tx.heads.exists(ref) and not await tx.heads.hidden(ref):
                    targets.append((ref, await tx.heads.lock(ref)))
        else:
            if status not in BULK_CANCEL_STATUSES:
                raise InvalidRequest(f"status must be one of {', '.join(BULK_CANCEL_STATUSES)}, not {status!r}")
            targets = await tx.heads.all_active(BULK_CANCEL_STATUSES[status])
        seen: dict[UUID, bool] = {}
        for ref, current in targets:
            if current in TERMINAL_STATUSES:
                continue
            if visible is not None:
                if ref.thread_id not in seen:
                    seen[ref.thread_id] = await tx.threads.exists(ref.thread_id, visible)
                if not seen[ref.thread_id]:
                    continue
            await _cancel_locked(tx, ref, current, action, reason="cancel", actor=actor)
            done.append(Cancelled(ref, "interrupted" if current == "pending" else current, requested=True))
    for cancelled in done:
        if cancelled.status == "interrupted":
            await complete(ledger, cancelled.ref)  # it ended here: a stateless run's thread may go, as after a single cancel
    return done


async def _cancel_locked(
    tx: Transaction, ref: RunRef, status: str, action: str, *, reason: str, by: UUID | None = None, actor: Mapping[str, Any] | None = None
) -> list[Event]:
    """Cancel a run whose head row this transaction holds: end it if pending, else ask its worker."""
    request: dict[str, Any] = {"action": action, "reason": reason}
    if by is not None:
        request["by_run_id"] = str(by)
    if actor is not None:
        request["actor"] = dict(actor)
    new = [_event(RUN_CANCEL_REQUESTED, request)]
    if status == "pending":
        new.append(_event(RUN_INTERRUPTED, {"reason": "cancel", "action": action}))
        await tx.secrets.take(ref)
        if action == "rollback" and await tx.last_of_kind(ref, RUN_STARTED) is not None:
            # Pending again after a release: its earlier attempt's checkpoints are what a rollback removes.
            await checkpoint.rollback(tx.connection, ref.thread_id, ref.run_id)
    return await tx.append(ref, new)


@dataclass(slots=True)
class Cancelled:
    """What a cancel did: ``status`` is the run's status right after it."""

    ref: RunRef
    status: str
    requested: bool  # a cancel request was appended (False: the run had already been interrupted)


async def cancel(
    ledger: Ledger,
    ref: RunRef,
    action: str = "interrupt",
    *,
    reason: str = "cancel",
    actor: Mapping[str, Any] | None = None,
    visible: Visibility | None = None,
) -> Cancelled:
    """Cancel a run: a pending one ends at once, a running one is stopped by its worker.

    Cancelling an interrupted run again succeeds and changes nothing;
    cancelling a run that ended otherwise raises :class:`NotCancellable`.
    A run whose thread is outside ``visible`` is not found; ``actor`` is
    recorded in ``run.cancel_requested``.
    """
    if action not in CANCEL_ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(CANCEL_ACTIONS)}, not {action!r}")
    async with ledger.transaction() as tx:
        if visible is not None and not await tx.threads.exists(ref.thread_id, visible):
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        status = await tx.heads.lock(ref)
        if status == "interrupted":
            return Cancelled(ref, status, requested=False)
        if status in TERMINAL_STATUSES:
            raise NotCancellable(f"run {ref.run_id} already ended ({status}); there is nothing to cancel")
        await _cancel_locked(tx, ref, status, action, reason=reason, actor=actor)
    if status == "pending":
        await complete(ledger, ref)  # it ended here: a stateless run's thread may go
    return Cancelled(ref, "interrupted" if status == "pending" else status, requested=True)


async def _next_attempt(tx: Transaction, ref: RunRef, last_kind: str | None) -> int:
    """The attempt a start of the run begins: 1 straight after admission, else one more than the last start."""
    if last_kind == RUN_CREATED:
        return 1  # the common case, known from the head: no read
    started = await tx.last_of_kind(ref, RUN_STARTED)
    if started is None:
        return 1
    previous = started.value.get("attempt") if isinstance(started.value, dict) else None
    return (previous if isinstance(previous, int) else 1) + 1


async def _start_locked(tx: Transaction, ref: RunRef, owner: str, lease_seconds: float, attempt: int) -> Event:
    await tx.heads.set_lease(ref, owner, lease_seconds)
    payload = {"worker": owner, "lease_seconds": lease_seconds, "attempt": attempt}
    (event,) = await tx.append(ref, [_event(RUN_STARTED, payload)])
    return event


async def claim(ledger: Ledger, owner: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
    """Take up to ``limit`` pending runs for ``owner``: lease set and ``run.started`` appended."""
    if limit <= 0:
        return []
    claimed: list[Claimed] = []
    try:
        async with ledger.transaction() as tx:
            refs = await tx.heads.claimable(limit)
            created = await tx.first_events(refs)
            heads = await tx.heads.load(refs)
            for ref in refs:
                request = RunRequest.recorded(created[ref].value, await tx.secrets.take(ref))
                attempt = await _next_attempt(tx, ref, heads[ref].kind)
                claimed.append(Claimed(ref, request, await _start_locked(tx, ref, owner, lease_seconds, attempt)))
    except DatabaseUnavailable as exc:
        if claimed:
            # The connection was lost with these claims prepared, perhaps at the
            # commit: they may hold. Only ``owner`` can tell which (see held_by),
            # and only this exception still has their requests (secrets included).
            raise ClaimUncertain(claimed, exc) from exc
        raise
    return claimed


async def held_by(ledger: Ledger, owner: str, refs: Iterable[RunRef]) -> set[RunRef]:
    """Those of ``refs`` that are running under ``owner``'s lease (claims whose commit did happen)."""
    refs = list(refs)
    if not refs:
        return set()
    async with ledger.session() as session:
        return await session.heads.held_by(owner, refs)


async def start(tx: Transaction, ref: RunRef, owner: str, *, lease_seconds: float) -> Event:
    """Start a pending run that ``owner`` executes itself (the recorder, a state update): lease set and ``run.started`` appended.

    In the caller's transaction, the one that admitted the run (see
    :func:`admit`'s ``start_as``): a run admitted and started apart would be
    left pending, holding its thread up, by a caller that died in between.
    """
    status = await tx.heads.lock(ref)
    if status != "pending":
        raise NotPending(f"run {ref.run_id} is {status}, not pending: it cannot be started")
    head = await tx.heads.require(ref)
    return await _start_locked(tx, ref, owner, lease_seconds, await _next_attempt(tx, ref, head.kind))


async def release(
    ledger: Ledger, ref: RunRef, owner: str, *, reason: str, attempt: int = 1, secrets: Mapping[str, Any] | None = None
) -> Event | None:
    """Give a running run that ``owner`` holds back unfinished; return its ``run.released``, or None if not ``owner``'s.

    The run becomes pending again and claimable by any worker, which resumes
    it as attempt ``attempt + 1``. The run's events fed to this process's
    writer are written first, so ``run.released`` follows every one of them.
    ``secrets`` (the request's secret config values) wait for the next
    claimer, as they did before the first claim. A run that was reaped, or
    ended by someone else meanwhile, is left as it is.

    A cancel asked for since the run's last start, which its holder did not
    get to (it came as the run was being given back), is carried out
    instead: the run ends ``run.interrupted`` (its checkpoints deleted first
    for ``rollback``), and that event is returned. Given back, the run's
    next attempt would have read its events only from its own start on, and
    run to its end despite the cancel.
    """
    try:
        await ledger.sync(ref)
    except LedgerError as exc:  # those events are not in the log; what is there stays gapless
        _log.warning("run %s: events before its release were not written: %s", ref.run_id, exc)
    async with ledger.transaction() as tx:
        # The lease is cleared only if ``owner`` holds it on a running run, and
        # the row stays locked until run.released commits with it: a claim
        # (FOR UPDATE SKIP LOCKED) never sees the run pending before that.
        if not await tx.heads.give_back(ref, owner):
            return None
        asked = await _unanswered_cancel(tx, ref)
        if asked is not None:
            (event,) = await tx.append(ref, [await _carry_out(tx, ref, asked)])
        else:
            if secrets:
                await tx.secrets.put(ref, secrets)
            (event,) = await tx.append(ref, [_event(RUN_RELEASED, {"worker": owner, "reason": reason, "attempt": attempt})])
    if event.kind == RUN_INTERRUPTED:
        await complete(ledger, ref)  # it ended here: a stateless run's thread may go, as after a cancel
    return event


async def _carry_out(tx: Transaction, ref: RunRef, asked: Event) -> NewEvent:
    """The end of a running run whose holder did not carry out cancel ``asked`` (checkpoints deleted here for rollback)."""
    action = asked.value.get("action") if isinstance(asked.value, dict) else None
    action = action if action in CANCEL_ACTIONS else "interrupt"
    if action == "rollback":
        await checkpoint.rollback(tx.connection, ref.thread_id, ref.run_id)
    return _event(RUN_INTERRUPTED, {"reason": "cancel", "action": action})


async def _unanswered_cancel(tx: Transaction, ref: RunRef) -> Event | None:
    """The cancel request appended since the running run's last start (which its holder has not answered), if any."""
    asked = await tx.last_of_kind(ref, RUN_CANCEL_REQUESTED)
    if asked is None:
        return None
    started = await tx.last_of_kind(ref, RUN_STARTED)
    return asked if started is None or asked.seq > started.seq else None


async def renew(ledger: Ledger, owner: str, refs: Iterable[RunRef], *, lease_seconds: float) -> set[RunRef]:
    """Extend ``owner``'s leases on ``refs``; return those it still holds (the others ended or were reaped)."""
    refs = list(refs)
    if not refs:
        return set()
    async with ledger.session() as session:
        return await session.heads.renew(owner, refs, lease_seconds)


async def reap(ledger: Ledger, *, grace_seconds: float, idle_seconds: float, settle_seconds: float, limit: int = 100) -> list[Event]:
    """End running runs whose lease expired ``grace_seconds`` ago with ``run.failed``; return those events.

    A running run that never took a lease is reaped once it appended
    nothing for ``idle_seconds`` plus the grace. Nothing is reaped until the
    database has been up for ``settle_seconds`` (a lease and its grace), so
    that a restart of the database expires no live holder's lease.

    A run whose holder died after a cancel was asked of it, before carrying
    it out, ends as that cancel would have ended it: ``run.interrupted``, its
    checkpoints deleted first for ``rollback``.
    """
    failed: list[Event] = []
    async with ledger.transaction() as tx:
        for expired in await tx.heads.expired(grace_seconds, idle_seconds, limit, settle_seconds=settle_seconds):
            asked = await _unanswered_cancel(tx, expired.ref)
            if asked is not None:
                failed += await tx.append(expired.ref, [await _carry_out(tx, expired.ref, asked)])
                continue
            owner = expired.owner or "a writer without a lease"
            error = {"type": "LeaseExpired", "message": f"{owner} stopped renewing its lease on the run"}
            new = [_event(STREAM_ERROR, {"error": error["type"], "message": error["message"]}), _event(RUN_FAILED, {"error": error})]
            failed += await tx.append(expired.ref, new)
    for event in failed:
        if event.is_terminal:
            await complete(ledger, RunRef(event.thread_id, event.run_id))
    return failed


async def join(ledger: Ledger, ref: RunRef) -> Event:
    """Wait for the run's terminal event (from any process) and return it."""
    async with ledger.session() as session:
        head = await session.heads.require(ref)
        if head.terminal:
            (last,) = await session.read_run(ref, head.seq - 1, 1)
            return last
    async for event in ledger.tail(ref, head.seq):
        if event.is_terminal:
            return event
    raise RunNotFound(f"run {ref.run_id} ended without a terminal event in view")  # the tail always ends with one
