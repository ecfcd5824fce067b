"""Many clients creating and streaming runs at once against one server process.

    python bench/load.py [--clients 200] [--workers N] [--rounds 3] [--processes 4]

Uses DATABASE_URL when set, else a fresh embedded PostgreSQL (default, durable
settings), removed afterwards. Starts one ``graphledger serve`` process on
127.0.0.1 (its default workers, or ``--workers``). Each round, ``--clients``
simulated clients, each with a thread of its own (created before the round)
and its own httpx client with its connection already open, send
``POST /threads/{t}/runs/stream`` for the bundled ``demo`` graph at the same
moment and read the stream to its end. The clients are spread over
``--processes`` load-generator processes, so that the generator is not the
bottleneck; each such process measures how late its event loop wakes up
(``loop lag``), which is what a saturated generator would add to the times.

Per client: first event (sending the request to receiving the first SSE
event, which must be ``metadata``) and done (to the end of the stream). An
error is a non-200, an exception, a stream whose first event is not
``metadata``, whose ids do not increase, that carries an ``error`` event or no
``values`` event, or whose run is not ``success`` afterwards (checked with
``GET`` after the round, untimed).

Ends with one summary line over all rounds:
``load: clients=.. first_event_p50_ms=.. first_event_p99_ms=.. done_p99_s=.. errors=..``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _database import run_on_database  # noqa: E402
from sse import cpu_seconds, percentile, serve  # noqa: E402

QUESTION = {"messages": [{"role": "user", "content": "count these words please"}]}
BODY = {"assistant_id": "demo", "input": QUESTION, "stream_mode": ["values", "messages-tuple"]}
LAG_TICK = 0.005


@dataclass(slots=True)
class Outcome:
    """What one client saw."""

    thread_id: str
    run_id: str | None = None
    sent_at: float = 0.0  # wall clock
    first_event_s: float | None = None
    done_s: float | None = None
    error: str | None = None


@dataclass(slots=True)
class Report:
    """What one load-generator process saw in one round."""

    outcomes: list[Outcome] = field(default_factory=list)
    lag_max_ms: float = 0.0
    lag_p99_ms: float = 0.0
    cpu_s: float = 0.0


async def one_client(http: httpx.AsyncClient, thread_id: str) -> Outcome:
    out = Outcome(thread_id)
    sent = time.perf_counter()
    out.sent_at = time.time()
    try:
        async with http.stream("POST", f"/threads/{thread_id}/runs/stream", json=BODY) as response:
            if response.status_code != 200:
                await response.aread()
                out.error = f"status {response.status_code}: {response.text[:200]}"
                return out
            name, last_id, values = None, 0, 0
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                    if out.first_event_s is None:
                        out.first_event_s = time.perf_counter() - sent
                        if name != "metadata":
                            out.error = f"first event {name!r}, not metadata"
                    elif name == "error":
                        out.error = "error event"
                    elif name == "values":
                        values += 1
                elif line.startswith("data: ") and name == "metadata" and out.run_id is None:
                    out.run_id = line[6:].split('"run_id":"', 1)[1].split('"', 1)[0]
                elif line.startswith("id: "):
                    seq = int(line[4:])
                    if seq <= last_id and out.error is None:
                        out.error = f"id {seq} after {last_id}"
                    last_id = seq
            out.done_s = time.perf_counter() - sent
            if out.error is None and (out.first_event_s is None or not values):
                out.error = "stream ended without its events"
    except Exception as exc:  # every failure is counted, none stops the round
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def generate(port: int, thread_ids: list[str], barrier: Any) -> Report:
    """One load-generator process: one httpx client per thread, all sent once every process passed ``barrier``."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) for _ in thread_ids]
    report = Report()
    try:
        await asyncio.gather(*(c.get("/ok") for c in clients))  # connections open before the clock starts
        lags: list[float] = []
        running = True

        async def measure_lag() -> None:
            while running:
                before = time.perf_counter()
                await asyncio.sleep(LAG_TICK)
                lags.append(time.perf_counter() - before - LAG_TICK)

        barrier.wait()  # blocks the loop, which has nothing else to do yet
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        ticker = asyncio.create_task(measure_lag())
        report.outcomes = list(await asyncio.gather(*(one_client(c, t) for c, t in zip(clients, thread_ids))))
        running = False
        await ticker
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        report.cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
        report.lag_max_ms = max(lags, default=0.0) * 1000
        report.lag_p99_ms = percentile(lags, 0.99) * 1000
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return report


def generator_process(port: int, thread_ids: list[str], barrier: Any) -> Report:
    return asyncio.run(generate(port, thread_ids, barrier))


async def check_runs(port: int, outcomes: list[Outcome]) -> None:
    """After the round: a client whose stream looked complete still counts as an error unless its run succeeded."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for out in outcomes:
            if out.error is None and out.run_id is not None:
                run = (await http.get(f"/threads/{out.thread_id}/runs/{out.run_id}")).json()
                if run.get("status") != "success":
                    out.error = f"run ended {run.get('status')}"


async def run(dsn: str, args: argparse.Namespace) -> None:
    flags = [] if args.workers is None else ["--workers", str(args.workers)]
    spawn = multiprocessing.get_context("spawn")
    all_outcomes: list[Outcome] = []
    with serve(dsn, *flags) as (port, server):
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            # One run alone first: what a client sees on an idle server (also warms the graph up).
            thread_id = (await http.post("/threads", json={})).json()["thread_id"]
            alone = await one_client(http, thread_id)
            print(f"alone:  one client: first event {alone.first_event_s * 1000:.1f} ms, done {alone.done_s:.3f} s, error {alone.error}", flush=True)
            with spawn.Pool(args.processes) as pool, spawn.Manager() as manager:
                # Each round's tasks wait at a barrier, so they run in as many distinct processes.
                barrier = manager.Barrier(args.processes + 1)
                for n in range(1, args.rounds + 1):
                    threads = [(await http.post("/threads", json={})).json()["thread_id"] for _ in range(args.clients)]
                    shares = [threads[i :: args.processes] for i in range(args.processes)]
                    pending = [pool.apply_async(generator_process, (port, share, barrier)) for share in shares]
                    await loop.run_in_executor(None, barrier.wait, 120)  # every generator has its connections open
                    cpu_before = cpu_seconds(server.pid)
                    reports: list[Report] = [await loop.run_in_executor(None, p.get, 600) for p in pending]
                    server_cpu = cpu_seconds(server.pid) - cpu_before
                    outcomes = [o for r in reports for o in r.outcomes]
                    await check_runs(port, outcomes)
                    all_outcomes += outcomes
                    firsts = [o.first_event_s for o in outcomes if o.first_event_s is not None]
                    dones = [o.done_s for o in outcomes if o.done_s is not None]
                    errors = [o.error for o in outcomes if o.error is not None]
                    spread = (max(o.sent_at for o in outcomes) - min(o.sent_at for o in outcomes)) * 1000
                    print(
                        f"round {n}: {len(outcomes)} clients: first event p50 {percentile(firsts, 0.5) * 1000:.0f} ms, "
                        f"p99 {percentile(firsts, 0.99) * 1000:.0f} ms, max {max(firsts, default=0) * 1000:.0f} ms; "
                        f"done p50 {percentile(dones, 0.5):.2f} s, p99 {percentile(dones, 0.99):.2f} s; errors {len(errors)}; "
                        f"server CPU {server_cpu:.1f} s; "
                        f"generators ({args.processes}): requests sent within {spread:.0f} ms, CPU {sum(r.cpu_s for r in reports):.1f} s, "
                        f"loop lag p99 {max(r.lag_p99_ms for r in reports):.1f} ms, max {max(r.lag_max_ms for r in reports):.1f} ms",
                        flush=True,
                    )
                    for error in sorted(set(errors))[:5]:
                        print(f"  error: {error}", flush=True)
    firsts = [o.first_event_s for o in all_outcomes if o.first_event_s is not None]
    dones = [o.done_s for o in all_outcomes if o.done_s is not None]
    errors = sum(1 for o in all_outcomes if o.error is not None)
    if args.rounds > 1:
        per_round = [statistics.median(firsts[i : i + args.clients]) * 1000 for i in range(0, len(firsts), args.clients)]
        print(f"all rounds: {len(all_outcomes)} streams; first event p50 per round (ms): {', '.join(f'{v:.0f}' for v in per_round)}")
    print(
        f"load: clients={args.clients} first_event_p50_ms={percentile(firsts, 0.5) * 1000:.0f} "
        f"first_event_p99_ms={percentile(firsts, 0.99) * 1000:.0f} done_p99_s={percentile(dones, 0.99):.2f} errors={errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200, help="clients streaming a run at once")
    parser.add_argument("--workers", type=int, default=None, help="passed to serve (default: serve's own default)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --clients streams each")
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes")
    args = parser.parse_args()
    args.processes = max(1, min(args.processes, args.clients))
    run_on_database(lambda dsn: run(dsn, args))


if __name__ == "__main__":
    main()
