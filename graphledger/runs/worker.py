"""Workers execute pending runs; the reaper ends runs whose worker vanished.

A :class:`Worker` lives inside ``graphledger serve`` (any number of processes
on one database). It claims pending runs (``FOR UPDATE SKIP LOCKED``, see
:mod:`graphledger.runs.lifecycle`) when the run queue changes (a hint on
``graphledger_runs``) or every ``poll_interval``, runs each graph under a
lease it renews, and follows each run's own events: a
``run.cancel_requested`` appended by any process stops the graph, and the
worker ends the run (restoring the thread's state first for a rollback).
On shutdown it stops claiming, lets running runs finish for up to
``drain_seconds``, and releases the rest: each graph is stopped and its run
given back (``run.released``, pending again). Another worker, in this process
or another, claims it and resumes it as the run's next attempt, from the
thread's latest checkpoint when the run had written one, else from its input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from graphledger.ledger import Ledger
from graphledger.ledger.errors import DatabaseUnavailable, LedgerError
from graphledger.ledger.events import RUN_CANCEL_REQUESTED, RUN_INTERRUPTED, RunRef
from graphledger.ledger.statement import RUNS_CHANNEL
from graphledger.ledger.tasks import cancel_and_wait
from graphledger.runs import checkpoint, lifecycle
from graphledger.runs.errors import CheckpointNotFound
from graphledger.runs.graphs import GraphRegistry
from graphledger.runs.leases import LeaseKeeper
from graphledger.runs.recorder import Recording
from graphledger.runs.request import CANCEL_ACTIONS
from graphledger.runs.state import ThreadState

_log = logging.getLogger("graphledger.runs")
T = TypeVar("T")
RENDER_BACKLOG = 10_000  # ended runs waiting for their snapshot documents; past it, they are rendered when read
RENDER_HOLD_BACK = 5.0  # seconds a render waits at most for a burst of admissions to pass
RETRY_MIN, RETRY_MAX = 0.1, 2.0  # seconds between tries while the database is unavailable
STOP_CLAIMING_SECONDS = 10.0  # how long a stop waits for the claim in flight before cancelling it


@dataclass(slots=True)
class _Stop:
    """Why a run's graph is being stopped (the first reason wins)."""

    reason: str | None = None  # cancel, timeout, shutdown (released), lease
    action: str = "interrupt"
    task: asyncio.Task[Any] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, reason: str, action: str = "interrupt") -> None:
        if self.reason is None:
            self.reason, self.action = reason, action
            self.stopped.set()
            if self.task is not None:
                self.task.cancel()


class Admissions:
    """The admissions in flight in this process, so that its worker can let a burst of them go first.

    Admission is what a client waits for (its stream's first event); a graph
    started meanwhile takes the same event loop and CPU. A worker therefore
    claims only once no admission is in flight, or ``hold_back`` seconds
    later at the latest, so steady traffic never starves execution.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> Admissions:
        self._count += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def quiet(self, hold_back: float) -> None:
        """Return once no admission is in flight, or after ``hold_back`` seconds."""
        if self._count:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold_back):
                    await self._idle.wait()


class Worker:
    """Claims and executes runs in this process, at most ``concurrency`` at once."""

    def __init__(
        self,
        ledger: Ledger,
        graphs: GraphRegistry,
        *,
        checkpointer: Any = None,
        store: Any = None,
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        run_timeout: float | None = None,
        owner: str | None = None,
        admissions: Admissions | None = None,
        hold_back: float = 0.5,
    ) -> None:
        if ledger.hub is None:
            raise ValueError("a worker needs a ledger connected with tail=True (it follows its runs for cancels)")
        self.ledger = ledger
        self.graphs = graphs
        self.checkpointer = checkpointer
        self.store = store
        self.admissions = admissions
        self.hold_back = hold_back
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.run_timeout = run_timeout
        self.owner = owner or f"worker {os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leases = LeaseKeeper(ledger, self.owner, lease_seconds, on_lost=self._lost)
        self.running: dict[RunRef, _Stop] = {}
        self.executed = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Snapshot documents of ended runs, off the append path: one renderer, one run at a time, after
        # any burst of admissions; a run it never gets to is rendered when first read.
        self._renders: asyncio.Queue[RunRef] = asyncio.Queue(maxsize=RENDER_BACKLOG)
        self._render_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._uncertain: list[lifecycle.Claimed] = []  # claims whose commit's outcome was lost
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self.ledger.on_hint(RUNS_CHANNEL, self._wake.set)
        self.leases.start()
        self._loop_task = asyncio.get_running_loop().create_task(self._claim_loop(), name="graphledger-worker")
        if self.checkpointer is not None:
            self._render_task = asyncio.get_running_loop().create_task(self._render_loop(), name="graphledger-render")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop claiming; wait up to ``drain_seconds`` for running runs, then release the rest to other workers."""
        self._closing = True
        await self._stop_claiming()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=drain_seconds)
        for stop in list(self.running.values()):
            stop("shutdown")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await cancel_and_wait(self._render_task)  # a cache: what is not rendered now is rendered when read
        await self.leases.close()

    async def _stop_claiming(self) -> None:
        """End the claim loop after the claim in flight, and give back the runs of claims whose commit was lost.

        The loop is not cancelled: a claim cancelled while its COMMIT is on
        the wire may have committed, and its runs would stay running under
        this worker's lease with their secrets taken, until reaped as failed
        without having run. A claim that finishes hands its runs to the drain
        like any other; the loop is cancelled only if it has not ended after
        ``STOP_CLAIMING_SECONDS`` (a database that does not answer).
        """
        task, self._loop_task = self._loop_task, None
        if task is not None:
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=STOP_CLAIMING_SECONDS)
            if not done:
                _log.warning("the claim in flight did not end within %.0f s; stopping it", STOP_CLAIMING_SECONDS)
                await cancel_and_wait(task)
            elif not task.cancelled() and task.exception() is not None:
                _log.warning("the claim loop had ended: %r", task.exception())
        unsettled = len(self._uncertain)
        if not unsettled:
            return
        try:
            for claimed in await self._settle_uncertain():
                given_back = await lifecycle.release(
                    self.ledger, claimed.ref, self.owner, reason="shutdown", attempt=claimed.attempt, secrets=claimed.request.secrets
                )
                if given_back is not None:
                    _log.info("run %s, claimed as the database went away, was not executed here (%s)", claimed.ref.run_id, given_back.kind)
        except DatabaseUnavailable as exc:
            _log.warning("claims whose commit was lost (%d) could not be settled (%s): any that held are reaped after their lease", unsettled, exc)

    def _lost(self, ref: RunRef) -> None:
        stop = self.running.get(ref)
        if stop is not None:
            stop("lease")

    async def _claim_loop(self) -> None:
        while not self._closing:
            self._wake.clear()
            free = self.concurrency - len(self.running)
            claimed: list[lifecycle.Claimed] = []
            if free > 0:
                if self.admissions is not None:
                    await self.admissions.quiet(self.hold_back)
                    if self._closing:
                        return
                try:
                    claimed = await self._settle_uncertain()
                    if not claimed:
                        claimed = await lifecycle.claim(self.ledger, self.owner, limit=free, lease_seconds=self.lease_seconds)
                except lifecycle.ClaimUncertain as exc:
                    self._uncertain.extend(exc.claimed)
                    _log.warning("claiming runs failed (%s); which of %d claims hold is settled next", exc, len(exc.claimed))
                except Exception as exc:  # the loop must outlive any one failure
                    _log.warning("claiming runs failed (%s: %s); retrying", type(exc).__name__, exc)
            for item in claimed:
                self.running[item.ref] = _Stop()
                self.leases.hold(item.ref)
                task = asyncio.get_running_loop().create_task(self._execute(item), name=f"graphledger-run-{item.ref.run_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if claimed and len(claimed) == free:
                continue  # there may be more
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def _settle_uncertain(self) -> list[lifecycle.Claimed]:
        """Of the claims whose commit was lost, those that did commit: they are this worker's to execute.

        A claim that committed holds its runs under this worker's lease and
        took their secrets, which only the lost claim still has in memory; a
        claim that did not commit left them pending for anyone. Kept until the
        database answers (a failure here is retried on the next turn).
        """
        if not self._uncertain:
            return []
        held = await lifecycle.held_by(self.ledger, self.owner, [c.ref for c in self._uncertain])
        mine = [c for c in self._uncertain if c.ref in held and c.ref not in self.running]
        self._uncertain = []
        if mine:
            _log.warning("%d runs claimed as the database went away are executed after all", len(mine))
        return mine

    async def _execute(self, claimed: lifecycle.Claimed) -> None:
        ref, request = claimed.ref, claimed.request
        stop = self.running[ref]
        recording = Recording(self.ledger, ref, request)
        watcher = asyncio.get_running_loop().create_task(self._watch(ref, claimed.started.seq, stop))
        try:
            error: BaseException | None = None
            try:
                recording.resume = await self._resumes(claimed)
                if not recording.resume:
                    await self._check_start(claimed)
                graph = await self.graphs.resolve(request.graph, recording.config(), self.checkpointer, self.store)
                stop.task = asyncio.get_running_loop().create_task(self._drive(recording, graph))
                if stop.reason is not None:
                    stop.task.cancel()
                done, _ = await asyncio.wait({stop.task}, timeout=self.run_timeout)
                if not done:
                    stop("timeout")
                    await asyncio.wait({stop.task})
                if not stop.task.cancelled():
                    error = stop.task.exception()
                    if stop.reason == "shutdown":
                        stop.reason = None  # the graph ended before it could be stopped: record how
            except Exception as exc:  # the graph could not be made
                error = exc
            self.leases.ending(ref)  # held until the end is written: an outage may outlast the lease
            await self._end(recording, stop, error, claimed.attempt)
            self.leases.release(ref)
            if stop.reason not in ("lease", "shutdown"):
                self._render_later(ref)
        except LedgerError as exc:
            _log.error("run %s could not be ended: %s", ref.run_id, exc)
        finally:
            await cancel_and_wait(watcher)
            self.leases.release(ref)
            self.running.pop(ref, None)
            self.executed += 1
            self._wake.set()

    def _render_later(self, ref: RunRef) -> None:
        """After the run's terminal event: have its checkpoints' snapshot documents rendered in the background."""
        if self._render_task is None or self._closing:
            return
        with contextlib.suppress(asyncio.QueueFull):  # a backlog: the documents are rendered when first read instead
            self._renders.put_nowait(ref)

    async def _render_loop(self) -> None:
        """Render the queued runs' documents one at a time, each after any burst of admissions in flight.

        Rendering is work a reader may never ask for; run in parallel, one
        task per ended run, it took pool connections and the event loop from
        the admissions and runs that clients wait on.
        """
        while True:
            ref = await self._renders.get()
            if self.admissions is not None:
                await self.admissions.quiet(RENDER_HOLD_BACK)
            try:
                await ThreadState(self.ledger, self.graphs, self.checkpointer).render_run(ref.thread_id, ref.run_id)
            except Exception as exc:  # a cache: the documents are rendered when first read instead
                _log.info("run %s: snapshot documents not rendered: %s: %s", ref.run_id, type(exc).__name__, exc)

    async def _resumes(self, claimed: lifecycle.Claimed) -> bool:
        """Whether a later attempt continues from the checkpoints the run wrote (it wrote none: it starts over)."""
        if claimed.attempt == 1 or self.checkpointer is None:
            return False
        async with self.ledger.session() as session:
            written = await checkpoint.written_by(session.connection, claimed.ref.thread_id, claimed.ref.run_id)
        _log.info("run %s: attempt %d %s", claimed.ref.run_id, claimed.attempt, "resumes from its last checkpoint" if written else "starts over")
        return written > 0

    async def _check_start(self, claimed: lifecycle.Claimed) -> None:
        """Refuse to run from a checkpoint that is gone (a rollback deleted it after admission): LangGraph would start from nothing."""
        checkpoint_id = claimed.request.checkpoint_id
        if checkpoint_id is None or self.checkpointer is None:
            return
        async with self.ledger.session() as session:
            found = await checkpoint.exists(session.connection, claimed.ref.thread_id, checkpoint_id)
        if not found:
            raise CheckpointNotFound(f"checkpoint {checkpoint_id} of thread {claimed.ref.thread_id} was removed before the run started")

    async def _drive(self, recording: Recording, graph: Any) -> None:
        async for _ in recording.stream(graph):
            pass

    async def _end(self, recording: Recording, stop: _Stop, error: BaseException | None, attempt: int = 1) -> None:
        ref = recording.ref
        if stop.reason == "lease":
            return  # the run was reaped or ended by someone else: nothing more to write
        if stop.reason == "cancel":
            if stop.action == "rollback" and self.checkpointer is None:
                _log.warning("run %s: rollback asked, but this worker has no checkpointer to roll back", ref.run_id)
            elif stop.action == "rollback":
                removed = await self._until_reachable(f"rolling back run {ref.run_id}", lambda: self._rollback(ref))
                _log.info("run %s rolled back: %d checkpoints removed", ref.run_id, removed)
            await recording.interrupt("cancel", stop.action)
        elif stop.reason == "timeout":
            await recording.time_out(self.run_timeout or 0)
        elif stop.reason == "shutdown":
            # Safe to repeat: only the lease holder releases a running run, once.
            released = await self._until_reachable(f"releasing run {ref.run_id}", lambda: recording.release(self.owner, "shutdown", attempt))
            if released is None:
                _log.info("run %s was not released: it had been reaped or ended meanwhile", ref.run_id)
            elif released.kind == RUN_INTERRUPTED:
                _log.info("run %s was cancelled as it was being released: it ended interrupted", ref.run_id)
        elif error is not None:
            if not isinstance(error, LedgerError):
                _log.info("run %s failed: %s: %s", ref.run_id, type(error).__name__, error)
            await recording.fail(error)
        else:
            await recording.succeed()

    async def _rollback(self, ref: RunRef) -> int:
        async with self.ledger.session() as session:
            return await checkpoint.rollback(session.connection, ref.thread_id, ref.run_id)

    async def _until_reachable(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again while the database is unavailable (the rollback deletes by run: safe to repeat)."""
        delay = RETRY_MIN
        while True:
            try:
                return await call()
            except DatabaseUnavailable as exc:
                _log.warning("%s: %s; retrying in %.2f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _watch(self, ref: RunRef, after_seq: int, stop: _Stop) -> None:
        """Follow the run's own events for a cancel request, from wherever it is appended (through outages too)."""
        delay = RETRY_MIN
        while True:
            try:
                # live: event after_seq is run.started, which this worker appended, or a later non-terminal one.
                async for event in self.ledger.tail(ref, after_seq, live=True):
                    after_seq = event.seq
                    if event.kind == RUN_CANCEL_REQUESTED:
                        action = event.value.get("action") if isinstance(event.value, dict) else None
                        stop("cancel", action if action in CANCEL_ACTIONS else "interrupt")
                        return
                return
            except DatabaseUnavailable as exc:
                _log.warning("following run %s for cancels: %s; retrying in %.2f s", ref.run_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            except LedgerError as exc:
                _log.warning("following run %s for cancels failed: %s", ref.run_id, exc)
                return
