"""The thread endpoints a chat front end calls first, over real HTTP on one database.

    python bench/api.py [--threads 20000] [--runs 10] [--samples 300]

Loads ``--threads`` threads (metadata ``{"user": "u<n % 1000>", "n": n}``),
each with one finished run in the run status projection (inserted directly:
this measures reads), then executes ``--runs`` runs of the demo graph on one
more thread, so that its history holds more than 50 checkpoints. The app is
served by uvicorn on 127.0.0.1 in this process and driven with httpx; each
request is timed, ``--samples`` times:

1. search: ``POST /threads/search`` by one ``user`` metadata value (about
   ``threads / 1000`` matches), a page of 10, newest first, without state fields;
2. history: ``GET /threads/{id}/history?limit=50``;
3. state: ``GET /threads/{id}/state``.

Ends with one summary line:
``api: threads=.. search_p99_ms=.. history_p99_ms=.. state_p99_ms=..``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402

from graphledger.http.app import create_app  # noqa: E402
from graphledger.runs import GraphRegistry, RunSettings, checkpoint, demo  # noqa: E402
from tests.http.conftest import serve  # noqa: E402

LOAD_THREADS_SQL = """
INSERT INTO threads (thread_id, metadata, created_at, updated_at)
SELECT gen_random_uuid(), jsonb_build_object('user', 'u' || (i % 1000), 'n', i),
       now() - i * interval '1 second', now() - i * interval '1 second'
FROM generate_series(1, $1) i
"""
LOAD_STATUS_SQL = """
INSERT INTO run_status (thread_id, run_id, status, status_seq, assistant_id, created_at, started_at, finished_at, attempt)
SELECT thread_id, gen_random_uuid(), 'success', 4, 'demo', created_at, created_at, created_at + interval '1 second', 1
FROM threads WHERE metadata ? 'n'
"""


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(samples: int, call: Callable[[int], Awaitable[httpx.Response]]) -> list[float]:
    found = []
    for i in range(samples):
        start = time.perf_counter()
        response = await call(i)
        found.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return found


async def main(dsn: str, threads: int, runs: int, samples: int) -> None:
    await checkpoint.setup(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        start = time.perf_counter()
        await conn.execute(LOAD_THREADS_SQL, threads)
        await conn.execute(LOAD_STATUS_SQL)
        await conn.execute("ANALYZE threads; ANALYZE run_status")
        print(f"load: {threads} threads with one run each in {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        await conn.close()
    app = create_app(dsn, graphs=GraphRegistry({"demo": demo.graph}), settings=RunSettings(workers=2, poll_interval=0.2))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        thread_id = (await http.post("/threads", json={"metadata": {"bench": "history"}})).json()["thread_id"]
        body = {"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "count these words"}]}}
        for _ in range(runs):
            (await http.post(f"/threads/{thread_id}/runs/wait", json=body)).raise_for_status()
        depth = len((await http.get(f"/threads/{thread_id}/history", params={"limit": 1000})).json())
        print(f"history thread: {runs} runs, {depth} checkpoints", flush=True)
        rng = random.Random(7)
        search = await timed(samples, lambda i: http.post("/threads/search", json={
            "metadata": {"user": f"u{rng.randrange(1000)}"}, "limit": 10, "select": ["thread_id", "status", "updated_at", "metadata"]}))
        history = await timed(samples, lambda i: http.get(f"/threads/{thread_id}/history", params={"limit": 50}))
        state = await timed(samples, lambda i: http.get(f"/threads/{thread_id}/state"))
    for name, found in (("search", search), ("history", history), ("state", state)):
        print(f"{name}: p50 {statistics.median(found):.2f} ms, p99 {p(found, 0.99):.2f} ms", flush=True)
    print(
        f"api: threads={threads} search_p99_ms={p(search, 0.99):.2f} history_p99_ms={p(history, 0.99):.2f} "
        f"state_p99_ms={p(state, 0.99):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    run_on_database(lambda dsn: main(dsn, args.threads, args.runs, args.samples))
