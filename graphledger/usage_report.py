"""``graphledger usage``: token usage and cost over time, as a table with a bar per row, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from graphledger.projections.errors import InvalidArgument
from graphledger.projections.prices import price_book
from graphledger.projections.usage import BUCKETS, DIMENSIONS, UsageQuery, UsageSeries, next_hour, parse_time, series_json, usage_series

BAR = 30
EXAMPLES = (
    "examples:\n  graphledger usage --bucket day --by model --since 30d\n"
    "  graphledger usage --bucket week --by assistant,status --tz Europe/Berlin --since 12w\n"
    "  graphledger usage --by metadata.team --filter model=gpt-4o --csv > usage.csv\n"
    "  graphledger usage --prices prices.toml --json"
)


def add_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--bucket", choices=BUCKETS, default="day", help="the buckets' size (default day)")
    command.add_argument("--by", default="", metavar="DIMS", help=f"group by these, comma-separated: {', '.join(DIMENSIONS)}, metadata.<key>")
    command.add_argument("--since", default="30d", metavar="T", help="ISO 8601 time, or a span back from the end of this hour: 30d, 12h, 2w (default 30d)")
    command.add_argument("--until", default=None, metavar="T", help="ISO 8601 time or span (default: the end of this hour)")
    command.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA time zone of the buckets (default UTC)")
    command.add_argument(
        "--filter", action="append", default=[], metavar="DIM=VALUES", help="keep only calls whose DIM is one of VALUES (comma-separated; repeatable)"
    )
    command.add_argument("--prices", type=Path, default=None, metavar="FILE", help="a price file (TOML or JSON) that wins over genai-prices")
    output = command.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON, as GET /usage answers")
    output.add_argument("--csv", action="store_true", help="CSV, one line per row")


def query_of(args: argparse.Namespace, now: datetime | None = None) -> UsageQuery:
    """The query the command's options ask for (:class:`InvalidArgument` for bad ones)."""
    end = next_hour(now or datetime.now(timezone.utc))
    until = parse_time(args.until, "--until", end) if args.until else end
    since = parse_time(args.since, "--since", end)
    filters: dict[str, tuple[str, ...]] = {}
    for text in args.filter:
        name, equals, values = text.partition("=")
        found = tuple(v.strip() for v in values.split(",") if v.strip())
        if not equals or not name.strip() or not found:
            raise InvalidArgument(f"--filter takes DIM=VALUE[,VALUE...], not {text[:100]!r}")
        filters[name.strip()] = filters.get(name.strip(), ()) + found
    group_by = tuple(name.strip() for name in args.by.split(",") if name.strip())
    query = UsageQuery(since=since, until=until, bucket=args.bucket, tz=args.tz, group_by=group_by, filters=filters)
    query.check()
    return query


def _cost(row: Any) -> str:
    if not row.priced:
        return "unpriced"
    text = f"${row.cost:,.4f}" if row.cost < 1000 else f"${row.cost:,.0f}"
    return text + (" +unpriced" if row.unpriced["calls"] else "")


def _stamp(bucket: datetime, size: str) -> str:
    if size == "hour":
        return bucket.strftime("%Y-%m-%d %H:%M %z")
    return bucket.strftime("%Y-%m-%d")


def _tokens(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def print_table(query: UsageQuery, series: UsageSeries, out: TextIO = sys.stdout) -> None:
    """One line per bucket and group: its start, the group, calls, tokens, cost and a bar of its total tokens."""
    if not series.rows:
        print(f"no LLM calls from {query.since.isoformat()} to {query.until.isoformat()}", file=out)
        return
    header = ["bucket", *query.group_by, "calls", "input", "output", "total", "cost"]
    lines = [
        [_stamp(row.bucket, query.bucket), *("-" if v is None else str(v) for v in row.group.values()), str(row.sums["calls"]),
         _tokens(row.sums["input_tokens"]), _tokens(row.sums["output_tokens"]), _tokens(row.sums["total_tokens"]), _cost(row)]
        for row in series.rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    most = max(row.sums["total_tokens"] for row in series.rows) or 1
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    for cells, row in zip(lines, series.rows, strict=True):
        bar = "█" * max(1 if row.sums["total_tokens"] else 0, round(BAR * row.sums["total_tokens"] / most))
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + bar, file=out)
    cost = sum((row.cost for row in series.rows), Decimal(0))
    unpriced = sum(row.unpriced["calls"] for row in series.rows)
    calls = sum(row.sums["calls"] for row in series.rows)
    sources = sorted({s for row in series.rows for s in row.cost_sources})
    summary = f"{calls} calls, ${cost:,.4f}" + (f" priced by {', '.join(sources)}" if sources else "")
    if unpriced:
        summary += f"; {unpriced} calls unpriced (no price for their model)"
    print(summary, file=out)


def print_csv(query: UsageQuery, series: UsageSeries, out: TextIO = sys.stdout) -> None:
    writer = csv.writer(out)
    sums = list(series.rows[0].sums) if series.rows else ["calls", "unknown_usage_calls", "runs"]
    writer.writerow(["bucket", *query.group_by, *sums, "cost_usd", "cost_sources", "unpriced_calls"])
    for row in series.rows:
        writer.writerow([
            row.bucket.isoformat(), *row.group.values(), *(row.sums[name] for name in sums),
            str(row.cost) if row.priced else "", " ".join(sorted(row.cost_sources)), row.unpriced["calls"],
        ])


def print_json(query: UsageQuery, series: UsageSeries, out: TextIO = sys.stdout) -> None:
    print(json.dumps(series_json(query, series), indent=2), file=out)


def run(args: argparse.Namespace, ledger_of: Any) -> None:
    """The command: ``ledger_of`` is the CLI's context manager giving (loop, ledger)."""
    query = query_of(args)
    prices = price_book(args.prices)
    with ledger_of(args) as (loop, ledger):
        series = loop.run_until_complete(usage_series(ledger, query, prices))
    if args.json:
        print_json(query, series)
    elif args.csv:
        print_csv(query, series)
    else:
        print_table(query, series)

