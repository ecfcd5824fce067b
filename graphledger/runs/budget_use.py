"""Budgets on the ledger: their use read from the token usage projection, the admission check, setting and listing.

The rule itself is in :mod:`graphledger.runs.budgets`; the lock that makes it
exact under concurrent admissions in :mod:`graphledger.ledger.budgets`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from graphledger.ledger import Ledger
from graphledger.ledger.budgets import Refusal
from graphledger.ledger.events import RunRef
from graphledger.ledger.session import Session, Transaction
from graphledger.ledger.store import APPLICATION_NAME
from graphledger.projections.read import BUDGET_METRICS, ChargedCall, budget_active_runs, budget_calls, budget_use
from graphledger.runs import pricing
from graphledger.runs.budgets import Budget, Number, Use, keys, number_json, retry_after
from graphledger.runs.errors import InvalidBudget
from graphledger.runs.pricing import Pricer

_log = logging.getLogger("graphledger.runs")
IN_FLIGHT_SECONDS = 10.0  # how long setting a budget waits for the admissions in flight, to charge their runs


def _cost(call: ChargedCall, pricer: Pricer) -> Decimal | None:
    if call.tokens is None:
        return None  # no usage reported: nothing to price
    return pricer(call.model, call.provider, call.ts, call.tokens)


async def use_of(session: Session, budget: Budget, key: str, now: datetime, pricer: Pricer = pricing.DEFAULT) -> Use:
    """The budget's use under ``key`` at ``now``: used in the window, reserved by active runs."""
    start = budget.start(now)
    reserve = budget.reserve_per_run
    if budget.metric in BUDGET_METRICS:
        assert isinstance(reserve, int)
        found = await budget_use(session.connection, budget.name, key, start, budget.metric, reserve)
        return Use(budget, key, found.used, found.reserved, start, unknown_calls=found.unknown_calls)
    per_run: dict[RunRef, Decimal] = {}
    unpriced = 0
    for call in await budget_calls(session.connection, budget.name, key, start):
        cost = _cost(call, pricer)
        if cost is None:
            unpriced += 1
            continue
        run = RunRef(call.thread_id, call.run_id)
        per_run[run] = per_run.get(run, Decimal(0)) + cost
    used = sum(per_run.values(), Decimal(0))
    active = await budget_active_runs(session.connection, budget.name, key, start)
    reserved = sum((max(Decimal(reserve) - per_run.get(run, Decimal(0)), Decimal(0)) for run in active), Decimal(0))
    return Use(budget, key, used, reserved, start, unpriced_calls=unpriced)


async def _settled(session: Session, use: Use, pricer: Pricer) -> list[tuple[datetime, Number]]:
    """The window's calls (time, metric), oldest first: when the window lets go of them."""
    calls = await budget_calls(session.connection, use.budget.name, use.key, use.window_start)
    found: list[tuple[datetime, Number]] = []
    for call in calls:
        if use.budget.metric in BUDGET_METRICS:
            found.append((call.ts, (call.tokens or {}).get(use.budget.metric) or 0))
        else:
            found.append((call.ts, _cost(call, pricer) or Decimal(0)))
    return found


async def budgets(session: Session) -> list[Budget]:
    """Every budget defined, by name."""
    return [Budget.stored(stored.name, stored.definition) for stored in await session.budgets.defined()]


class Refused(Exception):
    """An admission a budget refused (raised inside the admission's transaction, which then rolls back; see :func:`record`)."""

    def __init__(self, use: Use, retry_after: int | None, ts: datetime, identity: str | None, data: dict[str, Any]) -> None:
        super().__init__(use.detail())
        self.use = use
        self.retry_after = retry_after
        self.ts = ts
        self.identity = identity
        self.data = data


async def check(
    tx: Transaction, created: Mapping[str, Any], ref: RunRef, *, thread_given: bool, pricer: Pricer = pricing.DEFAULT
) -> list[tuple[Budget, str]]:
    """Lock the keys of every budget the run (its ``run.created`` payload) falls under and check each.

    Returns the budgets and keys to charge the run to once it is created (the
    locks stay held until the transaction ends); raises :class:`Refused` when
    one has no room for it. Called in the admission transaction before the
    thread's row is locked.
    """
    under = keys(await budgets(tx), created)
    for budget, key in under:  # sorted by name: admissions lock in one order
        await tx.budgets.lock(budget.name, key)
        await tx.budgets.settle(budget.name, key)
    now = datetime.now(timezone.utc)
    for budget, key in under:
        use = await use_of(tx, budget, key, now, pricer)
        if use.admits:
            continue
        wait = retry_after(use, await _settled(tx, use, pricer), now)
        actor = created.get("actor")
        identity = actor.get("identity") if isinstance(actor, Mapping) else None
        data = {
            "actor": actor,
            "thread_id": str(ref.thread_id) if thread_given else None,
            "run_id": str(ref.run_id),
            "assistant_id": created.get("assistant_id"),
            "budget": {"name": budget.name, **budget.json()},
            "used": number_json(use.used),
            "reserved": number_json(use.reserved),
            "limit": number_json(budget.limit),
            "window_start": use.window_start.isoformat(),
            "unpriced_calls": use.unpriced_calls,
            "retry_after": wait,
            "detail": use.detail(),
        }
        raise Refused(use, wait, now, identity if isinstance(identity, str) else None, data)
    return under


async def lock(tx: Transaction, created: Sequence[Mapping[str, Any]]) -> None:
    """Lock the keys of every budget any of several runs (their ``run.created`` payloads) falls under, in lock order.

    For a batch: its admissions then take these locks again (a transaction's
    advisory locks stack), so no two batches can each hold a key the other waits for.
    """
    defined = await budgets(tx)
    found = {(budget.name, key) for payload in created for budget, key in keys(defined, payload)}
    for name, key in sorted(found):
        await tx.budgets.lock(name, key)


async def record(ledger: Ledger, refused: Refused) -> int:
    """Record a refusal in ``budget_refusals``, in a transaction of its own (the admission's rolled back); its position."""
    async with ledger.transaction() as tx:
        return await tx.budgets.refuse(refused.ts, refused.use.budget.name, refused.use.key, refused.identity, refused.data)


async def charge(tx: Transaction, ref: RunRef, under: Sequence[tuple[Budget, str]]) -> None:
    """Charge an admitted run to the keys it was checked under (their locks still held)."""
    for budget, key in under:
        await tx.budgets.charge(budget.name, key, ref)


# -- the command's side: set, remove, list with use, refusals ----------------------------------------


async def put(ledger: Ledger, budgets: Sequence[Budget], *, by: str, in_flight_seconds: float = IN_FLIGHT_SECONDS) -> None:
    """Set ``budgets`` (new or changed) in one transaction, recording who did.

    An admission in flight as the change commits may have read the budgets
    before it (a new budget's keys had no charges to lock): its run commits
    uncharged. Once the transactions open at the commit have ended (waiting
    at most ``in_flight_seconds``), the runs the budgets charge are looked for
    again and those missed are charged.
    """
    now = datetime.now(timezone.utc)
    async with ledger.transaction() as tx:
        for budget in sorted(budgets, key=lambda b: b.name):
            # The admissions under its keys finish first (and wait for this
            # change): they update the rows it replaces (see ledger/budgets.py).
            for key in await tx.budgets.keys(budget.name, limit=None):
                await tx.budgets.lock(budget.name, key)
            await tx.budgets.put(budget.name, budget.json(), by=by, path=budget.path, match=budget.match, since=budget.start(now))
    deadline = time.monotonic() + in_flight_seconds
    async with ledger.session() as session:
        committed = await session.budgets.now()  # after the commit: a transaction begun since sees the change
        while await session.budgets.open_before(committed, APPLICATION_NAME):
            if time.monotonic() >= deadline:
                _log.warning("transactions open before the budget change still run after %.0f s; runs they admit may be uncharged", in_flight_seconds)
                break
            await asyncio.sleep(0.05)
    async with ledger.transaction() as tx:
        for budget in sorted(budgets, key=lambda b: b.name):
            missed = await tx.budgets.charge_missed(budget.name, path=budget.path, match=budget.match, since=budget.start(now))
            if missed:
                _log.info("budget %s: %d runs admitted as it was set are charged to it", budget.name, missed)


async def defined(ledger: Ledger) -> list[Budget]:
    """Every budget defined, by name."""
    async with ledger.session() as session:
        return await budgets(session)


async def remove(ledger: Ledger, name: str, *, by: str) -> None:
    """Remove a budget; :class:`InvalidBudget` when there is none of that name."""
    async with ledger.transaction() as tx:
        if not await tx.budgets.remove(name, by=by):
            raise InvalidBudget(f"there is no budget named {name!r} (graphledger budgets lists them)")


async def uses(ledger: Ledger, pricer: Pricer = pricing.DEFAULT, *, now: datetime | None = None) -> list[Use]:
    """Every budget's use now: per key it charged runs to (a budget with a match, or none yet, shows its one key or none)."""
    now = now or datetime.now(timezone.utc)
    found: list[Use] = []
    async with ledger.session() as session:
        for budget in await budgets(session):
            names = await session.budgets.keys(budget.name)
            if budget.match is not None and budget.match not in names:
                names = [budget.match]
            for key in names:
                found.append(await use_of(session, budget, key, now, pricer))
            if not names:
                found.append(Use(budget, "", 0, 0, budget.start(now)))
    return found


async def refusals(
    ledger: Ledger, *, since: datetime | None = None, until: datetime | None = None, identity: str | None = None,
    budget: str | None = None, limit: int = 100,
) -> list[Refusal]:
    """Recorded refusals, newest first."""
    async with ledger.session() as session:
        return await session.budgets.refusals(since=since, until=until, identity=identity, budget=budget, limit=limit)


def refusal_json(refusal: Refusal) -> dict[str, Any]:
    """A refusal as the command and the HTTP read show it."""
    return {
        "position": refusal.position, "ts": refusal.ts.isoformat(), "budget": refusal.budget, "key": refusal.key,
        "identity": refusal.identity, **{k: v for k, v in refusal.data.items() if k not in ("budget",)},
        "definition": refusal.data.get("budget"),
    }
