"""Exporting and verifying a large log: time and peak memory of ``graphledger export`` and ``graphledger verify``.

    python bench/export.py [--events 1000000] [--runs 1000]

Uses DATABASE_URL when set, else a fresh embedded PostgreSQL, removed
afterwards. Fills the log with ``--events`` chained events (about 200-byte
payloads) spread over ``--runs`` ended runs, loaded with COPY; then runs, as
separate processes, the commands a reviewer runs:

1. ``graphledger export --since 2000-01-01 --out FILE`` (every run);
2. ``graphledger verify FILE`` (offline, no database);
3. ``graphledger verify --all`` (the same chains, recomputed in the database);

and first, as the floor the others are read against, ``graphledger runs
--limit 1``: the same imports and connection, almost no work.

Each is timed, and its peak resident memory is read from the kernel
(``ru_maxrss`` of the finished child). Ends with one summary line:
``export: events=.. seconds=.. events_per_s=.. peak_rss_mb=.. file_mb=.. verify_seconds=.. verify_peak_rss_mb=..``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402

from graphledger.ledger import chain  # noqa: E402
from graphledger.ledger.events import canonical_json  # noqa: E402

FILLER = "x" * 160
COLUMNS = ["thread_id", "run_id", "seq", "kind", "data", "ts", "hash"]


def kind_of(seq: int, last: int) -> str:
    return "run.created" if seq == 1 else "run.succeeded" if seq == last else "stream:messages"


async def fill(dsn: str, events: int, runs: int) -> None:
    """``runs`` ended runs (one thread each ten) holding ``events`` chained events in all."""
    per_run = events // runs
    ts = datetime.now(timezone.utc)
    heads: list[tuple[uuid.UUID, uuid.UUID, bytes]] = []

    def rows() -> Iterator[tuple[object, ...]]:
        for n in range(runs):
            thread_id, run_id, previous = uuid.UUID(int=n // 10 + 1), uuid.uuid4(), chain.GENESIS
            prefix = chain.run_prefix(thread_id, run_id)
            stamp = chain.format_ts(ts)
            for seq in range(1, per_run + 1):
                kind = kind_of(seq, per_run)
                data = canonical_json({"content": FILLER, "i": seq, "type": "AIMessageChunk"} if kind == "stream:messages" else {})
                previous = chain.link_with(previous, prefix, seq, kind, stamp, data)
                yield (thread_id, run_id, seq, kind, data, ts, previous)
            heads.append((thread_id, run_id, previous))

    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany("INSERT INTO threads (thread_id) VALUES ($1) ON CONFLICT DO NOTHING", [(uuid.UUID(int=n // 10 + 1),) for n in range(runs)])
        started = time.perf_counter()
        await conn.copy_records_to_table("events", records=rows(), columns=COLUMNS)
        await conn.executemany(
            "INSERT INTO runs (thread_id, run_id, status, last_seq, last_hash, last_kind) VALUES ($1, $2, 'success', $3, $4, 'run.succeeded')",
            [(thread_id, run_id, per_run, last) for thread_id, run_id, last in heads],
        )
        print(f"fill: {per_run * runs:,} events in {runs} runs loaded in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await conn.close()


def measure(*args: str) -> tuple[float, float, str]:
    """Seconds and peak RSS (MB) of one ``graphledger`` command in a child process, and its last line of output."""
    with tempfile.TemporaryFile(mode="w+") as log:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "graphledger.cli", *args], stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().strip()
    if child.returncode != 0:
        raise SystemExit(f"graphledger {args[0]} failed: {output}")
    return seconds, usage.ru_maxrss / 1024, output.splitlines()[-1] if output else ""


async def run(dsn: str, args: argparse.Namespace) -> None:
    await fill(dsn, args.events, args.runs)
    with tempfile.TemporaryDirectory(prefix="graphledger-bench-export-") as workdir:
        out = Path(workdir) / "all.ndjson"
        _, floor_mb, _ = measure("runs", "--limit", "1", "--database-url", dsn)  # the same imports, almost no work
        export_s, export_mb, _ = measure("export", "--since", "2000-01-01", "--out", str(out), "--database-url", dsn)
        size = out.stat().st_size / 1e6
        verify_s, verify_mb, verify_out = measure("verify", str(out))
        db_s, db_mb, db_out = measure("verify", "--all", "--database-url", dsn)
    events = args.events // args.runs * args.runs
    print(f"floor: graphledger runs --limit 1 (same imports, no export): peak RSS {floor_mb:.0f} MB")
    print(f"export: {events:,} events to a {size:,.0f} MB file in {export_s:.1f} s ({events / export_s:,.0f} events/s), peak RSS {export_mb:.0f} MB")
    print(f"verify FILE: {verify_s:.1f} s ({events / verify_s:,.0f} events/s), peak RSS {verify_mb:.0f} MB: {verify_out}")
    print(f"verify --all: {db_s:.1f} s ({events / db_s:,.0f} events/s), peak RSS {db_mb:.0f} MB: {db_out}")
    print(
        f"export: events={events} seconds={export_s:.1f} events_per_s={events / export_s:.0f} peak_rss_mb={export_mb:.0f} "
        f"file_mb={size:.0f} verify_seconds={verify_s:.1f} verify_peak_rss_mb={verify_mb:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1_000)
    args = parser.parse_args()
    run_on_database(lambda dsn: run(dsn, args))


if __name__ == "__main__":
    main()
