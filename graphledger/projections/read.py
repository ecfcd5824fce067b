"""Reads of the projections: run and thread status, token usage, message pages.

Every query names the thread (or the run through its thread), except usage
analytics over a time range, which use the calls' time index.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal
from uuid import UUID

import asyncpg

from graphledger.ledger import Ledger
from graphledger.ledger.errors import RunNotFound, ThreadNotFound
from graphledger.ledger.events import RunRef, jsonb_text
from graphledger.ledger.read import Connection
from graphledger.ledger.threads import SORT_BY, Thread, Visibility, count_sql, search_sql, thread_of, view_sql, visibility_args, visible_sql
from graphledger.projections.errors import InvalidArgument, InvalidCursor
from graphledger.projections.messages import Message
from graphledger.projections.prices import PriceBook, Tokens
from graphledger.projections.run_status import ACTIVE, RunStatus, thread_status
from graphledger.projections.token_usage import TOKEN_FIELDS, LlmCall, Totals

MAX_PAGE = 1000
DEFAULT_PAGE = 50
Group = Literal["model", "caller", "status", "assistant"]
GROUPS: dict[str, str] = {"model": "l.model", "caller": "l.caller", "status": "s.status", "assistant": "s.assistant_id"}

_STATUS_COLUMNS = (
    "s.thread_id, s.run_id, s.status, s.status_seq, s.assistant_id, s.created_at, s.started_at, s.finished_at, "
    "s.attempt, s.worker, s.error_type, s.error_message"
)
RUN_STATUS_SQL = f"SELECT {_STATUS_COLUMNS} FROM run_status s WHERE s.thread_id = $1 AND s.run_id = $2"
# Runs that record something about another run (a webhook's delivery, a run's
# deletion: runs.record_of) are part of the thread's record but not of its
# status, its list of runs or its updated_at.
_NOT_RECORD = "NOT EXISTS (SELECT 1 FROM runs x WHERE x.thread_id = s.thread_id AND x.run_id = s.run_id AND x.record_of IS NOT NULL)"
_NOT_DELETED = "NOT EXISTS (SELECT 1 FROM runs d WHERE d.thread_id = s.thread_id AND d.record_of = s.run_id AND d.command = 'delete_run')"
THREAD_RUNS_SQL = f"SELECT {_STATUS_COLUMNS} FROM run_status s WHERE s.thread_id = $1 AND {_NOT_RECORD}"
RUNS_SQL = f"""
SELECT {_STATUS_COLUMNS}, u.calls, u.total_tokens
FROM run_status s
LEFT JOIN LATERAL (
    SELECT count(*) AS calls, coalesce(sum(l.total_tokens), 0)::bigint AS total_tokens
    FROM llm_calls l WHERE l.thread_id = s.thread_id AND l.run_id = s.run_id
) u ON true
WHERE ($1::uuid IS NULL OR s.thread_id = $1)
  AND ($2::text IS NULL OR s.status = $2)
  AND ($3::text IS NULL OR s.assistant_id = $3)
  AND s.created_at >= coalesce($4, '-infinity'::timestamptz) AND s.created_at < coalesce($5, 'infinity'::timestamptz)
  AND (NOT $8::bool OR ({_NOT_RECORD} AND {_NOT_DELETED}))
ORDER BY s.created_at DESC, s.run_id
LIMIT $6 OFFSET $7
"""


def _runs_page_sql(by_thread: bool) -> str:
    """Runs across threads, newest first, one keyset page (see :meth:`Projections.runs_page`).

    $1 thread, $2 status, $3 assistant (any of), $4 the earliest creation
    time, $5 and $6 the exclusive upper bound (created_at, run_id): the last
    run of the previous page, or the end of the window; $7 and $8 the
    caller's visibility filter on the run's thread; $9 the page size plus one.

    The page is chosen first and its calls are summed after, for its rows
    only. The one range condition is the row comparison, which the
    ``run_status_created_idx`` index walks backward from the bound, so a page
    costs the same at any depth. This holds for the generic plan too, which a
    prepared statement ends up with: a second range on ``created_at`` with
    parameters would be estimated at a fraction of a percent of the rows,
    and the planner would then sort every run after the cursor instead of
    seeking. A thread's runs are found by the projection's key.
    """
    thread = "s.thread_id = $1" if by_thread else "$1::uuid IS NULL"
    return f"""
SELECT p.*, u.calls, u.input_tokens, u.output_tokens, u.total_tokens
FROM (
    SELECT {_STATUS_COLUMNS}
    FROM run_status s
    JOIN threads t ON t.thread_id = s.thread_id
    WHERE {thread}
      AND ($2::text IS NULL OR s.status = $2)
      AND ($3::text[] IS NULL OR s.assistant_id = ANY($3::text[]))
      AND s.created_at >= $4
      AND (s.created_at, s.run_id) < ($5::timestamptz, $6::uuid)
      AND {visible_sql(7, 8, "t.")}
    ORDER BY s.created_at DESC, s.run_id DESC
    LIMIT $9
) p
LEFT JOIN LATERAL (
    SELECT count(*) AS calls, coalesce(sum(l.input_tokens), 0)::bigint AS input_tokens,
           coalesce(sum(l.output_tokens), 0)::bigint AS output_tokens, coalesce(sum(l.total_tokens), 0)::bigint AS total_tokens
    FROM llm_calls l WHERE l.thread_id = p.thread_id AND l.run_id = p.run_id
) u ON true
ORDER BY p.created_at DESC, p.run_id DESC
"""


RUNS_PAGE_SQL = {by_thread: _runs_page_sql(by_thread) for by_thread in (False, True)}
"""A page of runs across threads, keyed by whether it is of one thread."""
_NIL = UUID(int=0)

# A thread's status and last change, in SQL, from the run status projection:
# the same rule as run_status.thread_status (busy while a run is pending or
# running, else what its latest finished run ended as; idle without runs),
# computed when read rather than kept in a column, so that the projection
# stays the one source of thread status. Both subqueries use the projection's
# key (thread_id first); a search that filters or sorts by status computes it
# for every thread its other filters leave.
_RUNS_OF_T = f"FROM run_status s WHERE s.thread_id = t.thread_id AND {_NOT_RECORD}"
_ACTIVE_LIST = ", ".join(f"'{status}'" for status in sorted(ACTIVE))
THREAD_STATUS_SQL = f"""CASE
    WHEN EXISTS (SELECT 1 {_RUNS_OF_T} AND s.status IN ({_ACTIVE_LIST})) THEN 'busy'
    ELSE coalesce((
        SELECT CASE s.status WHEN 'success' THEN 'idle' WHEN 'interrupted' THEN 'interrupted' ELSE 'error' END {_RUNS_OF_T}
        ORDER BY coalesce(s.finished_at, '-infinity') DESC, coalesce(s.created_at, '-infinity') DESC, s.run_id::text DESC
        LIMIT 1
    ), 'idle')
END"""
THREAD_CHANGED_SQL = f"(SELECT max(greatest(s.created_at, s.started_at, s.finished_at)) {_RUNS_OF_T})"
"""When a run of the thread last started, ended or was created: a thread's ``updated_at`` is never earlier."""
THREADS_VIEW_SQL = view_sql(THREAD_STATUS_SQL, THREAD_CHANGED_SQL)
THREAD_SQL = f"SELECT v.* FROM ({THREADS_VIEW_SQL}) v WHERE v.thread_id = $1 AND {visible_sql(2, 3, 'v.')}"
SEARCH_THREADS_SQL = {
    (by, desc, by_metadata): search_sql(THREADS_VIEW_SQL, by, desc, by_metadata)
    for by in SORT_BY for desc in (False, True) for by_metadata in (False, True)
}
COUNT_THREADS_SQL = {by_metadata: count_sql(THREADS_VIEW_SQL, by_metadata) for by_metadata in (False, True)}

_SUMS = ", ".join(f"coalesce(sum(l.{name}), 0)::bigint AS {name}" for name in TOKEN_FIELDS)
# A thread's calls are found by its key; the time window is then a filter
# written so that it cannot use the time index: a generic plan would
# otherwise AND the key with a scan of every call in an unbounded window.
_SCOPES = {
    "thread": "l.thread_id = $1 AND tstzrange($2, $3) @> l.ts",
    "run": "l.thread_id = $1 AND l.run_id = $4 AND tstzrange($2, $3) @> l.ts",
    "all": "$1::uuid IS NULL AND l.ts >= $2 AND l.ts < $3",
}


def _usage_sql(scope: str, group: str | None) -> str:
    key = f"{GROUPS[group]} AS key, " if group else ""
    join = "LEFT JOIN run_status s ON s.thread_id = l.thread_id AND s.run_id = l.run_id" if group in ("status", "assistant") else ""
    tail = "GROUP BY 1 ORDER BY 1 NULLS LAST" if group else ""
    args = "$4::uuid IS NULL AND " if scope != "run" else ""
    return f"""
SELECT {key}count(*) AS calls, count(*) FILTER (WHERE NOT l.usage_known) AS unknown_usage_calls, {_SUMS}
FROM llm_calls l {join}
WHERE {args}{_SCOPES[scope]}
{tail}
"""


USAGE_SQL = {(scope, group): _usage_sql(scope, group) for scope in _SCOPES for group in (None, *GROUPS)}
"""Token usage per scope (thread, run, all) and grouping (none, model, caller, status, assistant)."""

RUN_CALLS_SQL = """
SELECT l.thread_id, l.run_id, l.model, l.provider, l.ts, l.input_tokens, l.output_tokens, l.cache_read, l.cache_creation, l.reasoning
FROM llm_calls l JOIN unnest($1::uuid[], $2::uuid[]) AS r(thread_id, run_id) ON l.thread_id = r.thread_id AND l.run_id = r.run_id
WHERE l.usage_known
"""
"""The calls with known usage of a set of runs, each found by the calls' key: what their cost is computed from."""

_CALLS = """
SELECT l.*, s.assistant_id, s.status AS run_status
FROM llm_calls l LEFT JOIN run_status s ON s.thread_id = l.thread_id AND s.run_id = l.run_id
"""
CALLS_SQL = {
    "thread": f"{_CALLS} WHERE l.thread_id = $1 ORDER BY l.ts, l.run_id, l.seq",
    "run": f"{_CALLS} WHERE l.thread_id = $1 AND l.run_id = $2 ORDER BY l.seq",
}

_MESSAGE_COLUMNS = (
    "thread_id, message_id, position, part, run_id, seq, updated_position, updated_part, type, data::text AS data,"
    " updated_run_id, updated_seq, writer_position, writer_part"
)


def _page_sql(by_run: bool, backward: bool) -> str:
    run = " AND run_id = $5" if by_run else ""
    compare, order = ("<", " DESC") if backward else (">", "")
    return f"""
SELECT {_MESSAGE_COLUMNS} FROM messages
WHERE thread_id = $1{run} AND (position, part) {compare} ($2, $3)
ORDER BY position{order}, part{order} LIMIT $4
"""


PAGE_SQL = {(by_run, backward): _page_sql(by_run, backward) for by_run in (False, True) for backward in (False, True)}
"""A page of messages, keyed by (of one run, walking backward)."""

_START = (0, -1)  # before every message: positions start at 1, parts at 0
_END = (2**63 - 1, 2**31 - 1)
_CURSOR = re.compile(r"([0-9]{1,19})\.([0-9]{1,10})")


def encode_cursor(key: tuple[int, int]) -> str:
    """An opaque page cursor for a message's place."""
    return base64.urlsafe_b64encode(f"{key[0]}.{key[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """The place a cursor names; :class:`InvalidCursor` for anything this ledger did not issue."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor[:100]!r}") from None
    found = _CURSOR.fullmatch(text)
    if found is None or encode_cursor((int(found[1]), int(found[2]))) != cursor:
        raise InvalidCursor(f"invalid cursor {cursor[:100]!r}")
    position, part = int(found[1]), int(found[2])
    if position >= 2**63 or part >= 2**31:
        raise InvalidCursor(f"invalid cursor {cursor[:100]!r}")
    return position, part


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of messages in conversation order, and where the pages around it start.

    ``has_more`` says whether more messages lie beyond this page in the
    direction it was read (forward for ``after`` or no cursor, backward for
    ``before``). ``after`` continues forward from the page's last message,
    ``before`` backward from its first; on an empty page both are the cursor
    it was read from, so polling ``after`` picks up new messages.
    """

    messages: list[Message]
    has_more: bool
    before: str | None
    after: str | None


_STATUS_FIELDS = [c.split(".")[1] for c in _STATUS_COLUMNS.split(", ")]


def _status(row: asyncpg.Record) -> RunStatus:
    return RunStatus(**{name: row[name] for name in _STATUS_FIELDS})


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run's status with its LLM calls and total tokens."""

    status: RunStatus
    calls: int
    total_tokens: int
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RunCost:
    """What a run's LLM calls cost: the sum over the priced ones (None when none is), and how many no source prices."""

    cost: Decimal | None
    unpriced_calls: int
    sources: frozenset[str]


@dataclass(frozen=True, slots=True)
class RunsPage:
    """A page of runs, newest first; ``next`` is the cursor of the page after it (None: this is the last)."""

    runs: list[RunSummary]
    next: str | None


def encode_run_cursor(created_at: datetime, run_id: UUID) -> str:
    """An opaque cursor for the place of a run in the runs list."""
    return base64.urlsafe_b64encode(f"{created_at.astimezone(timezone.utc).isoformat()}|{run_id}".encode()).decode().rstrip("=")


def decode_run_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The place a runs-list cursor names; :class:`InvalidCursor` for anything this ledger did not issue."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        when, run = text.split("|")
        found = datetime.fromisoformat(when), UUID(run)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor[:100]!r}") from None
    if found[0].tzinfo is None or encode_run_cursor(*found) != cursor:
        raise InvalidCursor(f"invalid cursor {cursor[:100]!r}")
    return found


def _call(row: asyncpg.Record) -> LlmCall:
    tokens = {name: row[name] for name in TOKEN_FIELDS} if row["usage_known"] else None
    return LlmCall(
        row["thread_id"], row["run_id"], row["call_id"], row["seq"], row["ts"], row["model"], row["caller"], tokens,
        row["latency_ms"], row["assistant_id"], row["run_status"],
    )


def _totals(row: asyncpg.Record) -> Totals:
    return Totals(row["calls"], row["unknown_usage_calls"], {name: row[name] for name in TOKEN_FIELDS})


def _message(row: asyncpg.Record) -> Message:
    return Message(
        row["thread_id"], row["message_id"], row["position"], row["part"], row["run_id"], row["seq"],
        row["updated_position"], row["updated_part"], row["type"], json.loads(row["data"]),
        row["updated_run_id"], row["updated_seq"], row["writer_position"], row["writer_part"],
    )


@dataclass(frozen=True, slots=True)
class ThreadView:
    """A thread as read: its row (``updated_at`` moved by its runs too) and its status."""

    thread: Thread
    status: str


def _view(row: asyncpg.Record) -> ThreadView:
    return ThreadView(thread_of(row), row["status"])


def _filters(metadata: dict[str, object] | None, ids: list[UUID] | None, status: str | None) -> tuple[str | None, list[UUID] | None, str | None]:
    return (jsonb_text(metadata, "metadata filter") if metadata else None, ids, status)


_EVER = (datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc))  # every time a caller can name


class Projections:
    """Python reads of the read models (the HTTP layer serves these)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def run_status(self, run: RunRef | UUID) -> RunStatus:
        """A run's status (the one source of run and thread status for every read)."""
        async with self.ledger.session() as session:
            if not isinstance(run, RunRef):
                found = await session.heads.locate(run)
                if found is None:
                    raise RunNotFound(f"run {run} not found")
                run = found.ref
            row = await session.connection.fetchrow(RUN_STATUS_SQL, run.thread_id, run.run_id)
        if row is None:
            raise RunNotFound(f"run {run.run_id} not found")
        return _status(row)

    async def thread_runs(self, thread_id: UUID) -> list[RunStatus]:
        async with self.ledger.session() as session:
            return [_status(row) for row in await session.connection.fetch(THREAD_RUNS_SQL, thread_id)]

    async def thread_status(self, thread_id: UUID) -> str:
        """idle, busy, interrupted or error, from the thread's runs."""
        async with self.ledger.session() as session:
            if not await session.threads.exists(thread_id):
                raise ThreadNotFound(f"thread {thread_id} not found")
            rows = await session.connection.fetch(THREAD_RUNS_SQL, thread_id)
        return thread_status(_status(row) for row in rows)

    async def thread(self, thread_id: UUID, visible: Visibility | None = None) -> ThreadView:
        """A thread with its status and last change (:class:`ThreadNotFound` when it does not exist, was deleted or is not ``visible``)."""
        async with self.ledger.session() as session:
            row = await session.connection.fetchrow(THREAD_SQL, thread_id, *visibility_args(visible))
        if row is None:
            raise ThreadNotFound(f"thread {thread_id} not found")
        return _view(row)

    async def search_threads(
        self,
        *,
        metadata: dict[str, object] | None = None,
        ids: list[UUID] | None = None,
        status: str | None = None,
        sort_by: str = "created_at",
        descending: bool = True,
        limit: int = 10,
        offset: int = 0,
        visible: Visibility | None = None,
    ) -> list[ThreadView]:
        """The threads (not deleted) whose metadata contains ``metadata``, among ``ids``, with ``status``; one page."""
        if sort_by not in SORT_BY:
            raise InvalidArgument(f"sort_by must be one of {', '.join(SORT_BY)}")
        async with self.ledger.session() as session:
            filters = _filters(metadata, ids, status)
            rows = await session.connection.fetch(
                SEARCH_THREADS_SQL[(sort_by, descending, filters[0] is not None)], *filters, limit, offset, *visibility_args(visible)
            )
        return [_view(row) for row in rows]

    async def count_threads(
        self,
        *,
        metadata: dict[str, object] | None = None,
        ids: list[UUID] | None = None,
        status: str | None = None,
        visible: Visibility | None = None,
    ) -> int:
        """How many threads :meth:`search_threads` would find with these filters, on every page."""
        async with self.ledger.session() as session:
            filters = _filters(metadata, ids, status)
            found: int = await session.connection.fetchval(COUNT_THREADS_SQL[filters[0] is not None], *filters, *visibility_args(visible))
        return found

    async def runs(
        self,
        *,
        thread_id: UUID | None = None,
        status: str | None = None,
        assistant_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        listed: bool = False,
    ) -> list[RunSummary]:
        """Runs newest first, filtered, with their calls and total tokens.

        ``listed``: only the runs the LangGraph API lists (no record runs, no deleted runs).
        """
        async with self.ledger.session() as session:
            rows = await session.connection.fetch(RUNS_SQL, thread_id, status, assistant_id, since, until, limit, offset, listed)
        return [RunSummary(_status(row), row["calls"], row["total_tokens"]) for row in rows]

    async def runs_page(
        self,
        *,
        thread_id: UUID | None = None,
        status: str | None = None,
        assistant_ids: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        visible: Visibility | None = None,
    ) -> RunsPage:
        """Runs of every thread the caller may see, newest first, one keyset page, with their calls and tokens.

        ``assistant_ids``: runs that recorded any of these as their assistant.

        ``cursor`` is a page's ``next``: the page after it holds exactly the
        runs that follow, whatever was created since (new runs come first in
        the list, before any cursor).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an integer from 1 to {MAX_PAGE}")
        if since is not None and until is not None and since > until:
            raise InvalidArgument("since is after until")
        bound = (until or _EVER[1], _NIL)  # before ``until``: the smallest run id excludes every run created then
        if cursor is not None:
            bound = min(bound, decode_run_cursor(cursor))
        async with self.ledger.session() as session:
            rows = await session.connection.fetch(
                RUNS_PAGE_SQL[thread_id is not None], thread_id, status, list(assistant_ids) if assistant_ids is not None else None,
                since or _EVER[0], *bound, *visibility_args(visible), limit + 1,
            )
        found = [
            RunSummary(_status(row), row["calls"], row["total_tokens"], row["input_tokens"], row["output_tokens"]) for row in rows[:limit]
        ]
        last = found[-1].status if found and len(rows) > limit else None
        return RunsPage(found, encode_run_cursor(last.created_at, last.run_id) if last is not None and last.created_at else None)

    async def run_costs(self, runs: Sequence[RunRef], prices: PriceBook) -> dict[RunRef, RunCost]:
        """The cost of each run's calls, each call priced at its own time (a call with unknown usage is not priced)."""
        async with self.ledger.session() as session:
            rows = await session.connection.fetch(RUN_CALLS_SQL, [r.thread_id for r in runs], [r.run_id for r in runs])
        sums: dict[RunRef, list[Decimal]] = {ref: [] for ref in runs}
        unpriced = dict.fromkeys(runs, 0)
        sources: dict[RunRef, set[str]] = {ref: set() for ref in runs}
        for row in rows:
            ref = RunRef(row["thread_id"], row["run_id"])
            tokens = Tokens(
                row["input_tokens"] or 0, row["output_tokens"] or 0, row["cache_read"] or 0, row["cache_creation"] or 0, row["reasoning"] or 0
            )
            priced = prices.price(row["model"], row["provider"], row["ts"], tokens)
            if priced is None:
                unpriced[ref] += 1
            else:
                sums[ref].append(priced.cost)
                sources[ref].add(priced.source)
        return {ref: RunCost(sum(sums[ref], Decimal(0)) if sums[ref] else None, unpriced[ref], frozenset(sources[ref])) for ref in runs}

    async def llm_calls(self, thread_id: UUID, run_id: UUID | None = None) -> list[LlmCall]:
        """The recorded calls of a thread (or of one of its runs), in order, with their run's assistant and status."""
        async with self.ledger.session() as session:
            if run_id is None:
                rows = await session.connection.fetch(CALLS_SQL["thread"], thread_id)
            else:
                rows = await session.connection.fetch(CALLS_SQL["run"], thread_id, run_id)
        return [_call(row) for row in rows]

    async def token_usage(
        self,
        *,
        thread_id: UUID | None = None,
        run_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Totals:
        """Token totals of a thread, of one of its runs, or of every thread (optionally within ``[since, until)``)."""
        (totals,) = (await self._usage(None, thread_id, run_id, since, until)).values()
        return totals

    async def usage_by(
        self,
        group: Group,
        *,
        thread_id: UUID | None = None,
        run_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str | None, Totals]:
        """Token totals grouped by model, caller, run status or assistant (None: not recorded)."""
        if group not in GROUPS:
            raise InvalidArgument(f"cannot group usage by {group!r}: use one of {', '.join(GROUPS)}")
        return await self._usage(group, thread_id, run_id, since, until)

    async def _usage(
        self, group: str | None, thread_id: UUID | None, run_id: UUID | None, since: datetime | None, until: datetime | None
    ) -> dict[str | None, Totals]:
        if run_id is not None and thread_id is None:
            raise InvalidArgument("usage of a run needs its thread_id")
        if since is not None and until is not None and since > until:
            raise InvalidArgument("since is after until")
        scope = "run" if run_id is not None else "thread" if thread_id is not None else "all"
        window = (since or _EVER[0], until or _EVER[1])
        async with self.ledger.session() as session:
            rows = await session.connection.fetch(USAGE_SQL[(scope, group)], thread_id, *window, run_id)
        if group is None:
            return {None: _totals(rows[0])}
        return {row["key"]: _totals(row) for row in rows}

    async def messages(
        self,
        thread_id: UUID,
        *,
        run_id: UUID | None = None,
        limit: int = DEFAULT_PAGE,
        before: str | None = None,
        after: str | None = None,
        last: bool = False,
    ) -> MessagePage:
        """A page of a thread's messages (or of those a run recorded first), in conversation order.

        Without a cursor, the first page of the conversation (the last page
        with ``last``); with ``after``, the page that follows; with
        ``before``, the page that precedes.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an integer from 1 to {MAX_PAGE}")
        if sum((before is not None, after is not None, last)) > 1:
            raise InvalidArgument("give one of before, after and last")
        backward = before is not None or last
        if before is not None:
            key = decode_cursor(before)
        elif after is not None:
            key = decode_cursor(after)
        else:
            key = _END if last else _START
        args = (thread_id, *key, limit + 1) + (() if run_id is None else (run_id,))
        async with self.ledger.session() as session:
            rows = await session.connection.fetch(PAGE_SQL[(run_id is not None, backward)], *args)
            if not rows and not await session.threads.exists(thread_id):
                raise ThreadNotFound(f"thread {thread_id} not found")
        has_more = len(rows) > limit
        found = [_message(row) for row in rows[:limit]]
        if backward:
            found.reverse()
        if found:
            return MessagePage(found, has_more, encode_cursor(found[0].key), encode_cursor(found[-1].key))
        here = None if key in (_START, _END) else encode_cursor(key)
        return MessagePage(found, False, here, here)


# -- budgets: the use of the runs charged to a budget's key (see graphledger.runs.budgets) ---------

BUDGET_METRICS = ("total_tokens", "input_tokens", "output_tokens")
"""The token metrics summed in SQL; a cost is summed by the caller from :data:`BUDGET_CALLS_SQL`."""

# The runs charged to (budget $1, key $2) that may have calls at or after $3,
# and whether each is still pending or running (then it holds a reservation).
# A run marked ended (budget_runs.ended_at: its last append's transaction time,
# the database's clock) an hour or more before $3 (the writer's clock) has no
# call since $3: its calls were appended before its end. The hour covers a skew
# between the two clocks; a run it lets in needlessly has no call to count.
_CHARGED = f"""
charged AS (
    SELECT b.thread_id, b.run_id, r.status IN ({_ACTIVE_LIST}) AS active
    FROM budget_runs b JOIN runs r ON r.thread_id = b.thread_id AND r.run_id = b.run_id
    WHERE b.budget = $1 AND b.key = $2 AND (b.ended_at IS NULL OR b.ended_at >= $3::timestamptz - interval '1 hour')
)"""


def _budget_use_sql(metric: str) -> str:
    return f"""
WITH {_CHARGED},
per_run AS (
    SELECT c.active, coalesce(sum(l.{metric}), 0)::bigint AS used,
           count(l.call_id) FILTER (WHERE NOT l.usage_known) AS unknown
    FROM charged c LEFT JOIN llm_calls l ON l.thread_id = c.thread_id AND l.run_id = c.run_id AND l.ts >= $3
    GROUP BY c.thread_id, c.run_id, c.active
)
SELECT coalesce(sum(used), 0)::bigint AS used,
       coalesce(sum(greatest($4::bigint - used, 0)) FILTER (WHERE active), 0)::bigint AS reserved,
       coalesce(sum(unknown), 0)::bigint AS unknown
FROM per_run
"""


BUDGET_USE_SQL = {metric: _budget_use_sql(metric) for metric in BUDGET_METRICS}
"""Per token metric: ``used`` in the window, ``reserved`` by active runs ($4 each, less what they used), calls of unknown usage."""

BUDGET_CALLS_SQL = f"""
WITH {_CHARGED}
SELECT c.thread_id, c.run_id, c.active, l.ts, l.model, l.provider, l.usage_known, {', '.join('l.' + name for name in TOKEN_FIELDS)}
FROM charged c JOIN llm_calls l ON l.thread_id = c.thread_id AND l.run_id = c.run_id AND l.ts >= $3
ORDER BY l.ts, l.thread_id, l.run_id, l.seq
"""
"""The calls in the window of the runs charged to a budget's key, oldest first (costs, and when the window frees up)."""

BUDGET_ACTIVE_SQL = f"WITH {_CHARGED} SELECT c.thread_id, c.run_id FROM charged c WHERE c.active"
"""The runs charged to a budget's key still pending or running ($3: the window's start)."""


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """Token use of the runs charged to a budget's key in a window (see :mod:`graphledger.runs.budgets`)."""

    used: int
    reserved: int
    unknown_calls: int


@dataclass(frozen=True, slots=True)
class ChargedCall:
    """One call in a budget's window: its run, whether that run is active, and what it used."""

    thread_id: UUID
    run_id: UUID
    active: bool
    ts: datetime
    model: str | None
    provider: str | None
    tokens: dict[str, int | None] | None  # None: the model reported no usage


async def budget_use(conn: Connection, budget: str, key: str, start: datetime, metric: str, reserve: int) -> BudgetUse:
    """``metric`` (a token metric) used since ``start`` by the runs charged to ``key``, and reserved by those still active."""
    row = await conn.fetchrow(BUDGET_USE_SQL[metric], budget, key, start, reserve)
    assert row is not None
    return BudgetUse(row["used"], row["reserved"], row["unknown"])


async def budget_calls(conn: Connection, budget: str, key: str, start: datetime) -> list[ChargedCall]:
    """The calls since ``start`` of the runs charged to ``key``, oldest first."""
    rows = await conn.fetch(BUDGET_CALLS_SQL, budget, key, start)
    return [
        ChargedCall(
            row["thread_id"], row["run_id"], row["active"], row["ts"], row["model"], row["provider"],
            {name: row[name] for name in TOKEN_FIELDS} if row["usage_known"] else None,
        )
        for row in rows
    ]



async def budget_active_runs(conn: Connection, budget: str, key: str, start: datetime) -> list[RunRef]:
    """The runs charged to ``key`` that are still pending or running."""
    return [RunRef(row["thread_id"], row["run_id"]) for row in await conn.fetch(BUDGET_ACTIVE_SQL, budget, key, start)]
