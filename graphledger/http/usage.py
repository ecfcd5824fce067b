"""``GET /usage``: token usage and cost over time, per bucket and group, across the threads the caller may see.

Field names follow the OpenTelemetry GenAI semantic conventions where one
exists (:data:`FIELDS`); the others keep the ledger's names.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError, iso
from graphledger.projections.prices import PriceBook
from graphledger.projections.usage import DIMENSIONS, METADATA, PERCENTILES, UsageQuery, UsageRow, UsageSeries, usage_series

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

PARAMETERS = frozenset({"bucket", "tz", "since", "until", "group_by", "percentiles"})
DEFAULT_DAYS = 30
_RELATIVE = re.compile(r"([1-9][0-9]{0,5})([hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def field_name(name: str) -> str:
    return FIELDS.get(name, name)


def parse_time(text: str, name: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC when it names no offset), or a span before ``now`` (``30d``, ``12h``, ``2w``).

    Spans count back from the end of the current UTC hour, so that they fall
    on whole hours, which the hourly rollup answers.
    """
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        try:
            return now - int(relative[1]) * _UNITS[relative[2]]
        except OverflowError:
            raise HTTPError(422, f"{name} reaches back before year 1: {text}") from None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPError(422, f"{name} must be an ISO 8601 time or a span such as 30d, 12h or 2w, not {text[:50]!r}") from None
    try:
        return value.astimezone(timezone.utc) if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise HTTPError(422, f"{name} must be a time from year 1 to year 9999 in UTC, not {text[:50]!r}") from None


def next_hour(now: datetime) -> datetime:
    """The end of the UTC hour ``now`` is in (a default ``until`` the rollup can answer)."""
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def query_of(request: Request, now: datetime | None = None) -> UsageQuery:
    """The query a request's parameters ask for; 422 for unknown parameters and values."""
    params = request.query_params
    now = now or datetime.now(timezone.utc)
    filters: dict[str, tuple[str, ...]] = {}
    for name in params.keys():
        if name in PARAMETERS:
            continue
        if name not in DIMENSIONS and not name.startswith(METADATA):
            raise HTTPError(
                422, f"unknown parameter {name[:100]!r}: use {', '.join(sorted(PARAMETERS))} or a dimension to filter on "
                f"({', '.join(DIMENSIONS)}, metadata.<key>)"
            )
        values = tuple(value for text in params.getlist(name) for value in _names(text))
        if not values:
            raise HTTPError(422, f"filter {name[:100]} has no values")
        filters[name] = values
    end = next_hour(now)
    until = parse_time(params["until"], "until", end) if params.get("until") else end
    since = parse_time(params["since"], "since", end) if params.get("since") else until - timedelta(days=DEFAULT_DAYS)
    percentiles = params.get("percentiles", "false").lower()
    if percentiles not in ("true", "false", "1", "0"):
        raise HTTPError(422, "percentiles must be true or false")
    return UsageQuery(
        since=since,
        until=until,
        bucket=params.get("bucket") or "day",
        tz=params.get("tz") or "UTC",
        group_by=_names(params.get("group_by", "")),
        filters=filters,
        percentiles=percentiles in ("true", "1"),
    )


def _money(value: Decimal) -> float:
    return float(round(value, 10))


def _spread(values: tuple[float | None, ...] | None) -> dict[str, float | None] | None:
    if values is None:
        return None
    return {f"p{round(q * 100)}": None if v is None else v / 1000 for q, v in zip(PERCENTILES, values, strict=True)}


def row_json(row: UsageRow, percentiles: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"start": iso(row.bucket)}
    body.update({field_name(name): value for name, value in row.group.items()})
    body.update({field_name(name): value for name, value in row.sums.items()})
    body["cost"] = _money(row.cost) if row.priced else None
    body["cost_sources"] = sorted(row.cost_sources)
    body["unpriced"] = {field_name(name): value for name, value in row.unpriced.items()}
    if percentiles:
        body["gen_ai.client.operation.duration"] = _spread(row.latency_ms)
        body["time_to_first_token"] = _spread(row.ttft_ms)
    return body


def series_json(query: UsageQuery, series: UsageSeries) -> dict[str, Any]:
    return {
        "bucket": query.bucket,
        "tz": query.tz,
        "since": iso(query.since),
        "until": iso(query.until),
        "group_by": [field_name(name) for name in query.group_by],
        "currency": "USD",
        "plan": series.plan,
        "rows": [row_json(row, query.percentiles) for row in series.rows],
    }


async def usage(request: Request) -> JSONResponse:
    """Token usage and cost per ``bucket`` (hour, day, week, month) in ``tz``, grouped by ``group_by``, filtered by dimension."""
    query = query_of(request)
    query.check()  # 422 before authorizing
    visible = await authorize(request, {"metadata": {}})
    prices: PriceBook = request.app.state.prices
    series = await usage_series(request.app.state.ledger, query, prices, visible=visible)
    return JSONResponse(series_json(query, series))


routes = [guarded("/usage", usage, methods=["GET"], action="search")]
