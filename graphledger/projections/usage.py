"""Usage over time: token sums, calls, runs and cost per time bucket (in a time zone) and group.

Two plans answer one query, and give the same sums:

- **the rollup** (``usage_hourly``: UTC hours × model, provider, caller,
  assistant, run status, identity), when the query needs nothing finer: no
  thread or metadata grouping or filter, no authorization filter (it is on
  threads' metadata), bucket edges on whole hours (``since``/``until`` on
  whole UTC hours, and a time zone whose offset is a whole number of hours
  over the range);
- **the calls** (``llm_calls`` with their run and thread) for everything
  else: any thread, metadata key, authorization filter, time zone (India's
  +05:30, Nepal's +05:45) or edge, and the latency percentiles.

Cost is computed when read, per (bucket, group, model, provider, price
period): prices change at known instants (:meth:`PriceBook.changes`), the
sums are split at those instants, so a price change inside a bucket prices
each side at its own rate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from graphledger.ledger import Ledger
from graphledger.ledger.threads import Visibility, visibility_args, visible_sql
from graphledger.projections.errors import InvalidArgument
from graphledger.projections.prices import PriceBook, Tokens
from graphledger.projections.token_usage import TOKEN_FIELDS

BUCKETS = ("hour", "day", "week", "month")
DIMENSIONS: dict[str, tuple[str | None, str]] = {
    # name: (its column in the rollup, None when only the calls have it; its expression over the calls)
    "model": ("r.model", "l.model"),
    "provider": ("r.provider", "l.provider"),
    "caller": ("r.caller", "l.caller"),
    "assistant": ("r.assistant_id", "s.assistant_id"),
    "status": ("r.status", "s.status"),
    "identity": ("r.identity", "s.identity"),
    "thread": (None, "l.thread_id::text"),
}
METADATA = "metadata."
MAX_BUCKETS = 10_000
PERCENTILES = (0.5, 0.95, 0.99)
_KEY = re.compile(r"[^\x00]{1,200}")

SUMS = ("calls", "unknown_usage_calls", "runs", *TOKEN_FIELDS)


_RELATIVE = re.compile(r"([1-9][0-9]{0,5})([hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_time(text: str, name: str, end: datetime) -> datetime:
    """An ISO 8601 time (UTC when it names no offset), or a span back from ``end`` (``30d``, ``12h``, ``2w``)."""
    relative = _RELATIVE.fullmatch(text)
    try:
        if relative is not None:
            return end - int(relative[1]) * _UNITS[relative[2]]
        value = datetime.fromisoformat(text)
        return value.astimezone(timezone.utc) if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidArgument(f"{name} must be an ISO 8601 time or a span such as 30d, 12h or 2w, not {text[:50]!r}") from None
    except OverflowError:
        raise InvalidArgument(f"{name} must be a time from year 1 to year 9999 in UTC, not {text[:50]!r}") from None


def next_hour(now: datetime) -> datetime:
    """The end of the UTC hour ``now`` is in: spans count back from it, so that they fall on whole hours (the rollup's)."""
    return now.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _is_dimension(name: str) -> bool:
    return name in DIMENSIONS or (name.startswith(METADATA) and _KEY.fullmatch(name[len(METADATA):]) is not None)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What to sum: ``[since, until)`` in ``bucket``s of time zone ``tz``, grouped by ``group_by``, filtered by ``filters``.

    Dimensions are ``model``, ``provider``, ``caller``, ``assistant``,
    ``status`` (the run's current status), ``identity`` (who asked for the
    run), ``thread`` and ``metadata.<key>`` (the run's metadata, else its
    thread's). A filter keeps the calls whose dimension is one of its values.
    """

    since: datetime
    until: datetime
    bucket: str = "day"
    tz: str = "UTC"
    group_by: tuple[str, ...] = ()
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    percentiles: bool = False

    def check(self) -> ZoneInfo:
        """The time zone; :class:`InvalidArgument` for anything this query cannot mean."""
        if self.bucket not in BUCKETS:
            raise InvalidArgument(f"bucket must be one of {', '.join(BUCKETS)}, not {self.bucket[:50]!r}")
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidArgument(f"unknown time zone {self.tz[:100]!r}: use an IANA name such as Europe/Berlin") from None
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise InvalidArgument("since and until must name their offset")
        if self.since >= self.until:
            raise InvalidArgument("since must be before until")
        step = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 28 * 86400}[self.bucket]
        if (self.until - self.since).total_seconds() / step > MAX_BUCKETS:
            raise InvalidArgument(f"the range holds more than {MAX_BUCKETS} {self.bucket} buckets: narrow it or use larger buckets")
        for name in (*self.group_by, *self.filters):
            if not _is_dimension(name):
                raise InvalidArgument(
                    f"unknown dimension {name[:100]!r}: use {', '.join(DIMENSIONS)} or metadata.<key>"
                )
        if len(set(self.group_by)) != len(self.group_by):
            raise InvalidArgument("group_by names a dimension twice")
        for name, values in self.filters.items():
            if not values:
                raise InvalidArgument(f"filter {name[:100]} has no values")
            if any("\x00" in value for value in values):  # PostgreSQL's text cannot hold NUL: no label can match
                raise InvalidArgument(f"filter {name[:100]} has a value with a NUL character")
        return zone


@dataclass(slots=True)
class UsageRow:
    """The sums of one bucket and group, and their cost."""

    bucket: datetime  # its start, in the query's time zone
    group: dict[str, str | None]
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SUMS, 0))
    cost: Decimal = Decimal(0)  # of the priced calls only
    cost_sources: set[str] = field(default_factory=set)
    unpriced: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("calls", *TOKEN_FIELDS), 0))
    latency_ms: tuple[float | None, ...] | None = None  # p50, p95, p99 of the calls' latency (percentiles asked)
    ttft_ms: tuple[float | None, ...] | None = None  # of their time to first token
    run_ttft_ms: tuple[float | None, ...] | None = None  # of the runs' time from their start to their first token

    @property
    def priced(self) -> bool:
        return bool(self.cost_sources)


@dataclass(frozen=True, slots=True)
class UsageSeries:
    rows: list[UsageRow]
    plan: str  # "rollup" or "calls": which table answered


def _whole_hours(zone: ZoneInfo, since: datetime, until: datetime) -> bool:
    """Whether ``zone``'s offset is a whole number of hours over ``[since, until]`` (sampled daily and at both ends)."""
    at = since
    while True:
        offset = at.astimezone(zone).utcoffset()
        if offset is None or offset.total_seconds() % 3600:
            return False
        if at >= until:
            return True
        at = min(at + timedelta(days=1), until)


def _on_hour(t: datetime) -> bool:
    return t.minute == 0 and t.second == 0 and t.microsecond == 0


# Parameters of both plans: $1 bucket, $2 time zone, $3 since, $4 until, $5 the price changes (sorted);
# the calls' plan adds $6, $7 (the authorization filter); metadata keys and filter values follow.
_ROLLUP_SUMS = ", ".join(f"sum(r.{name})::bigint AS {name}" for name in SUMS)
_CALL_SUMS = (
    "count(*) AS calls, count(*) FILTER (WHERE NOT w.usage_known) AS unknown_usage_calls, "
    "count(*) FILTER (WHERE w.seq = f.seq) AS runs, "
    + ", ".join(f"coalesce(sum(w.{name}), 0)::bigint AS {name}" for name in TOKEN_FIELDS)
)
_CALL_COLUMNS = ", ".join(f"l.{name}" for name in ("thread_id", "run_id", "seq", "usage_known", *TOKEN_FIELDS))
_PERCENTILES = f"ARRAY[{', '.join(map(str, PERCENTILES))}]::float8[]"


@lru_cache(maxsize=512)
def series_sql(plan: str, group_by: tuple[str, ...], filters: tuple[str, ...], percentiles: bool = False) -> str:
    """The statement of ``plan`` for these dimensions (names only: values are parameters; cached per shape)."""
    n = 7 if plan == "calls" else 5
    expressions = []
    params: dict[str, int] = {}

    def expression(name: str) -> str:
        nonlocal n
        if name.startswith(METADATA):
            if name not in params:
                n += 1
                params[name] = n
            return f"coalesce(s.metadata ->> ${params[name]}::text, t.metadata ->> ${params[name]}::text)"
        rollup, calls = DIMENSIONS[name]
        assert rollup is not None or plan == "calls"
        return (rollup if plan == "rollup" else calls) or calls

    expressions = [expression(name) for name in group_by]
    conditions = []
    for name in filters:
        column = expression(name)
        n += 1
        conditions.append(f"{column} = ANY(${n}::text[])")
    where = "".join(f" AND {c}" for c in conditions)
    dims = "".join(f", {e} AS g{i}" for i, e in enumerate(expressions))
    keys = ", ".join(str(i) for i in range(1, 2 + len(expressions)))
    if plan == "rollup":
        return f"""
SELECT date_trunc($1, r.hour, $2) AS bucket{dims}, r.model AS price_model, r.provider AS price_provider,
       width_bucket(r.hour, $5::timestamptz[]) AS period, {_ROLLUP_SUMS}
FROM usage_hourly r
WHERE r.hour >= $3 AND r.hour < $4{where}
GROUP BY {keys}, price_model, price_provider, period
HAVING sum(r.calls) <> 0
"""
    source = f"""
FROM llm_calls l
JOIN threads t ON t.thread_id = l.thread_id
LEFT JOIN run_status s ON s.thread_id = l.thread_id AND s.run_id = l.run_id
WHERE l.ts >= $3 AND l.ts < $4 AND {visible_sql(6, 7, 't.')}{where}
"""
    names = "".join(f", g{i}" for i in range(len(expressions)))
    if percentiles:
        # A run's time to first token: from its start to the first token of its first streamed call in the
        # group (a call's first token came ttft_ms after it started, latency_ms before it was recorded).
        same = "".join(f" AND rp.g{i} IS NOT DISTINCT FROM cp.g{i}" for i in range(len(expressions)))
        return f"""
WITH c AS MATERIALIZED (
    SELECT date_trunc($1, l.ts, $2) AS bucket{dims}, l.thread_id, l.run_id, l.latency_ms, l.ttft_ms,
           l.ts - make_interval(secs => coalesce(l.latency_ms, 0) / 1000) + make_interval(secs => l.ttft_ms / 1000) AS first_token,
           s.started_at
    {source}
), cp AS (
    SELECT bucket{names},
           percentile_cont({_PERCENTILES}) WITHIN GROUP (ORDER BY latency_ms) AS latency,
           percentile_cont({_PERCENTILES}) WITHIN GROUP (ORDER BY ttft_ms) AS ttft,
           cardinality($5::timestamptz[]) AS changes  -- takes the parameters of the sums' statement
    FROM c GROUP BY {keys}
), r AS (
    SELECT bucket{names}, extract(epoch FROM min(first_token) - min(started_at)) * 1000 AS run_ttft
    FROM c WHERE first_token IS NOT NULL AND started_at IS NOT NULL
    GROUP BY {keys}, thread_id, run_id
), rp AS (
    SELECT bucket{names}, percentile_cont({_PERCENTILES}) WITHIN GROUP (ORDER BY greatest(run_ttft, 0)) AS run_ttft
    FROM r GROUP BY {keys}
)
SELECT cp.*, rp.run_ttft FROM cp LEFT JOIN rp ON rp.bucket = cp.bucket{same}
"""
    # A run counts where its first call (lowest seq) is, which may lie outside the window: the first calls
    # are looked up once per run of the window, not once per call.
    return f"""
WITH w AS MATERIALIZED (
    SELECT date_trunc($1, l.ts, $2) AS bucket{dims}, l.model AS price_model, l.provider AS price_provider,
           width_bucket(l.ts, $5::timestamptz[]) AS period, {_CALL_COLUMNS}
    {source}
), f AS (
    SELECT f.thread_id, f.run_id, min(f.seq) AS seq FROM llm_calls f
    WHERE (f.thread_id, f.run_id) IN (SELECT thread_id, run_id FROM w)
    GROUP BY 1, 2
)
SELECT bucket{names}, price_model, price_provider, period, {_CALL_SUMS}
FROM w JOIN f ON f.thread_id = w.thread_id AND f.run_id = w.run_id
GROUP BY {keys}, price_model, price_provider, period
"""


def _metadata_keys(names: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for name in names:
        if name.startswith(METADATA) and name not in keys:
            keys.append(name)
    return [key[len(METADATA):] for key in keys]


def plan_of(query: UsageQuery, zone: ZoneInfo, visible: Visibility | None) -> str:
    """``rollup`` when the hourly rollup answers the query exactly, else ``calls``."""
    names = (*query.group_by, *query.filters)
    if visible is not None or query.percentiles or any(DIMENSIONS.get(name, (None,))[0] is None for name in names):
        return "calls"
    if not (_on_hour(query.since) and _on_hour(query.until) and _whole_hours(zone, query.since, query.until)):
        return "calls"
    return "rollup"


async def usage_series(
    ledger: Ledger, query: UsageQuery, prices: PriceBook, *, visible: Visibility | None = None, plan: str | None = None
) -> UsageSeries:
    """The sums and cost of every bucket and group that has calls, in bucket then group order.

    ``plan`` forces one plan (tests compare them); by default the rollup
    answers whenever it can.
    """
    zone = query.check()
    chosen = plan or plan_of(query, zone, visible)
    if chosen == "rollup" and plan_of(query, zone, visible) != "rollup":
        raise InvalidArgument("the rollup cannot answer this query")
    filters = tuple(query.filters)
    changes = prices.changes(query.since, query.until)
    args: list[Any] = [query.bucket, query.tz, query.since, query.until, changes]
    if chosen == "calls":
        args.extend(visibility_args(visible))
    args.extend(_metadata_keys([*query.group_by, *filters]))
    args.extend(list(query.filters[name]) for name in filters)
    async with ledger.session() as session:
        try:
            records = await session.connection.fetch(series_sql(chosen, query.group_by, filters), *args)
            spread = (
                await session.connection.fetch(series_sql("calls", query.group_by, filters, True), *args)
                if query.percentiles else []
            )
        except asyncpg.InvalidParameterValueError as exc:  # a time zone PostgreSQL does not know
            raise InvalidArgument(f"time zone {query.tz[:100]!r}: {exc}") from None
    rows: dict[tuple[Any, ...], UsageRow] = {}
    width = len(query.group_by)
    for record in records:
        key = tuple(record[i] for i in range(1 + width))
        row = rows.get(key)
        if row is None:
            row = rows[key] = UsageRow(record[0].astimezone(zone), {name: record[1 + i] for i, name in enumerate(query.group_by)})
        for name in SUMS:
            row.sums[name] += record[name]
        period = record["period"]
        at = max(record["bucket"], changes[period - 1]) if period else record["bucket"]
        tokens = Tokens(
            record["input_tokens"], record["output_tokens"], record["cache_read"], record["cache_creation"], record["reasoning"]
        )
        priced = prices.price(record["price_model"], record["price_provider"], max(at, query.since), tokens)
        if priced is None:
            row.unpriced["calls"] += record["calls"]
            for name in TOKEN_FIELDS:
                row.unpriced[name] += record[name]
        else:
            row.cost += priced.cost
            row.cost_sources.add(priced.source)
    for record in spread:
        found = rows.get(tuple(record[i] for i in range(1 + width)))
        if found is not None:
            found.latency_ms = tuple(record["latency"]) if record["latency"] is not None else None
            found.ttft_ms = tuple(record["ttft"]) if record["ttft"] is not None else None
            found.run_ttft_ms = tuple(record["run_ttft"]) if record["run_ttft"] is not None else None
    ordered = sorted(rows.values(), key=lambda r: (r.bucket, tuple((v is None, v or "") for v in r.group.values())))
    return UsageSeries(ordered, chosen)


# -- the JSON form (GET /usage, graphledger usage --json) --------------------------------------

FIELDS = {
    # dimensions
    "model": "gen_ai.request.model",
    "provider": "gen_ai.provider.name",
    "assistant": "gen_ai.agent.id",
    "thread": "gen_ai.conversation.id",
    "identity": "user.id",
    # sums
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read": "gen_ai.usage.cache_read.input_tokens",
    "cache_creation": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning": "reasoning_tokens",
}
"""Our names -> the names in answers (OpenTelemetry's where it has one; the rest as they are)."""


def _money(value: Decimal) -> float:
    return float(round(value, 10))


def _spread(values: tuple[float | None, ...] | None) -> dict[str, float | None] | None:
    if values is None:
        return None
    return {f"p{round(q * 100)}": None if v is None else v / 1000 for q, v in zip(PERCENTILES, values, strict=True)}


def field_name(name: str) -> str:
    return FIELDS.get(name, name)


def row_json(row: UsageRow, percentiles: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"start": row.bucket.isoformat()}
    body.update({field_name(name): value for name, value in row.group.items()})
    body.update({field_name(name): value for name, value in row.sums.items()})
    body["cost"] = _money(row.cost) if row.priced else None
    body["cost_sources"] = sorted(row.cost_sources)
    body["unpriced"] = {field_name(name): value for name, value in row.unpriced.items()}
    if percentiles:
        body["gen_ai.client.operation.duration"] = _spread(row.latency_ms)
        body["time_to_first_token"] = _spread(row.ttft_ms)
        body["run.time_to_first_token"] = _spread(row.run_ttft_ms)
    return body


def series_json(query: UsageQuery, series: UsageSeries) -> dict[str, Any]:
    return {
        "bucket": query.bucket,
        "tz": query.tz,
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "group_by": [field_name(name) for name in query.group_by],
        "currency": "USD",
        "plan": series.plan,
        "rows": [row_json(row, query.percentiles) for row in series.rows],
    }
