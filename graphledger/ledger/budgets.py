"""The statements on the budget tables: definitions, their changes, the runs charged, the refusals.

A budget's definition is stored as JSON (its shape is
:class:`graphledger.runs.budgets.Budget`'s; this module does not read it).
Every set and removal is also appended to ``budget_changes`` with who made
it; refusals are appended to ``budget_refusals``. Both are append-only (a
trigger refuses UPDATE, DELETE and TRUNCATE).

**Serialising admissions per key.** :meth:`Budgets.lock` takes a
transaction-scoped advisory lock on ``(budget, key)``. An admission takes the
locks of every budget it falls under, sorted by budget name, before it reads
their use, and keeps them until it commits the run's charge
(``budget_runs``) or rolls back on a refusal. The next admission under the same key
waits for that commit, and its statements (READ COMMITTED: a snapshot per
statement) then see the charge: no two admissions can both take the last
room. Two admissions lock budgets in the same order, so they cannot
deadlock; the thread's row is locked after the budgets, and no other
transaction takes a budget lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from graphledger.ledger.events import RunRef
from graphledger.ledger.read import Connection

LIST_SQL = "SELECT name, definition::text AS definition, set_at, set_by FROM budgets ORDER BY name"
ANY_SQL = "SELECT EXISTS (SELECT 1 FROM budgets) AS any"
"""Whether any budget is defined (heads.ADMISSION_THREAD_UNBUDGETED_SQL composes it)."""
UPSERT_SQL = """
INSERT INTO budgets (name, definition, set_by) VALUES ($1, $2::jsonb, $3)
ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, set_at = now(), set_by = excluded.set_by
"""
DELETE_SQL = "DELETE FROM budgets WHERE name = $1"
CHANGE_SQL = "INSERT INTO budget_changes (name, action, definition, by) VALUES ($1, $2, $3::jsonb, $4)"
CHANGES_SQL = "SELECT position, ts, name, action, definition::text AS definition, by FROM budget_changes ORDER BY position DESC LIMIT $1"
UNCHARGE_SQL = "DELETE FROM budget_runs WHERE budget = $1"
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('graphledger budget' || chr(10) || $1 || chr(10) || $2, 0))"
CHARGE_SQL = "INSERT INTO budget_runs (budget, key, thread_id, run_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
# The runs a budget set now charges: those still active, and those with a call
# since $2 (the start of its window now), keyed as at admission, by the value at
# $3 in their run.created payload (a string, number or boolean; see
# graphledger.runs.budgets.key_text), and only $4 when given.
BACKFILL_SQL = """
INSERT INTO budget_runs (budget, key, thread_id, run_id)
SELECT $1, k.key, r.thread_id, r.run_id
FROM runs r
JOIN events e ON e.thread_id = r.thread_id AND e.run_id = r.run_id AND e.seq = 1
CROSS JOIN LATERAL (SELECT e.data::jsonb #> $3::text[] AS value) v
CROSS JOIN LATERAL (
    SELECT CASE WHEN jsonb_typeof(v.value) IN ('string', 'number', 'boolean') THEN v.value #>> '{}' END AS key
) k
WHERE k.key IS NOT NULL AND k.key <> '' AND ($4::text IS NULL OR k.key = $4)
  AND (r.status IN ('pending', 'running')
       OR EXISTS (SELECT 1 FROM llm_calls l WHERE l.thread_id = r.thread_id AND l.run_id = r.run_id AND l.ts >= $2))
ON CONFLICT DO NOTHING
"""
# A charged run that has ended gets the time of its head's last change (its
# terminal event's transaction): from then on, a use query reads it only while
# that time may still be in the window (see graphledger.projections.read).
SETTLE_SQL = """
UPDATE budget_runs b SET ended_at = r.updated_at
FROM runs r
WHERE b.budget = $1 AND b.key = $2 AND b.ended_at IS NULL
  AND r.thread_id = b.thread_id AND r.run_id = b.run_id AND r.status NOT IN ('pending', 'running')
"""
KEYS_SQL = "SELECT DISTINCT key FROM budget_runs WHERE budget = $1 ORDER BY key LIMIT $2"
# Transactions of graphledger's other sessions on this database ($2: their
# application_name) open since before $1: an admission among them may have read
# the budgets before a change committed. Other clients (autovacuum, a psql
# session left in a transaction) admit nothing and are not waited for.
OPEN_BEFORE_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND application_name = $2 AND xact_start < $1
"""
NOW_SQL = "SELECT clock_timestamp()"
REFUSE_SQL = """
INSERT INTO budget_refusals (ts, budget, key, identity, data) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING position
"""
REFUSALS_SQL = """
SELECT position, ts, budget, key, identity, data::text AS data FROM budget_refusals
WHERE ts >= coalesce($1, '-infinity'::timestamptz) AND ts < coalesce($2, 'infinity'::timestamptz)
  AND ($3::text IS NULL OR identity = $3) AND ($4::text IS NULL OR budget = $4)
ORDER BY position DESC LIMIT $5
"""


@dataclass(frozen=True, slots=True)
class StoredBudget:
    """A ``budgets`` row: the definition as stored, when and by whom it was last set."""

    name: str
    definition: dict[str, Any]
    set_at: datetime
    set_by: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A ``budget_refusals`` row; ``data`` holds the actor, the run asked for, the use, limit and window."""

    position: int
    ts: datetime
    budget: str
    key: str
    identity: str | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """A ``budget_changes`` row."""

    position: int
    ts: datetime
    name: str
    action: str
    definition: dict[str, Any] | None
    by: str


class Budgets:
    """The statements on the budget tables, on one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def defined(self) -> list[StoredBudget]:
        """Every budget, by name."""
        rows = await self._conn.fetch(LIST_SQL)
        return [StoredBudget(row["name"], json.loads(row["definition"]), row["set_at"], row["set_by"]) for row in rows]

    async def put(
        self, name: str, definition: Mapping[str, Any], *, by: str, path: Sequence[str], match: str | None, since: datetime
    ) -> None:
        """Set a budget (call inside a transaction): the change is recorded, and the runs it charges are found again.

        The budget charges the runs still active and those with a call since
        ``since``, keyed by the value at ``path`` of their ``run.created``
        payload (only ``match`` when given): a new budget counts the use its
        window already holds.
        """
        text = json.dumps(dict(definition), sort_keys=True)
        await self._conn.execute(UPSERT_SQL, name, text, by)
        await self._conn.execute(CHANGE_SQL, name, "set", text, by)
        await self._conn.execute(UNCHARGE_SQL, name)
        await self.charge_missed(name, path=path, match=match, since=since)

    async def charge_missed(self, name: str, *, path: Sequence[str], match: str | None, since: datetime) -> int:
        """Charge the runs a budget set charges that are not charged yet (see :meth:`put`); how many were added."""
        done = await self._conn.execute(BACKFILL_SQL, name, since, list(path), match)
        return int(done.split()[-1])

    async def now(self) -> datetime:
        """The database's clock now (not the transaction's start)."""
        moment: datetime = await self._conn.fetchval(NOW_SQL)
        return moment

    async def open_before(self, moment: datetime, application_name: str) -> int:
        """How many transactions of other sessions of ``application_name`` began before ``moment`` and are still open."""
        found: int = await self._conn.fetchval(OPEN_BEFORE_SQL, moment, application_name)
        return found

    async def remove(self, name: str, *, by: str) -> bool:
        """Remove a budget and its charges (call inside a transaction); False when there is none of that name."""
        if await self._conn.execute(DELETE_SQL, name) == "DELETE 0":
            return False
        await self._conn.execute(UNCHARGE_SQL, name)
        await self._conn.execute(CHANGE_SQL, name, "remove", None, by)
        return True

    async def changes(self, limit: int = 100) -> list[Change]:
        """The latest changes, newest first."""
        rows = await self._conn.fetch(CHANGES_SQL, limit)
        return [
            Change(row["position"], row["ts"], row["name"], row["action"], json.loads(row["definition"]) if row["definition"] else None, row["by"])
            for row in rows
        ]

    async def lock(self, budget: str, key: str) -> None:
        """Serialise admissions under ``(budget, key)`` until this transaction ends (see the module's docstring)."""
        await self._conn.execute(LOCK_SQL, budget, key)

    async def settle(self, budget: str, key: str) -> None:
        """Mark the runs charged to ``(budget, key)`` that have ended since the last look (under the key's lock)."""
        await self._conn.execute(SETTLE_SQL, budget, key)

    async def keys(self, budget: str, limit: int | None = 1000) -> list[str]:
        """The keys ``budget`` has charged runs to, in order (all of them with ``limit`` None)."""
        return [row["key"] for row in await self._conn.fetch(KEYS_SQL, budget, limit)]

    async def charge(self, budget: str, key: str, ref: RunRef) -> None:
        """Charge a run to ``(budget, key)``."""
        await self._conn.execute(CHARGE_SQL, budget, key, ref.thread_id, ref.run_id)

    async def refuse(self, ts: datetime, budget: str, key: str, identity: str | None, data: Mapping[str, Any]) -> int:
        """Append a refusal; its position."""
        position = await self._conn.fetchval(REFUSE_SQL, ts, budget, key, identity, json.dumps(dict(data), sort_keys=True))
        assert isinstance(position, int)
        return position

    async def refusals(
        self, *, since: datetime | None = None, until: datetime | None = None, identity: str | None = None,
        budget: str | None = None, limit: int = 100,
    ) -> list[Refusal]:
        """Refusals newest first, within ``[since, until)``, of one identity and one budget when given."""
        rows = await self._conn.fetch(REFUSALS_SQL, since, until, identity, budget, limit)
        return [Refusal(row["position"], row["ts"], row["budget"], row["key"], row["identity"], json.loads(row["data"])) for row in rows]

