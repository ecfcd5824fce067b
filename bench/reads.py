"""Reads of the projections over a large log, and a full rebuild, on one database.

    python bench/reads.py [--events 10000000] [--samples 1000]

Loads ``--events`` events with COPY (default 10 million), shaped like real runs:
50,000 runs of 200 events each in 10,000 threads of 5 runs, over 60 days. Each
run has its created event (carrying the human input message), a start, 19 node
updates carrying one AI message each, 2 LLM usage reports (model and caller
drawn from small sets, cache and reasoning details), 176 token chunks and its
terminal event: 1 million messages and 100,000 LLM calls for 10 million events.
The shape scales with ``--events``.

Then, in this order:

1. rebuild: ``graphledger.projections.rebuild`` of every projection from the
   log alone (events of the whole log per second);
2. message page: ``--samples`` pages of 50 messages of random threads, half
   first pages, half from a cursor in the middle (p50, p99);
3. thread usage: token totals of random threads (p50, p99);
4. run status: status of random runs (p50, p99);
5. usage by model: token usage by model over the last 30 days across all
   threads (median of 5);
6. series: usage and cost per day and model over the last 30 days (UTC
   days), priced by genai-prices, as ``GET /usage?bucket=day&group_by=model``
   answers it from the hourly rollup (median of 20, after one warm-up); then
   the same from the calls, as it is answered to a caller whose authorization
   filters threads (median of 5);
7. runs page: ``--samples`` pages of the runs list (``GET /runs``'s data: 50
   runs of every thread, newest first, with their calls, tokens and cost),
   half first pages, half after a cursor half-way down the list (p99).

Ends with one summary line:
``reads: events=.. page_p99_ms=.. usage_p99_ms=.. by_model_ms=.. series_ms=.. runs_page_ms=.. rebuild_eps=..``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402

from graphledger.ledger import Ledger, RunRef, chain  # noqa: E402
from graphledger.ledger.events import canonical_json  # noqa: E402
from graphledger.projections import Projections, rebuild  # noqa: E402
from graphledger.projections.prices import PriceBook  # noqa: E402
from graphledger.projections.usage import UsageQuery, next_hour, usage_series  # noqa: E402

EVENTS_PER_RUN = 200
RUNS_PER_THREAD = 5
MESSAGES_PER_RUN = 19  # plus the human input
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "gemini-pro", "llama-70b"]
CALLERS = ["agent", "planner", "tools"]
DAYS = 60
CHUNK = canonical_json({"content": "x" * 120, "type": "AIMessageChunk", "id": "chunk"})
EVENT_COLUMNS = ["thread_id", "run_id", "seq", "kind", "data", "ts", "hash"]
RUNS_PER_COPY = 1000


def run_events(rng: random.Random, thread_id: uuid.UUID, run_id: uuid.UUID, start: datetime) -> list[tuple[str, str]]:
    """(kind, data) of one run's 200 events."""
    events = [
        ("run.created", canonical_json({"assistant_id": "agent", "input": {"messages": [
            {"role": "user", "content": "question " + "q" * 80, "id": f"h-{run_id}"}]}})),
        ("run.started", canonical_json({"worker": "bench"})),
    ]
    chunks = EVENTS_PER_RUN - 2 - MESSAGES_PER_RUN - 2 - 1
    updates = set(rng.sample(range(MESSAGES_PER_RUN + 2 + chunks), MESSAGES_PER_RUN + 2))
    usage_at = set(rng.sample(sorted(updates), 2))
    message = 0
    for i in range(MESSAGES_PER_RUN + 2 + chunks):
        if i in usage_at:
            tokens = rng.randrange(100, 5000)
            events.append(("llm.usage", canonical_json({
                "call_id": f"call-{i}", "model": rng.choice(MODELS), "caller": rng.choice(CALLERS), "latency_ms": rng.uniform(50, 3000),
                "usage": {"input_tokens": tokens, "output_tokens": tokens // 4, "total_tokens": tokens + tokens // 4,
                          "input_token_details": {"cache_read": tokens // 2}, "output_token_details": {"reasoning": tokens // 8}},
            })))
        elif i in updates:
            events.append(("stream:updates", canonical_json({"agent": {"messages": [
                {"type": "ai", "content": f"answer {message} " + "a" * 150, "id": f"a{message}-{run_id}"}]}})))
            message += 1
        else:
            events.append(("stream:messages", CHUNK))
    events.append(("run.succeeded", "{}"))
    return events


async def load(dsn: str, total: int, rng: random.Random) -> tuple[list[RunRef], float]:
    """COPY ``total`` events (rounded to whole runs); returns the runs and the seconds spent."""
    runs = max(1, total // EVENTS_PER_RUN)
    threads = [uuid.uuid4() for _ in range(max(1, runs // RUNS_PER_THREAD))]
    now = datetime.now(timezone.utc)
    refs: list[RunRef] = []
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.copy_records_to_table("threads", records=[(t,) for t in threads], columns=["thread_id"])
        for first in range(0, runs, RUNS_PER_COPY):
            heads, records = [], []
            for r in range(first, min(runs, first + RUNS_PER_COPY)):
                ref = RunRef(threads[r % len(threads)], uuid.uuid4())
                refs.append(ref)
                ts = now - timedelta(days=DAYS) + timedelta(seconds=DAYS * 86400 * r / runs)
                prefix, digest = chain.run_prefix(ref.thread_id, ref.run_id), chain.GENESIS
                stamp = chain.format_ts(ts)
                for seq, (kind, data) in enumerate(run_events(rng, ref.thread_id, ref.run_id, ts), start=1):
                    digest = chain.link_with(digest, prefix, seq, kind, stamp, data)
                    records.append((ref.thread_id, ref.run_id, seq, kind, data, ts, digest))
                heads.append((ref.thread_id, ref.run_id, "agent", "success", EVENTS_PER_RUN, digest, "run.succeeded", ts))
            await conn.copy_records_to_table(
                "runs", records=heads,
                columns=["thread_id", "run_id", "assistant_id", "status", "last_seq", "last_hash", "last_kind", "created_at"],
            )
            await conn.copy_records_to_table("events", records=records, columns=EVENT_COLUMNS)
            print(f"\rload: {len(refs) * EVENTS_PER_RUN:,} events", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE runs")
    finally:
        await conn.close()
    return refs, time.perf_counter() - started


async def timed(samples: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    times = []
    for i in range(samples):
        start = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - start) * 1000)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(name: str, values: list[float]) -> None:
    print(f"{name}: n={len(values)} p50={pct(values, 0.5):.2f} ms p99={pct(values, 0.99):.2f} ms max={max(values):.2f} ms")


async def run(dsn: str, args: argparse.Namespace) -> None:
    rng = random.Random(7)
    refs, seconds = await load(dsn, args.events, rng)
    events = len(refs) * EVENTS_PER_RUN
    print(f"load: {events:,} events in {len(refs):,} runs, {len({r.thread_id for r in refs}):,} threads, COPY in {seconds:.1f} s")

    conn = await asyncpg.connect(dsn)
    try:
        report = await rebuild(conn)
        await conn.execute("VACUUM ANALYZE run_status, llm_calls, messages, usage_hourly")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM messages) AS messages, (SELECT count(*) FROM llm_calls) AS calls, (SELECT count(*) FROM run_status) AS runs,"
            " (SELECT count(*) FROM usage_hourly) AS hours"
        )
    finally:
        await conn.close()
    print(
        f"rebuild: {report.events:,} events ({report.folded:,} folded) in {report.seconds:.1f} s: "
        f"{report.events_per_second:,.0f} events/s -> {counts['messages']:,} messages, {counts['calls']:,} calls, {counts['runs']:,} runs, "
        f"{counts['hours']:,} rollup rows"
    )

    reader = await Ledger.connect(dsn, pool_size=2, tail=False)
    views = Projections(reader)
    threads = sorted({r.thread_id for r in refs})
    try:
        middles = {}
        for thread in rng.sample(threads, min(len(threads), 100)):
            page = await views.messages(thread, limit=50)
            middles[thread] = page.after

        async def page(i: int) -> None:
            if i % 2:
                thread = rng.choice(list(middles))
                await views.messages(thread, limit=50, after=middles[thread])
            else:
                await views.messages(rng.choice(threads), limit=50)

        pages = await timed(args.samples, page)
        usage = await timed(args.samples, lambda i: views.token_usage(thread_id=rng.choice(threads)))
        status = await timed(args.samples, lambda i: views.run_status(rng.choice(refs)))
        since = datetime.now(timezone.utc) - timedelta(days=30)
        by_model = await timed(5, lambda i: views.usage_by("model", since=since))
        grouped = await views.usage_by("model", since=since)
        end = next_hour(datetime.now(timezone.utc))
        query = UsageQuery(since=end - timedelta(days=30), until=end, bucket="day", group_by=("model",))
        prices = PriceBook()
        await usage_series(reader, query, prices)  # warm-up: genai-prices loads its data once per process
        series_times = await timed(20, lambda i: usage_series(reader, query, prices))
        daily = await usage_series(reader, query, prices)
        # The same from the calls, as a caller whose authorization filters threads is answered.
        from_calls = await timed(5, lambda i: usage_series(reader, query, prices, plan="calls"))
        # The runs list's page (GET /runs): 50 runs of every thread, newest first, with their calls, tokens and
        # cost; first pages and pages after a cursor half-way down the list.
        cursor = None
        for _ in range(len(refs) // 100):
            cursor = (await views.runs_page(limit=50, cursor=cursor)).next

        async def runs_page(i: int) -> None:
            page = await views.runs_page(limit=50, cursor=cursor if i % 2 else None)
            await views.run_costs([RunRef(r.status.thread_id, r.status.run_id) for r in page.runs], prices)

        runs_pages = await timed(args.samples, runs_page)
    finally:
        await reader.close()
    show("message page", pages)
    show("thread usage", usage)
    show("run status", status)
    show("usage by model, 30 days", by_model)
    print("  " + ", ".join(f"{model}: {t.calls:,} calls {t.tokens['total_tokens']:,} tokens" for model, t in grouped.items()))
    show(f"usage and cost by day and model, 30 days ({daily.plan})", series_times)
    cost = sum(row.cost for row in daily.rows)
    unpriced = sum(row.unpriced["calls"] for row in daily.rows)
    sources = sorted({s for row in daily.rows for s in row.cost_sources})
    print(f"  {len(daily.rows)} rows, ${cost:,.2f} priced by {', '.join(sources) or 'nothing'}, {unpriced:,} calls unpriced")
    show("the same from the calls (calls)", from_calls)
    show(f"runs list page of 50 with cost, of {len(refs):,} runs (first pages and half-way down)", runs_pages)
    print(
        f"reads: events={events} page_p99_ms={pct(pages, 0.99):.2f} usage_p99_ms={pct(usage, 0.99):.2f} "
        f"by_model_ms={statistics.median(by_model):.1f} series_ms={statistics.median(series_times):.1f} "
        f"runs_page_ms={pct(runs_pages, 0.99):.1f} rebuild_eps={report.events_per_second:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="events to load (whole runs of 200)")
    parser.add_argument("--samples", type=int, default=1000, help="samples per latency measurement")
    args = parser.parse_args()
    if args.events < EVENTS_PER_RUN or args.samples < 1:
        parser.error(f"--events must be at least {EVENTS_PER_RUN} and --samples at least 1")
    run_on_database(lambda dsn: run(dsn, args))


if __name__ == "__main__":
    main()
