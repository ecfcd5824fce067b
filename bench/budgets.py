"""The cost of budgets at admission.

    python bench/budgets.py [--admissions 500] [--history 0,1000,10000] [--concurrency 8]

Admits ``--admissions`` runs one after another (``lifecycle.admit``, as the
HTTP API does, without workers) on the same database, first with no budget
defined, then under one per-identity budget whose key already has
``--history`` runs charged to it, each with one LLM call inside the window
(30 days); again with that history 40 days old (outside the window); then ``--admissions`` more from ``--concurrency`` concurrent tasks, all under
that one key (serialised by its lock) and each under a key of its own.
Ends with one line per configuration: ``budgets: case=.. admit_ms_median=..
admit_ms_p99=.. admissions_per_s=..``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._database import run_on_database  # noqa: E402
from graphledger import projections  # noqa: E402
from graphledger.ledger import Ledger, NewEvent  # noqa: E402
from graphledger.runs import RunRequest, admit, budget_use, cancel  # noqa: E402
from graphledger.runs.budgets import Budget  # noqa: E402

LIMIT = 10**15  # never reached: the benchmark measures the check, not refusals


def request(identity: str) -> RunRequest:
    found = RunRequest.parse({"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "hi"}]}})
    found.set_actor({"identity": identity, "permissions": []})
    return found


async def history(ledger: Ledger, identity: str, runs: int, *, age: timedelta = timedelta(0)) -> None:
    """``runs`` ended runs of ``identity``, each with one call ``age`` ago (and ended then)."""
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    for _ in range(runs):
        admitted = await admit(ledger, request(identity))
        async with ledger.transaction() as tx:
            call = NewEvent.of("llm.usage", {"call_id": "c", "model": "m", "usage": usage})
            await tx.append(admitted.ref, [call], ts=datetime.now(timezone.utc) - age)
        await cancel(ledger, admitted.ref)
    if age:
        # Synthetic: the runs ended then too, as their head rows and their marks say (a benchmark cannot wait 40 days).
        async with ledger.session() as session:
            await session.connection.execute(
                "UPDATE runs r SET updated_at = now() - $2::interval FROM budget_runs b "
                "WHERE b.key = $1 AND r.thread_id = b.thread_id AND r.run_id = b.run_id",
                identity, age,
            )
            await session.connection.execute(
                "UPDATE budget_runs SET ended_at = now() - $2::interval WHERE key = $1 AND ended_at IS NOT NULL", identity, age
            )


def report(case: str, timings: list[float], elapsed: float) -> None:
    ordered = sorted(timings)
    median = statistics.median(ordered) * 1e3
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
    print(f"budgets: case={case} admit_ms_median={median:.2f} admit_ms_p99={p99:.2f} admissions_per_s={len(timings) / elapsed:.0f}", flush=True)


async def sequential(ledger: Ledger, identity: str, count: int) -> tuple[list[float], float]:
    timings = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await admit(ledger, request(identity))
        timings.append(time.perf_counter() - t0)
    return timings, time.perf_counter() - started


async def concurrent(ledger: Ledger, identities: list[str], count: int, concurrency: int) -> tuple[list[float], float]:
    timings: list[float] = []
    left = [count]

    async def worker(n: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            await admit(ledger, request(identities[n % len(identities)]))
            timings.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return timings, time.perf_counter() - started


async def main(dsn: str, args: argparse.Namespace) -> None:
    async with await projections.connect(dsn, pool_size=args.concurrency + 2) as ledger:
        report("no-budget", *await sequential(ledger, "nobody", args.admissions))
        await budget_use.put(ledger, [Budget.parse("per-user", {"per": "identity", "limit": LIMIT, "window": "30d"})], by="bench")
        for size in args.history:
            await history(ledger, f"user-{size}", size)
            report(f"one-budget-history-{size}", *await sequential(ledger, f"user-{size}", args.admissions))
        for size in args.history:
            if size:
                await history(ledger, f"old-{size}", size, age=timedelta(days=40))
                report(f"one-budget-old-history-{size}", *await sequential(ledger, f"old-{size}", args.admissions))
        busiest = f"user-{max(args.history)}"
        report(f"concurrent-{args.concurrency}-one-key", *await concurrent(ledger, [busiest], args.admissions, args.concurrency))
        own = [f"key-{uuid4()}" for _ in range(args.concurrency)]
        report(f"concurrent-{args.concurrency}-own-keys", *await concurrent(ledger, own, args.admissions, args.concurrency))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admissions", type=int, default=500)
    parser.add_argument("--history", type=lambda text: [int(n) for n in text.split(",")], default=[0, 1000, 10000])
    parser.add_argument("--concurrency", type=int, default=8)
    arguments = parser.parse_args()
    run_on_database(lambda dsn: main(dsn, arguments))
