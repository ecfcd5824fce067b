"""Rebuild projections from the log alone, while the ledger keeps appending.

1. New, empty tables are created in a side schema (``graphledger_rebuild``).
2. In one REPEATABLE READ transaction (snapshot *S*), every event the chosen
   projections read is folded into them. Events are read in physical order,
   with no sort: message and call merges do not depend on order, and run
   statuses are folded per run in ``seq`` order in memory (a few events per
   run). Appends go on meanwhile, into the live tables.
3. One short transaction locks the live tables (ACCESS EXCLUSIVE: inline
   projection writes wait, they hold ROW EXCLUSIVE until they commit, so every
   one that started has committed), folds in the events *S* did not see (the
   appends of step 2, found by ``pg_visible_in_snapshot``), and swaps the new
   tables in. Appends waiting on the lock then write into the new tables.
4. Under the same lock, the hourly usage rollup is recomputed from the
   rebuilt ``llm_calls`` and ``run_status`` (when either was rebuilt).

Nothing is lost (every event is folded either in step 2 or 3) and nothing is
counted twice (an event is visible to *S* or it is not). Appends that project
nothing (stream chunks) are never held up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from graphledger.ledger.events import Event, RunRef
from graphledger.projections import run_status as status_fold
from graphledger.projections.errors import InvalidArgument, RebuildRunning
from graphledger.projections.project import ALL, KINDS, ROLLUP_SQL, RUN_STATUS, TOKEN_USAGE, Rows, rebuild_sql
from graphledger.projections.schema import llm_calls, messages, run_status, usage_hourly

SHADOW = "graphledger_rebuild"
REBUILD_LOCK = 7_426_017_314  # one rebuild per database at a time
TABLES = {"run_status": run_status, "token_usage": llm_calls, "messages": messages}
BATCH = 20_000

_EVENT_COLUMNS = "thread_id, run_id, seq, kind, data::text AS data, ts, global_position"
SCAN_SQL = f"SELECT {_EVENT_COLUMNS} FROM events WHERE kind = ANY($1::text[])"
DELTA_SQL = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE tx >= pg_snapshot_xmin($2::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(tx, $2::text::pg_snapshot)
  AND kind = ANY($1::text[])
"""
COUNT_SQL = "SELECT count(*) AS events, count(*) FILTER (WHERE kind = ANY($1::text[])) AS projected FROM events"

Progress = Callable[[int, int], None]
"""Called with (events folded, events to fold) as a rebuild goes."""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    projections: tuple[str, ...]
    events: int  # events in the log when the rebuild began
    folded: int  # events the projections read (in both phases)
    caught_up: int  # of those, appended while the rebuild ran
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _ddl(names: Sequence[str]) -> list[str]:
    shadow = sa.MetaData()
    statements = []
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves the dialect class unannotated
    for name in names:
        table = TABLES[name].to_metadata(shadow, schema=SHADOW)
        statements.append(str(CreateTable(table).compile(dialect=dialect)))
        statements.extend(str(CreateIndex(index).compile(dialect=dialect)) for index in table.indexes)
    return statements


def _event(row: asyncpg.Record) -> Event:
    return Event(row["thread_id"], row["run_id"], row["seq"], row["kind"], row["data"], row["ts"], b"", row["global_position"])


class _Folder:
    """Folds events into the side tables: messages and calls per batch, statuses at the end."""

    def __init__(self, conn: asyncpg.Connection, only: Collection[str]) -> None:
        self.conn = conn
        self.only = only
        self.merge_sql = rebuild_sql(SHADOW, only)
        self.lifecycle: dict[RunRef, list[status_fold.StatusPatch]] = {}
        self.kinds = sorted(frozenset().union(*(KINDS[name] for name in only)))

    async def add(self, events: Sequence[Event]) -> None:
        rows = Rows(self.only)
        for event in events:
            if "run_status" in self.only:
                patch = status_fold.patch_of(event)
                if patch is not None:
                    self.lifecycle.setdefault(RunRef(event.thread_id, event.run_id), []).append(patch)
            rows.add(event, statuses=False)
        if rows.count:
            await self.conn.fetchval(self.merge_sql, *rows.args())

    async def finish(self) -> None:
        """Merge every run's lifecycle patches, in ``seq`` order, one patch per run."""
        pending = list(self.lifecycle.items())
        for start in range(0, len(pending), BATCH):
            rows = Rows(self.only)
            for _, patches in pending[start:start + BATCH]:
                for patch in sorted(patches, key=lambda p: p.status_seq):
                    rows.add_patch(patch)
            await self.conn.fetchval(self.merge_sql, *rows.args())
        self.lifecycle.clear()


async def rebuild(conn: asyncpg.Connection, only: Collection[str] = ALL, *, progress: Progress | None = None) -> RebuildReport:
    """Rebuild the ``only`` projections (all by default) from the log; safe while appends go on."""
    unknown = set(only) - set(ALL)
    if unknown or not only:
        raise InvalidArgument(f"unknown projection {', '.join(sorted(unknown)) or '(none)'}: choose from {', '.join(ALL)}")
    names = [name for name in ALL if name in only]
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
        raise RebuildRunning("another rebuild is running on this database")
    started = time.perf_counter()
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SHADOW} CASCADE")  # left by an interrupted rebuild
        await conn.execute(f"CREATE SCHEMA {SHADOW}")
        for statement in _ddl(names):
            await conn.execute(statement)
        folder = _Folder(conn, names)
        async with conn.transaction(isolation="repeatable_read"):
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            counts = await conn.fetchrow(COUNT_SQL, folder.kinds)
            assert counts is not None  # an aggregate always has a row
            total, projected = counts["events"], counts["projected"]
            folded = 0
            cursor = await conn.cursor(SCAN_SQL, folder.kinds)
            while rows := await cursor.fetch(BATCH):
                await folder.add([_event(row) for row in rows])
                folded += len(rows)
                if progress is not None:
                    progress(folded, projected)
            await folder.finish()
        async with conn.transaction():
            live = await conn.fetchval("SELECT current_schema()")
            rollup = RUN_STATUS in names or TOKEN_USAGE in names  # the rollup sums llm_calls by run_status labels
            tables = ", ".join([f"{live}.{TABLES[name].name}" for name in names] + ([f"{live}.{usage_hourly.name}"] if rollup else []))
            await conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
            delta = [_event(row) for row in await conn.fetch(DELTA_SQL, folder.kinds, snapshot)]
            await folder.add(delta)
            await folder.finish()
            for name in names:
                table = TABLES[name].name
                await conn.execute(f"DROP TABLE {live}.{table}")
                await conn.execute(f"ALTER TABLE {SHADOW}.{table} SET SCHEMA {live}")
            await conn.execute(f"DROP SCHEMA {SHADOW}")
            if rollup:
                # Recomputed from the tables just swapped in, under the same lock: inline merges
                # waiting on it then continue from exactly this rollup.
                await conn.execute(f"TRUNCATE {live}.{usage_hourly.name}")
                await conn.execute(ROLLUP_SQL.format(schema=f"{live}."))
        if progress is not None:
            progress(folded + len(delta), projected + len(delta))
        return RebuildReport(tuple(names), total, folded + len(delta), len(delta), time.perf_counter() - started)
    except BaseException:
        await _drop_shadow(conn)
        raise
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)


async def _drop_shadow(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SHADOW} CASCADE")
    except (asyncpg.PostgresError, OSError):
        pass  # dropped by the next rebuild
