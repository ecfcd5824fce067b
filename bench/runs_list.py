"""The runs list across threads (``GET /runs``) at 50,000 runs, over real HTTP and under an authorization filter.

    python bench/runs_list.py [--threads 5000] [--runs-per-thread 10] [--samples 200]

Loads ``--threads`` threads (metadata ``{"owner": "u<n % 100>"}``), each with
``--runs-per-thread`` runs in the run status projection (one in a hundred
failed) and two LLM calls per run (inserted directly: this measures reads).
The app is served by uvicorn on 127.0.0.1 in this process and driven with
httpx; each request is timed, ``--samples`` times:

1. first: ``GET /runs?limit=50``, the newest page;
2. deep: a page of 50 after the cursor of a run about half-way down the list
   (the cursors of the whole walk are collected first, untimed);
3. status: ``GET /runs?status=error&limit=50`` (1% of the runs);
4. thread: ``GET /runs?thread_id=...`` for random threads;
5. owner: the first page as one owner sees it (an authorization filter
   ``{"owner": "u7"}``: 1% of the threads), read through
   :meth:`Projections.runs_page` with the filter the HTTP layer would pass.

Ends with one summary line:
``runs_list: runs=.. first_p99_ms=.. deep_p99_ms=.. status_p99_ms=.. thread_p99_ms=.. owner_p99_ms=..``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402

from graphledger import projections  # noqa: E402
from graphledger.http.app import create_app  # noqa: E402
from graphledger.ledger.threads import Visibility  # noqa: E402
from graphledger.projections import Projections  # noqa: E402
from graphledger.runs import RunSettings  # noqa: E402
from tests.http.conftest import serve  # noqa: E402

LOAD_THREADS_SQL = """
INSERT INTO threads (thread_id, metadata, created_at, updated_at)
SELECT gen_random_uuid(), jsonb_build_object('owner', 'u' || (i % 100)), now(), now()
FROM generate_series(1, $1) i
"""
LOAD_STATUS_SQL = """
INSERT INTO run_status (thread_id, run_id, status, status_seq, assistant_id, created_at, started_at, finished_at, attempt)
SELECT t.thread_id, gen_random_uuid(), CASE WHEN random() < 0.01 THEN 'error' ELSE 'success' END, 4, 'demo',
       now() - (random() * interval '30 days'), now(), now(), 1
FROM threads t, generate_series(1, $1) j
"""
LOAD_CALLS_SQL = """
INSERT INTO llm_calls (thread_id, run_id, call_id, seq, ts, model, caller, usage_known, input_tokens, output_tokens, total_tokens)
SELECT s.thread_id, s.run_id, 'c' || k, 2 + k, s.created_at, 'model-a', 'agent', true, 100, 20, 120
FROM run_status s, generate_series(1, 2) k
"""


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(samples: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    found = []
    for i in range(samples):
        start = time.perf_counter()
        response = await call(i)
        found.append((time.perf_counter() - start) * 1000)
        if isinstance(response, httpx.Response):
            response.raise_for_status()
    return found


def report(name: str, samples: list[float]) -> float:
    print(f"{name:7} n={len(samples)} p50={statistics.median(samples):.2f} ms p99={p(samples, 0.99):.2f} ms max={max(samples):.2f} ms", flush=True)
    return p(samples, 0.99)


async def main(dsn: str, threads: int, per_thread: int, samples: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        start = time.perf_counter()
        await conn.execute(LOAD_THREADS_SQL, threads)
        await conn.execute(LOAD_STATUS_SQL, per_thread)
        await conn.execute(LOAD_CALLS_SQL)
        await conn.execute("ANALYZE threads; ANALYZE run_status; ANALYZE llm_calls")
        total = await conn.fetchval("SELECT count(*) FROM run_status")
        thread_ids = [r["thread_id"] for r in await conn.fetch("SELECT thread_id FROM threads")]
        print(f"load: {total} runs on {threads} threads, {2 * total} LLM calls, in {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        await conn.close()

    app = create_app(dsn, settings=RunSettings(workers=0))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        cursors: list[str] = []
        cursor = None
        while True:
            page = (await http.get("/runs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})).json()
            cursor = page["next"]
            if cursor is None:
                break
            cursors.append(cursor)
        middle = cursors[len(cursors) // 2]
        print(f"walk: {len(cursors) + 1} pages of 1000 cover the list", flush=True)
        first = await timed(samples, lambda i: http.get("/runs", params={"limit": 50}))
        deep = await timed(samples, lambda i: http.get("/runs", params={"limit": 50, "cursor": middle}))
        status = await timed(samples, lambda i: http.get("/runs", params={"limit": 50, "status": "error"}))
        thread = await timed(samples, lambda i: http.get("/runs", params={"thread_id": str(random.choice(thread_ids))}))

    ledger = await projections.connect(dsn)
    try:
        reads = Projections(ledger)
        visible = Visibility.of({"owner": "u7"})
        owner = await timed(samples, lambda i: reads.runs_page(limit=50, visible=visible))
        seen = (await reads.runs_page(limit=50, visible=visible)).runs
        assert len(seen) == 50
    finally:
        await ledger.close()

    results = [report(name, found) for name, found in (("first", first), ("deep", deep), ("status", status), ("thread", thread), ("owner", owner))]
    print(
        f"runs_list: runs={total} first_p99_ms={results[0]:.2f} deep_p99_ms={results[1]:.2f} "
        f"status_p99_ms={results[2]:.2f} thread_p99_ms={results[3]:.2f} owner_p99_ms={results[4]:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=5000)
    parser.add_argument("--runs-per-thread", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    run_on_database(lambda dsn: main(dsn, args.threads, args.runs_per_thread, args.samples))
