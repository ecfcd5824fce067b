"""The Merkle log: what it costs the writer, how fast it grows, proves and checks.

    python bench/merkle.py [--runs 200] [--chunks 1000] [--rounds 5] [--events 10000000] [--big 12000000]

Uses DATABASE_URL when set, else a fresh embedded PostgreSQL (durable
settings), removed afterwards. In order, on one database:

1. writer_ratio: raw COPY of ``--runs`` x ``--chunks`` event rows, the append
   benchmark's writer alone, and the writer with a :class:`Checkpointer`
   growing the tree and signing a checkpoint every second beside it
   (bench/append.py, in a process settled as ``serve``'s is), alternating
   for ``--rounds``. Each round with
   checkpoints starts with the tree grown over what the other rounds wrote
   (untimed, as a running server's checkpointer keeps up) and prints how
   many checkpoints it signed: ``--runs`` must make it last a few seconds.
   ``writer_ratio`` is the median writer-with-checkpoints events/s over the
   median COPY rows/s (the append target's measure, checkpoints included);
   ``checkpoint_cost`` the same writer over the writer alone.
2. leaves_per_s: ``--events`` chained event rows COPYed in (in runs of
   ``--chunks`` events, 200,000 rows a COPY), then one ``grow()`` from the
   feed: leaves assigned and tiles written, per second.
3. consistency_eps: a checkpoint is signed (the "old" one), a tenth more
   events are COPYed and grown, then ``verify --all --checkpoint``'s check
   (every event's chain recomputed from the stored bytes, the tree recomputed
   from them, the old root compared) over all the real events.
4. proof_ms: synthetic leaf hashes appended to the tiles directly until the
   tree holds ``--big`` leaves (no events, no leaf rows: a proof reads only
   tiles, so the synthetic tree costs a proof what a real one does), then
   the mean and p99 of 500 inclusion proofs and 100 consistency proofs read
   from the database at that size (the real tree's, when it is larger).

Ends with ``merkle: writer_ratio=.. checkpoint_cost=.. leaves_per_s=.. consistency_eps=.. proof_ms=.. proof_p99_ms=..``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _database import run_on_database  # noqa: E402
from append import bench_copy, bench_writer, chunk  # noqa: E402

from graphledger import audit  # noqa: E402
from graphledger.ledger import Ledger, chain, merkle  # noqa: E402
from graphledger.ledger.checkpointer import Checkpointer  # noqa: E402
from graphledger.ledger.events import canonical_json  # noqa: E402
from graphledger.ledger.note import Signer  # noqa: E402
from graphledger.ledger.tlog import PUT_TILES_SQL  # noqa: E402
from graphledger.process import settle  # noqa: E402

COPY_BATCH = 200_000
SYNTH_BATCH = 256 * 1024


async def writer_with_checkpoints(dsn: str, runs: int, chunks: int, signer: Signer) -> tuple[float, int]:
    """The writer's events/s with a checkpointer beside it, and how many checkpoints it signed meanwhile.

    The tree is first grown over what the other rounds wrote (untimed): a
    running server's checkpointer keeps up, so the round starts caught up.
    """
    ledger = await Ledger.connect(dsn, tail=False, pool_size=2)
    async with ledger.session() as session:
        await session.log.grow()
        signed = await session.connection.fetchval("SELECT count(*) FROM checkpoints")
    keeper = Checkpointer(ledger, signer, interval=1.0, grow_interval=1.0)
    keeper.start()
    try:
        eps, _ = await bench_writer(dsn, runs, chunks)
    finally:
        await keeper.close()
        async with ledger.session() as session:
            signed = await session.connection.fetchval("SELECT count(*) FROM checkpoints") - signed
        await ledger.close()
    return eps, signed


async def copy_events(dsn: str, count: int, per_run: int) -> float:
    """COPY ``count`` chained event rows in runs of ``per_run``; seconds spent in COPY (building rows not counted)."""
    ts = datetime.now(timezone.utc)
    data = canonical_json(chunk(0))
    conn = await asyncpg.connect(dsn)
    spent = 0.0
    try:
        done = 0
        while done < count:
            records = []
            while len(records) < COPY_BATCH and done < count:
                thread_id, run_id, previous = uuid.uuid4(), uuid.uuid4(), chain.GENESIS
                prefix = chain.run_prefix(thread_id, run_id)
                for seq in range(1, min(per_run, count - done) + 1):
                    previous = chain.link_with(previous, prefix, seq, "stream:messages", ts, data)
                    records.append((thread_id, run_id, seq, "stream:messages", data, ts, previous))
                done += min(per_run, count - done)
            start = time.perf_counter()
            await conn.copy_records_to_table(
                "events", records=records, columns=["thread_id", "run_id", "seq", "kind", "data", "ts", "hash"]
            )
            spent += time.perf_counter() - start
    finally:
        await conn.close()
    return spent


async def synthesize(ledger: Ledger, size: int, target: int) -> None:
    """Append synthetic leaf hashes to the tiles (only the tiles) of a tree of ``size`` until it holds ``target``."""
    async with ledger.session() as session:
        conn = session.connection
        while size < target:
            n = min(SYNTH_BATCH, target - size)
            leaves = b"".join([hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size, size + n)])
            edge = await session.log._tiles([(lv, ix) for lv, ix, _ in merkle.tiles_for(size)])
            changed = merkle.grow_tiles(size, edge, leaves)
            keys = sorted(changed)
            await conn.execute(PUT_TILES_SQL, [k[0] for k in keys], [k[1] for k in keys], [changed[k] for k in keys])
            size += n


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def run(dsn: str, args: argparse.Namespace) -> None:
    settle()
    signer = Signer.generate("bench.example/log")
    copies, plain, checked = [], [], []
    for round_ in range(1, args.rounds + 1):
        copies.append(await bench_copy(dsn, args.runs, args.chunks))
        plain.append((await bench_writer(dsn, args.runs, args.chunks))[0])
        eps, signed = await writer_with_checkpoints(dsn, args.runs, args.chunks, signer)
        checked.append(eps)
        print(
            f"writer:  round {round_}: COPY {copies[-1]:,.0f} rows/s, writer alone {plain[-1]:,.0f} events/s, "
            f"with checkpoints every second {checked[-1]:,.0f} events/s ({signed} signed during the round)",
            flush=True,
        )
    copy_rps, writer_eps, with_checkpoints = statistics.median(copies), statistics.median(plain), statistics.median(checked)
    ratio, cost = with_checkpoints / copy_rps, with_checkpoints / writer_eps
    print(
        f"medians: COPY {copy_rps:,.0f} rows/s, writer {writer_eps:,.0f} events/s, with checkpoints {with_checkpoints:,.0f} events/s",
        flush=True,
    )

    ledger = await Ledger.connect(dsn, tail=False, pool_size=2)
    try:
        spent = await copy_events(dsn, args.events, args.chunks)
        print(f"events:  {args.events:,} chained events COPYed in {spent:.1f} s", flush=True)
        async with ledger.session() as session:
            before = await session.log.size()
            start = time.perf_counter()
            grown = await session.log.grow()
            elapsed = time.perf_counter() - start
            leaves_per_s = (grown.after - before) / elapsed
            print(f"grow:    {grown.after - before:,} leaves in {elapsed:.2f} s: {leaves_per_s:,.0f} leaves/s (tree of {grown.after:,})", flush=True)
            old, _ = await session.log.sign(signer)
        await copy_events(dsn, args.events // 10, args.chunks)
        async with ledger.session() as session:
            await session.log.grow()

        start = time.perf_counter()
        report = await audit.check_log(ledger, old)
        elapsed = time.perf_counter() - start
        consistency_eps = report.size / elapsed
        assert report.ok, report.findings
        print(
            f"check:   {report.size:,} real events recomputed against the checkpoint of {old.size:,} in {elapsed:.1f} s: "
            f"{consistency_eps:,.0f} events/s",
            flush=True,
        )

        async with ledger.session() as session:
            size = await session.log.size()
        start = time.perf_counter()
        await synthesize(ledger, size, args.big)
        print(f"big:     {max(0, args.big - size):,} synthetic leaves added to the tiles in {time.perf_counter() - start:.1f} s: tree of {args.big:,}", flush=True)
        size = max(size, args.big)
        timings, ctimings = [], []
        async with ledger.session() as session:
            root = await session.log.root(size)
            for _ in range(500):
                index = random.randrange(size)
                start = time.perf_counter()
                proof = await session.log.inclusion(index, size)
                timings.append(time.perf_counter() - start)
                assert len(proof) <= size.bit_length()
            for _ in range(100):
                older = random.randrange(1, size)
                start = time.perf_counter()
                cproof = await session.log.consistency(older, size)
                ctimings.append(time.perf_counter() - start)
                assert merkle.verify_consistency(older, size, await session.log.root(older), root, cproof)
        proof_ms, proof_p99 = statistics.mean(timings) * 1000, p99(timings) * 1000
        print(
            f"proofs:  inclusion mean {proof_ms:.2f} ms, p99 {proof_p99:.2f} ms; consistency mean "
            f"{statistics.mean(ctimings) * 1000:.2f} ms, p99 {p99(ctimings) * 1000:.2f} ms (tree of {size:,})",
            flush=True,
        )
    finally:
        await ledger.close()
    print(
        f"merkle: writer_ratio={ratio:.2f} checkpoint_cost={cost:.2f} leaves_per_s={leaves_per_s:.0f} "
        f"consistency_eps={consistency_eps:.0f} proof_ms={proof_ms:.2f} proof_p99_ms={proof_p99:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=10_000_000, help="real events for the growth and the check")
    parser.add_argument("--big", type=int, default=12_000_000, help="tree size for the proof timing (synthetic leaves added)")
    args = parser.parse_args()
    run_on_database(lambda dsn: run(dsn, args))


if __name__ == "__main__":
    main()
