"""The Merkle log: what it costs the writer, how fast it grows, proves and checks.

    python bench/merkle.py [--runs 50] [--chunks 1000] [--rounds 2] [--big 1000000]

Uses DATABASE_URL when set, else a fresh embedded PostgreSQL (durable
settings), removed afterwards. In order, on one database:

1. writer_ratio: the append benchmark's writer (``--runs`` runs x ``--chunks``
   chunks, bench/append.py) alone, then with a :class:`Checkpointer` growing
   the tree and signing a checkpoint every second beside it, alternating for
   ``--rounds``; the ratio of the medians (1.0: no cost).
2. leaves_per_s: ``--runs * --chunks`` event rows COPYed in, then one
   ``grow()`` from the feed: leaves assigned and tiles written, per second.
3. consistency_eps: ``verify --all --checkpoint``'s check (every event's
   chain recomputed, the tree recomputed from them) against a fresh checkpoint.
4. proof_ms: ``--big`` synthetic leaf hashes appended to the tiles directly
   (no events: the tiles are all a proof reads), then the mean time of an
   inclusion proof and of a consistency proof from the database at that size.

Ends with ``merkle: writer_ratio=.. leaves_per_s=.. proof_ms=.. consistency_eps=..``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _database import run_on_database  # noqa: E402
from append import bench_copy, bench_writer  # noqa: E402

from graphledger import audit  # noqa: E402
from graphledger.ledger import Ledger, merkle  # noqa: E402
from graphledger.ledger.checkpointer import Checkpointer  # noqa: E402
from graphledger.ledger.note import Signer  # noqa: E402
from graphledger.ledger.tlog import PUT_TILES_SQL  # noqa: E402


async def writer_with_checkpoints(dsn: str, runs: int, chunks: int, signer: Signer) -> float:
    ledger = await Ledger.connect(dsn, tail=False, pool_size=2)
    keeper = Checkpointer(ledger, signer, interval=1.0, grow_interval=1.0)
    keeper.start()
    try:
        eps, _ = await bench_writer(dsn, runs, chunks)
    finally:
        await keeper.close()
        await ledger.close()
    return eps


async def synthesize(ledger: Ledger, count: int) -> int:
    """Append ``count`` random leaf hashes to the tiles (only the tiles), in batches; the new tree size."""
    async with ledger.session() as session:
        size = await session.log.size()
        conn = session.connection
        done = 0
        while done < count:
            n = min(256 * 1024, count - done)
            leaves = [hashlib.sha256(random.randbytes(16)).digest() for _ in range(n)]
            edge = await session.log._tiles([(lv, ix) for lv, ix, _ in merkle.tiles_for(size + done)])
            changed = merkle.grow_tiles(size + done, edge, leaves)
            keys = sorted(changed)
            await conn.execute(PUT_TILES_SQL, [k[0] for k in keys], [k[1] for k in keys], [changed[k] for k in keys])
            done += n
    return size + count


async def run(dsn: str, args: argparse.Namespace) -> None:
    signer = Signer.generate("bench.example/log")
    plain, checked = [], []
    for round_ in range(1, args.rounds + 1):
        plain.append((await bench_writer(dsn, args.runs, args.chunks))[0])
        checked.append(await writer_with_checkpoints(dsn, args.runs, args.chunks, signer))
        print(f"writer:  round {round_}: alone {plain[-1]:,.0f} events/s, with checkpoints every second {checked[-1]:,.0f} events/s", flush=True)
    ratio = statistics.median(checked) / statistics.median(plain)

    await bench_copy(dsn, args.runs, args.chunks)
    ledger = await Ledger.connect(dsn, tail=False, pool_size=2)
    try:
        async with ledger.session() as session:
            before = await session.log.size()
            start = time.perf_counter()
            grown = await session.log.grow()
            leaves_per_s = (grown.after - before) / (time.perf_counter() - start)
            print(f"grow:    {grown.after - before:,} leaves in {time.perf_counter() - start:.2f} s: {leaves_per_s:,.0f} leaves/s", flush=True)
            checkpoint, _ = await session.log.sign(signer)

        start = time.perf_counter()
        report = await audit.check_log(ledger, checkpoint)
        consistency_eps = report.size / (time.perf_counter() - start)
        assert report.ok, report.findings
        print(f"check:   {report.size:,} events recomputed against the checkpoint: {consistency_eps:,.0f} events/s", flush=True)

        start = time.perf_counter()
        size = await synthesize(ledger, args.big)
        print(f"big:     {args.big:,} synthetic leaves added to the tiles in {time.perf_counter() - start:.1f} s: tree of {size:,}", flush=True)
        timings, ctimings = [], []
        async with ledger.session() as session:
            root = await session.log.root(size)
            for _ in range(200):
                index = random.randrange(size)
                start = time.perf_counter()
                proof = await session.log.inclusion(index, size)
                timings.append(time.perf_counter() - start)
                assert len(proof) <= size.bit_length()
            for _ in range(50):
                old = random.randrange(1, size)
                start = time.perf_counter()
                cproof = await session.log.consistency(old, size)
                ctimings.append(time.perf_counter() - start)
                assert merkle.verify_consistency(old, size, await session.log.root(old), root, cproof)
        proof_ms = statistics.mean(timings) * 1000
        print(f"proofs:  inclusion {proof_ms:.2f} ms, consistency {statistics.mean(ctimings) * 1000:.2f} ms (mean, tree of {size:,})", flush=True)
    finally:
        await ledger.close()
    print(f"merkle: writer_ratio={ratio:.2f} leaves_per_s={leaves_per_s:.0f} proof_ms={proof_ms:.2f} consistency_eps={consistency_eps:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--big", type=int, default=1_000_000, help="synthetic leaves for the proof timing")
    args = parser.parse_args()
    run_on_database(lambda dsn: run(dsn, args))


if __name__ == "__main__":
    main()
