"""Append throughput against raw COPY, and append-to-subscriber latency, on one database.

    python bench/append.py [--runs 100] [--chunks 1000] [--rate 2000] [--seconds 10] [--rounds 3]

Uses DATABASE_URL when set, else a fresh embedded PostgreSQL with its default,
durable settings (fsync and synchronous_commit on), removed afterwards. Three
measurements, in this order, on the same database:

1. copy:    raw asyncpg COPY of the same rows the writer produces (the ceiling);
            building the rows (JSON, hashes) is not timed.
2. writer:  ``--runs`` concurrent runs, each streaming ``--chunks`` 200-byte chunks
            through the group-commit writer of a ledger opened as the server
            opens it (``projections.connect``: the projector looks at every
            flush); events/s from first submit to last commit, encoding and
            hashing included. 1 and 2 alternate for
            ``--rounds`` rounds; the medians are compared. The process is
            settled for load first, as ``serve`` settles its own
            (:func:`graphledger.process.settle`).
3. latency: ``--rate`` events/s spread over 20 runs for ``--seconds``; the time from
            ``submit()`` to a subscriber receiving the event, for a subscriber in the
            writing process (in-memory hand-off) and one in another ledger
            instance (LISTEN/NOTIFY hint, then a read), which is what a second
            process sees.

Ends with one summary line:
``append: writer_eps=.. copy_rps=.. ratio=.. p50_ms=.. p99_ms=..`` (latency of
the cross-process subscriber, the slower path).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402

from graphledger import projections  # noqa: E402
from graphledger.ledger import (  # noqa: E402
    Ledger,
    RunRef,
    chain,  # noqa: E402
)
from graphledger.ledger.events import canonical_json  # noqa: E402
from graphledger.process import settle  # noqa: E402

FILLER = "x" * 160


def chunk(i: int, sent: float = 0.0) -> dict[str, object]:
    """A stream chunk of about 200 bytes of canonical JSON."""
    return {"content": FILLER, "i": i, "sent": sent, "type": "AIMessageChunk"}


async def new_runs(ledger: Ledger, n: int) -> list[RunRef]:
    refs = []
    for _ in range(n):
        thread = await ledger.create_thread()
        refs.append(RunRef(thread, (await ledger.create_run(thread, payload={"bench": True})).run_id))
    return refs


async def bench_copy(dsn: str, runs: int, chunks: int) -> float:
    """Rows per second of one COPY of ``runs * chunks`` chained event rows."""
    ts = datetime.now(timezone.utc)
    records = []
    for _ in range(runs):
        thread_id, run_id, previous = uuid.uuid4(), uuid.uuid4(), chain.GENESIS
        for seq in range(1, chunks + 1):
            data = canonical_json(chunk(seq))
            previous = chain.link(previous, thread_id, run_id, seq, "stream:messages", ts, data)
            records.append((thread_id, run_id, seq, "stream:messages", data, ts, previous))
    conn = await asyncpg.connect(dsn)
    try:
        start = time.perf_counter()
        await conn.copy_records_to_table(
            "events", records=records, columns=["thread_id", "run_id", "seq", "kind", "data", "ts", "hash"]
        )
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return len(records) / elapsed


async def bench_writer(dsn: str, runs: int, chunks: int) -> tuple[float, int]:
    """Events per second through the group-commit writer, and the number of flushes."""
    ledger = await projections.connect(dsn, tail=False)
    try:
        refs = await new_runs(ledger, runs)
        flushes = ledger.writer.flushes

        async def stream(ref: RunRef) -> None:
            # As a worker streams a run: chunks are fed without waiting, and the
            # run's last event is awaited (committed in order, so all of them are).
            for i in range(chunks - 1):
                ledger.feed(ref, "stream:messages", chunk(i))
                if i % 8 == 7:
                    await asyncio.sleep(0)  # token-rate producers interleave
            await ledger.submit(ref, "stream:messages", chunk(chunks - 1))

        start = time.perf_counter()
        await asyncio.gather(*(stream(ref) for ref in refs))
        elapsed = time.perf_counter() - start
        return runs * chunks / elapsed, ledger.writer.flushes - flushes
    finally:
        await ledger.close()


async def bench_latency(dsn: str, rate: int, seconds: float) -> tuple[list[float], list[float], int]:
    """Paced appends; latencies (ms) seen by a local and by a cross-process subscriber."""
    writer = await projections.connect(dsn)
    remote = await projections.connect(dsn)
    local_ms: list[float] = []
    remote_ms: list[float] = []
    try:
        refs = await new_runs(writer, 20)

        async def subscribe(ledger: Ledger, ref: RunRef, into: list[float]) -> None:
            async for event in ledger.tail(ref.run_id, after_seq=1):
                if event.kind == "stream:messages":
                    into.append((time.perf_counter() - event.value["sent"]) * 1000)

        subscribers = [asyncio.create_task(subscribe(writer, ref, local_ms)) for ref in refs]
        subscribers += [asyncio.create_task(subscribe(remote, ref, remote_ms)) for ref in refs]
        await asyncio.sleep(0.5)
        total = int(rate * seconds)
        tick = 0.002
        per_tick = rate * tick
        start = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - start) / tick * per_tick) + 1)
            while sent < due:
                writer.feed(refs[sent % len(refs)], "stream:messages", chunk(sent, time.perf_counter()))
                sent += 1
            await asyncio.sleep(tick)
        for ref in refs:
            await writer.append(ref, "run.succeeded", {})
        await asyncio.wait_for(asyncio.gather(*subscribers), 60)
        achieved = int(total / (time.perf_counter() - start))
    finally:
        await remote.close()
        await writer.close()
    return local_ms, remote_ms, achieved


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run(dsn: str, args: argparse.Namespace) -> None:
    settle()
    # COPY and the writer alternate, so both see the same table sizes and the
    # same machine noise; the medians are compared.
    copies, writers = [], []
    for round_ in range(1, args.rounds + 1):
        copies.append(await bench_copy(dsn, args.runs, args.chunks))
        print(f"copy:    round {round_}: {args.runs * args.chunks} rows in one COPY: {copies[-1]:,.0f} rows/s", flush=True)
        eps, flushes = await bench_writer(dsn, args.runs, args.chunks)
        writers.append(eps)
        print(
            f"writer:  round {round_}: {args.runs} runs x {args.chunks} chunks: {eps:,.0f} events/s "
            f"({flushes} flushes, {args.runs * args.chunks / max(flushes, 1):.0f} events per flush)",
            flush=True,
        )
    copy_rps, writer_eps = statistics.median(copies), statistics.median(writers)
    print(f"medians: copy {copy_rps:,.0f} rows/s, writer {writer_eps:,.0f} events/s", flush=True)
    local_ms, remote_ms, achieved = await bench_latency(dsn, args.rate, args.seconds)
    for name, values in (("local", local_ms), ("remote", remote_ms)):
        print(
            f"latency: {name:6} subscriber at {achieved} events/s: n={len(values)} p50={percentile(values, 50):.2f} ms "
            f"p99={percentile(values, 99):.2f} ms max={max(values):.2f} ms",
            flush=True,
        )
    print(
        f"append: writer_eps={writer_eps:.0f} copy_rps={copy_rps:.0f} ratio={writer_eps / copy_rps:.2f} "
        f"p50_ms={percentile(remote_ms, 50):.2f} p99_ms={percentile(remote_ms, 99):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per run")
    parser.add_argument("--rate", type=int, default=2000, help="events/s for the latency measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the latency measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating COPY/writer rounds (medians compared)")
    args = parser.parse_args()

    run_on_database(lambda dsn: run(dsn, args))

if __name__ == "__main__":
    main()
