"""``GET /usage``: token usage and cost over time, per bucket and group, across the threads the caller may see.

Field names follow the OpenTelemetry GenAI semantic conventions where one
exists (:data:`graphledger.projections.usage.FIELDS`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError
from graphledger.projections.prices import PriceBook
from graphledger.projections.usage import DIMENSIONS, METADATA, UsageQuery, next_hour, parse_time, series_json, usage_series

PARAMETERS = frozenset({"bucket", "tz", "since", "until", "group_by", "percentiles"})
DEFAULT_DAYS = 30


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


async def usage(request: Request) -> JSONResponse:
    """Token usage and cost per ``bucket`` (hour, day, week, month) in ``tz``, grouped by ``group_by``, filtered by dimension."""
    query = query_of(request)
    query.check()  # 422 before authorizing
    visible = await authorize(request, {"metadata": {}})
    prices: PriceBook = request.app.state.prices
    series = await usage_series(request.app.state.ledger, query, prices, visible=visible)
    return JSONResponse(series_json(query, series))


routes = [guarded("/usage", usage, methods=["GET"], action="search")]
