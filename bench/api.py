"""The thread endpoints a chat front end calls first, over real HTTP on one database.

    python bench/api.py [--threads 100000] [--checkpoints 1000000] [--runs 10] [--samples 300] [--cold 100] [--profile]

Loads ``--threads`` threads (metadata ``{"user": "u<n % 1000>", "n": n}``),
each with one finished run of the demo graph in the run status projection
(its head and its status, inserted directly: this measures reads). Then executes ``--runs`` runs of the
demo graph on one more thread over HTTP (``--runs 10``: 60 checkpoints), and
copies that thread's checkpoints, blobs and writes, in SQL (``INSERT ...
SELECT`` over the loaded threads, a few thousand threads per statement), to
as many of the loaded threads as make ``--checkpoints`` checkpoints in all.
Every copy is a complete, readable thread state.

The app is served by uvicorn on 127.0.0.1 in this process (the server
``graphledger serve`` runs) and driven with httpx; each request is timed,
``--samples`` times, each on a thread drawn at random:

1. search: ``POST /threads/search`` by one ``user`` metadata value (about
   ``threads / 1000`` matches), a page of 10, newest first, without state
   fields (its plan is printed first: it should use ``threads_metadata_idx``);
2. history: ``POST /threads/{id}/history`` with ``limit`` 50, on a thread
   holding a copy;
3. state: ``GET /threads/{id}/state``, on a thread holding a copy.

Both are served from snapshot documents (``graphledger/runs/snapshots.py``):
the worker renders the template thread's documents when each of its runs
ends, as in production, and they are copied with the checkpoints (their
checkpoint objects naming the copy's thread, their version the copied
rows'). Before timing, one copied thread's history and state are checked to
be byte for byte what LangGraph renders live. Then ``--cold`` threads have
their documents deleted and are read twice: the first read renders and
stores them (LangGraph's path), the second is served from them.

With ``--profile`` the history and state requests are also run under
cProfile (client and server share this process) and the top functions are
printed. Ends with one summary line:
``api: threads=.. checkpoints=.. search_p99_ms=.. history_p99_ms=.. state_p99_ms=..``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import pstats
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402

from graphledger.http.app import create_app  # noqa: E402
from graphledger.projections.read import SEARCH_THREADS_SQL  # noqa: E402
from graphledger.runs import GraphRegistry, RunSettings, checkpoint, demo, snapshots, store  # noqa: E402
from graphledger.runs.state import ThreadState  # noqa: E402
from tests.http.conftest import serve  # noqa: E402

LOAD_THREADS_SQL = """
INSERT INTO threads (thread_id, metadata, created_at, updated_at)
SELECT gen_random_uuid(), jsonb_build_object('user', 'u' || (i % 1000), 'n', i),
       now() - i * interval '1 second', now() - i * interval '1 second'
FROM generate_series(1, $1) i
"""
# One finished demo run per loaded thread: its head (which names the thread's graph) and its status.
LOAD_RUNS_SQL = """
INSERT INTO runs (thread_id, run_id, assistant_id, status, last_seq, last_kind, created_at, updated_at)
SELECT thread_id, gen_random_uuid(), 'demo', 'success', 4, 'run.succeeded', created_at, created_at + interval '1 second'
FROM threads WHERE metadata ? 'n'
"""
LOAD_STATUS_SQL = """
INSERT INTO run_status (thread_id, run_id, status, status_seq, assistant_id, created_at, started_at, finished_at, attempt)
SELECT r.thread_id, r.run_id, 'success', 4, 'demo', r.created_at, r.created_at, r.updated_at, 1
FROM runs r JOIN threads t USING (thread_id) WHERE t.metadata ? 'n'
"""
# The threads that get a copy of the template's state: those loaded with n in [$1, $2).
COPY_TARGETS = "SELECT thread_id::text AS id FROM threads WHERE metadata ? 'n' AND (metadata ->> 'n')::int >= $1 AND (metadata ->> 'n')::int < $2"
COPY_SQL = [
    f"""
INSERT INTO langgraph.checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
SELECT t.id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type, c.checkpoint, c.metadata
FROM langgraph.checkpoints c, ({COPY_TARGETS}) t WHERE c.thread_id = $3
""",
    f"""
INSERT INTO langgraph.checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT t.id, b.checkpoint_ns, b.channel, b.version, b.type, b.blob
FROM langgraph.checkpoint_blobs b, ({COPY_TARGETS}) t WHERE b.thread_id = $3
""",
    f"""
INSERT INTO langgraph.checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path)
SELECT t.id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel, w.type, w.blob, w.task_path
FROM langgraph.checkpoint_writes w, ({COPY_TARGETS}) t WHERE w.thread_id = $3
""",
]
# The template's snapshot documents (rendered by the worker when each of its runs ended, as in
# production), copied after the checkpoints and writes in the same transaction: the checkpoint
# objects in them name the copy's thread, and their version is the copied rows' (see
# graphledger/runs/snapshots.py), so they are served as they would be for a thread that ran.
COPY_DOCUMENTS_SQL = f"""
INSERT INTO thread_snapshots (thread_id, checkpoint_ns, checkpoint_id, graph, version, history, latest)
SELECT t.id, s.checkpoint_ns, s.checkpoint_id, s.graph, {snapshots.VERSION_SQL},
       replace(s.history, '{{"thread_id":"' || $3 || '","checkpoint_ns"', '{{"thread_id":"' || t.id || '","checkpoint_ns"'),
       replace(s.latest, '{{"thread_id":"' || $3 || '","checkpoint_ns"', '{{"thread_id":"' || t.id || '","checkpoint_ns"')
FROM thread_snapshots s, ({COPY_TARGETS}) t, langgraph.checkpoints c
WHERE s.thread_id = $3 AND c.thread_id = t.id AND c.checkpoint_ns = s.checkpoint_ns AND c.checkpoint_id = s.checkpoint_id
"""
COPY_BATCH = 2000
"""Threads per copy statement."""


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


async def load_threads(conn: asyncpg.Connection, threads: int) -> None:
    start = time.perf_counter()
    await conn.execute(LOAD_THREADS_SQL, threads)
    await conn.execute(LOAD_RUNS_SQL)
    await conn.execute(LOAD_STATUS_SQL)
    await conn.execute("ANALYZE threads; ANALYZE runs; ANALYZE run_status")
    print(f"load: {threads} threads with one run each in {time.perf_counter() - start:.1f} s", flush=True)


async def copy_state(conn: asyncpg.Connection, template: str, copies: int) -> int:
    """Copy the template thread's checkpoints to ``copies`` loaded threads; the number of checkpoints in all."""
    start = time.perf_counter()
    for low in range(1, copies + 1, COPY_BATCH):
        high = min(low + COPY_BATCH, copies + 1)
        async with conn.transaction():
            for sql in [*COPY_SQL, COPY_DOCUMENTS_SQL]:
                await conn.execute(sql, low, high, template)
        print(f"  copied to {high - 1} threads, {time.perf_counter() - start:.0f} s", flush=True)
    await conn.execute(
        "ANALYZE langgraph.checkpoints; ANALYZE langgraph.checkpoint_blobs; ANALYZE langgraph.checkpoint_writes; ANALYZE thread_snapshots"
    )
    total: int = await conn.fetchval("SELECT count(*) FROM langgraph.checkpoints")
    size = await conn.fetchval(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'langgraph' AND c.relkind = 'r'"
    )
    documents = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('thread_snapshots'))")
    print(
        f"copy: {total} checkpoints on {copies + 1} threads ({size} with blobs and writes; snapshot documents {documents}) "
        f"in {time.perf_counter() - start:.1f} s", flush=True,
    )
    return total


async def rendered(conn: asyncpg.Connection, thread_id: str, depth: int) -> None:
    """Wait for the worker to render the documents of the thread's runs (in the background, after each run ends)."""
    start = time.perf_counter()
    while time.perf_counter() - start < 120:
        found = await conn.fetchrow(
            "SELECT count(history) AS history, count(latest) AS latest FROM thread_snapshots WHERE thread_id = $1", thread_id
        )
        if found["history"] == depth and found["latest"] >= 1:
            print(f"template thread: {depth} snapshot documents rendered by the worker", flush=True)
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the worker did not render the template thread's snapshot documents: {dict(found)}")


async def same_as_live(app: Any, http: httpx.AsyncClient, thread_id: str) -> None:
    """A copied thread's history and state, served from its documents, are what LangGraph renders live."""
    live = ThreadState(app.state.ledger, app.state.graphs, app.state.runtime.checkpointer)
    served = await http.post(f"/threads/{thread_id}/history", json={"limit": 50})
    assert served.content == snapshots.dumps(await live.history(UUID(thread_id), limit=50)).encode(), "history differs from LangGraph's"
    served = await http.get(f"/threads/{thread_id}/state")
    assert served.content == snapshots.dumps(await live.get(UUID(thread_id))).encode(), "state differs from LangGraph's"


async def explain_search(conn: asyncpg.Connection) -> None:
    """The plan of a search by metadata as the server may run it: the generic plan of the prepared statement."""
    sql = SEARCH_THREADS_SQL[("created_at", True, True)]
    await conn.execute(f"PREPARE bench_search (jsonb, uuid[], text, bigint, bigint, jsonb, jsonb) AS {sql}")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    rows = await conn.fetch("""EXPLAIN (ANALYZE, COSTS OFF) EXECUTE bench_search('{"user": "u7"}', NULL, NULL, 10, 0, NULL, NULL)""")
    await conn.execute("RESET plan_cache_mode; DEALLOCATE bench_search")
    print("search plan (generic):", flush=True)
    for row in rows:
        print("  " + row[0], flush=True)


async def main(dsn: str, threads: int, checkpoints: int, runs: int, samples: int, cold: int, profile: bool) -> None:
    await checkpoint.setup(dsn)
    await store.setup(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await load_threads(conn, threads)
        app = create_app(dsn, graphs=GraphRegistry({"demo": demo.graph}), settings=RunSettings(workers=2, poll_interval=0.2))
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            template = (await http.post("/threads", json={"metadata": {"bench": "template"}})).json()["thread_id"]
            body = {"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "count these words"}]}}
            for _ in range(runs):
                (await http.post(f"/threads/{template}/runs/wait", json=body)).raise_for_status()
            depth = await conn.fetchval("SELECT count(*) FROM langgraph.checkpoints WHERE thread_id = $1", template)
            await rendered(conn, template, depth)
            copies = min(threads, math.ceil(max(0, checkpoints - depth) / depth))
            print(f"template thread: {runs} runs, {depth} checkpoints; copying to {copies} threads", flush=True)
            total = await copy_state(conn, template, copies)
            await explain_search(conn)
            ids = [row["id"] for row in await conn.fetch(COPY_TARGETS, 1, copies + 1)]

            rng = random.Random(7)
            search = await timed(samples, lambda i: http.post("/threads/search", json={
                "metadata": {"user": f"u{rng.randrange(1000)}"}, "limit": 10, "select": ["thread_id", "status", "updated_at", "metadata"]}))
            found = (await http.post("/threads/search", json={"metadata": {"user": "u7"}, "limit": 10})).json()
            assert len(found) == min(10, threads // 1000) and all(t["metadata"]["user"] == "u7" for t in found), found
            page = (await http.post(f"/threads/{ids[0]}/history", json={"limit": 50})).json()
            assert len(page) == min(50, depth), len(page)
            await same_as_live(app, http, ids[-1])

            async def history(i: int) -> httpx.Response:
                return await http.post(f"/threads/{rng.choice(ids)}/history", json={"limit": 50})

            async def state(i: int) -> httpx.Response:
                return await http.get(f"/threads/{rng.choice(ids)}/state")

            profiler = cProfile.Profile() if profile else None
            if profiler is not None:
                profiler.enable()
            history_ms = await timed(samples, history)
            state_ms = await timed(samples, state)
            if profiler is not None:
                profiler.disable()

            # Missing documents (never rendered, or dropped by `graphledger rebuild --snapshots`): the first
            # read renders them live and stores them, the second is served from them.
            cold_ids = rng.sample(ids, min(cold, len(ids)))
            await conn.execute("DELETE FROM thread_snapshots WHERE thread_id = ANY($1::text[])", cold_ids)
            cold_history = await timed(len(cold_ids), lambda i: http.post(f"/threads/{cold_ids[i]}/history", json={"limit": 50}))
            second_history = await timed(len(cold_ids), lambda i: http.post(f"/threads/{cold_ids[i]}/history", json={"limit": 50}))
            cold_state = await timed(len(cold_ids), lambda i: http.get(f"/threads/{cold_ids[i]}/state"))
            second_state = await timed(len(cold_ids), lambda i: http.get(f"/threads/{cold_ids[i]}/state"))
    finally:
        await conn.close()
    for name, found_ms in (
        ("search", search), ("history", history_ms), ("state", state_ms), ("history, documents missing (renders)", cold_history),
        ("history, the read after", second_history), ("state, document missing (renders)", cold_state), ("state, the read after", second_state),
    ):
        print(f"{name}: p50 {statistics.median(found_ms):.2f} ms, p99 {p(found_ms, 0.99):.2f} ms, max {max(found_ms):.2f} ms", flush=True)
    if profiler is not None:
        print("profile of the history and state requests (client and server, this process), by own time:")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    print(
        f"api: threads={threads} checkpoints={total} search_p99_ms={p(search, 0.99):.2f} history_p99_ms={p(history_ms, 0.99):.2f} "
        f"state_p99_ms={p(state_ms, 0.99):.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=100_000)
    parser.add_argument("--checkpoints", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--cold", type=int, default=100, help="threads whose documents are deleted, then read twice")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    run_on_database(lambda dsn: main(dsn, args.threads, args.checkpoints, args.runs, args.samples, args.cold, args.profile))
