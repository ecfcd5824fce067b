"""SSE fan-out of one server process, and the server's overhead per streamed chunk.

    python bench/sse.py [--runs 100] [--per-run 10] [--chunks 200] [--rate 20] [--graph-chunks 2000] [--rounds 9] [--auth]

Uses DATABASE_URL when set, else a fresh embedded PostgreSQL (default, durable
settings), removed afterwards. Two measurements (the second one first):

1. fan-out: one ``graphledger serve --workers 0`` process (HTTP only). This
   process writes ``--runs`` running runs through its own ledger, each
   streaming ``--chunks`` chunks at ``--rate`` chunks/s (a model's token pace),
   while ``--runs x --per-run`` SSE subscribers (raw sockets, one connection
   each) follow them through the server from the first event. Counted: frames
   delivered against frames expected; the server's database connections
   (peak, sampled from ``pg_stat_activity``); the server's CPU time
   (``/proc``), so delivered frames per CPU-second ("per core"); and the
   append-to-receipt lag for one subscriber per run.
2. overhead: the demo graph answering with ``--graph-chunks`` streamed tokens,
   run ``--rounds`` times each way, alternating: in-process through the
   graph's plain ``astream(stream_mode="messages")``, and through a
   ``graphledger serve --workers 1`` process with the official langgraph-sdk
   client (``runs.stream``, ``messages-tuple``): admission, the durable log,
   the worker, the tail and SSE included. Overhead per chunk is the
   difference of the medians over the number of chunks; first event is the
   time from sending the request to receiving the ``metadata`` event (and,
   reported beside it, the first token).

With ``--auth``, the servers authenticate (``serve --auth bench/_owner_auth.py:auth``:
a bearer token names the user, and the ``@auth.on`` handler returns an owner
filter, applied in SQL): each fan-out run's thread belongs to its own user,
whose token each of its subscribers sends, and the SDK sends a token too.
The overhead is then measured twice, one phase after the other: through a
server without auth, then through one with auth, each against its own
alternating plain ``astream`` rounds.

Ends with one summary line:
``sse: auth=.. subscribers=.. delivered=.. expected=.. db_connections=.. overhead_us_per_chunk=.. first_event_ms=..``
(with ``--auth``, followed by the phase without auth: ``without_auth_overhead_us_per_chunk=.. without_auth_first_event_ms=..``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _database import run_on_database  # noqa: E402
from _owner_auth import header  # noqa: E402
from langgraph_sdk.client import LangGraphClient  # noqa: E402

from graphledger import projections  # noqa: E402
from graphledger.ledger import RunRef  # noqa: E402
from graphledger.runs import demo  # noqa: E402

FILLER = "x" * 120
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
QUESTION = {"messages": [{"role": "user", "content": "count these words please"}]}
AUTH_SPEC = f"{Path(__file__).resolve().parent / '_owner_auth.py'}:auth"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(dsn: str, *flags: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A ``graphledger serve`` process on 127.0.0.1, stopped with SIGTERM afterwards."""
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "graphledger.cli", "serve", "--port", str(port), "--database-url", dsn, *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"serve did not start:\n{log.read().decode(errors='replace')}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ok", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield port, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- 1. fan-out ---------------------------------------------------------------------------


def auth_flags(auth: bool) -> list[str]:
    return ["--auth", AUTH_SPEC] if auth else []


class Subscriber:
    """One SSE connection over a raw socket: counts frames; with ``lags``, timestamps each chunk's arrival.

    With ``owner``, it sends that user's bearer token.
    """

    def __init__(self, port: int, ref: RunRef, lags: list[float] | None, owner: str | None = None) -> None:
        self.port, self.ref, self.lags = port, ref, lags
        self.authorization = f"Authorization: {header(owner)}\r\n" if owner is not None else ""
        self.frames = 0
        self.refused: str | None = None  # the status line of an answer other than 200
        self.connected = asyncio.Event()

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        path = f"/threads/{self.ref.thread_id}/runs/{self.ref.run_id}/stream"
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{self.authorization}Last-Event-ID: 0\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        tail = b""
        try:
            status = await reader.readline()
            if b" 200 " not in status:
                self.refused = status.decode(errors="replace").strip()
                self.connected.set()
                return
            while data := await reader.read(65536):
                text = tail + data
                found = text.count(b"\nid: ")
                if found:
                    self.frames += found
                    self.connected.set()
                    if self.lags is not None:
                        now = time.time()
                        for line in text.split(b"\n"):
                            if line.startswith(b"data: [{\"content\""):
                                self.lags.append(now - json.loads(line[6:])[0]["sent"])
                tail = text[-5:]
        finally:
            writer.close()


async def fan_out(dsn: str, args: argparse.Namespace) -> dict[str, float]:
    ledger = await projections.connect(dsn, pool_size=1, tail=False)
    monitor = await asyncpg.connect(dsn)
    try:
        own = {row["pid"] for row in await monitor.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")}
        refs, owners = [], []
        for n in range(args.runs):
            owner = f"user{n}" if args.auth else None
            thread_id = await ledger.create_thread(metadata={"owner": owner} if owner is not None else None)
            owners.append(owner)
            created = await ledger.create_run(thread_id, assistant_id="bench", payload={"assistant_id": "bench", "stream_mode": ["messages-tuple"]})
            ref = RunRef(created.thread_id, created.run_id)
            await ledger.append(ref, "run.started", {"worker": "bench"})
            refs.append(ref)
        with serve(dsn, "--workers", "0", *auth_flags(args.auth)) as (port, process):
            lags: list[float] = []
            subscribers = [
                Subscriber(port, ref, lags if n == 0 else None, owner) for ref, owner in zip(refs, owners, strict=True) for n in range(args.per_run)
            ]
            tasks = [asyncio.create_task(s.run()) for s in subscribers]
            await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subscribers)), 120)
            refused = [s.refused for s in subscribers if s.refused is not None]
            if refused:
                raise SystemExit(f"{len(refused)} subscribers were refused: {refused[0]}")
            connections = 0
            sampling = True

            async def sample() -> None:
                nonlocal connections
                while sampling:
                    rows = await monitor.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                    connections = max(connections, len({row["pid"] for row in rows} - own))
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            cpu_before, started = cpu_seconds(process.pid), time.perf_counter()
            for i in range(args.chunks):
                tick = time.perf_counter()
                for ref in refs:
                    ledger.feed(ref, "stream:messages", [{"content": FILLER, "i": i, "sent": time.time()}, {"langgraph_node": "agent"}])
                await asyncio.sleep(max(0.0, 1 / args.rate - (time.perf_counter() - tick)))
            await asyncio.gather(*(ledger.append(ref, "run.succeeded", {}) for ref in refs))
            await asyncio.wait_for(asyncio.gather(*tasks), 600)
            elapsed, cpu = time.perf_counter() - started, cpu_seconds(process.pid) - cpu_before
            sampling = False
            await sampler
    finally:
        await monitor.close()
        await ledger.close()
    delivered = sum(s.frames for s in subscribers)
    return {
        "subscribers": len(subscribers),
        "delivered": delivered,
        "expected": len(subscribers) * (1 + args.chunks),
        "db_connections": connections,
        "seconds": elapsed,
        "server_cpu_s": cpu,
        "frames_per_s": delivered / elapsed,
        "frames_per_cpu_s": delivered / cpu,
        "lag_p50_ms": percentile(lags, 0.5) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
    }


# -- 2. overhead --------------------------------------------------------------------------


async def plain(chunks: int) -> tuple[float, int]:
    config = {"configurable": {"tokens": chunks}}
    started = time.perf_counter()
    count = 0
    async for _ in demo.graph.astream(QUESTION, config=config, stream_mode="messages"):
        count += 1
    return time.perf_counter() - started, count


async def served(sdk: LangGraphClient, chunks: int) -> tuple[float, int, float, float]:
    config = {"configurable": {"tokens": chunks}}
    started = time.perf_counter()
    count, first_event, first_token = 0, 0.0, 0.0
    async for part in sdk.runs.stream(None, "demo", input=QUESTION, config=config, stream_mode="messages-tuple"):
        if part.event == "metadata":
            first_event = time.perf_counter() - started
        elif part.event == "messages":
            count += 1
            first_token = first_token or time.perf_counter() - started
    return time.perf_counter() - started, count, first_event, first_token


async def overhead(dsn: str, args: argparse.Namespace, auth: bool) -> dict[str, float]:
    headers = {"Authorization": header("sdk")} if auth else {}
    with serve(dsn, "--workers", "1", *auth_flags(auth)) as (port, _):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=headers) as http:
            sdk = LangGraphClient(http)
            await served(sdk, 10)  # warm up both paths once
            await plain(10)
            plain_s, server_s, firsts, tokens = [], [], [], []
            for _ in range(args.rounds):
                seconds, plain_chunks = await plain(args.graph_chunks)
                plain_s.append(seconds)
                seconds, server_chunks, first, token = await served(sdk, args.graph_chunks)
                server_s.append(seconds)
                firsts.append(first)
                tokens.append(token)
    if plain_chunks != server_chunks:
        raise SystemExit(f"chunk counts differ: plain {plain_chunks}, server {server_chunks}")
    return {
        "chunks": server_chunks,
        "plain_s": statistics.median(plain_s),
        "server_s": statistics.median(server_s),
        "overhead_us_per_chunk": (statistics.median(server_s) - statistics.median(plain_s)) / server_chunks * 1e6,
        "first_event_ms": statistics.median(firsts) * 1000,
        "first_token_ms": statistics.median(tokens) * 1000,
    }


def overhead_line(cost: dict[str, float], rounds: int, auth: bool) -> str:
    return (
        f"overhead ({'with' if auth else 'without'} auth): demo graph, {cost['chunks']} chunks, median of {rounds}: "
        f"plain astream {cost['plain_s'] * 1000:.0f} ms, through serve + SDK {cost['server_s'] * 1000:.0f} ms -> "
        f"{cost['overhead_us_per_chunk']:.0f} us/chunk; first event {cost['first_event_ms']:.1f} ms, first token {cost['first_token_ms']:.1f} ms"
    )


async def run(dsn: str, args: argparse.Namespace) -> None:
    # The overhead first, before the fan-out's writes leave the database busy;
    # with --auth, the same measurement without auth just before, for comparison.
    without = await overhead(dsn, args, auth=False) if args.auth else None
    cost = await overhead(dsn, args, auth=args.auth)
    spread = await fan_out(dsn, args)
    print(
        f"fan-out ({'with' if args.auth else 'without'} auth): {spread['subscribers']} subscribers of {args.runs} runs x {args.chunks} chunks at {args.rate}/s: "
        f"delivered {spread['delivered']}/{spread['expected']} frames in {spread['seconds']:.1f} s "
        f"({spread['frames_per_s']:,.0f} frames/s); server CPU {spread['server_cpu_s']:.1f} s "
        f"= {spread['frames_per_cpu_s']:,.0f} frames per CPU-second; "
        f"server db connections (peak) {spread['db_connections']}; "
        f"append-to-receipt lag p50 {spread['lag_p50_ms']:.1f} ms, p99 {spread['lag_p99_ms']:.1f} ms",
        flush=True,
    )
    if without is not None:
        print(overhead_line(without, args.rounds, auth=False), flush=True)
    print(overhead_line(cost, args.rounds, auth=args.auth), flush=True)
    compared = (
        f" without_auth_overhead_us_per_chunk={without['overhead_us_per_chunk']:.0f} without_auth_first_event_ms={without['first_event_ms']:.1f}"
        if without is not None else ""
    )
    print(
        f"sse: auth={'on' if args.auth else 'off'} subscribers={spread['subscribers']} delivered={spread['delivered']} "
        f"expected={spread['expected']} db_connections={spread['db_connections']} "
        f"overhead_us_per_chunk={cost['overhead_us_per_chunk']:.0f} first_event_ms={cost['first_event_ms']:.1f}{compared}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="running runs streamed at once")
    parser.add_argument("--per-run", type=int, default=10, help="SSE subscribers per run")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per run in the fan-out")
    parser.add_argument("--rate", type=float, default=20.0, help="chunks/s per run in the fan-out")
    parser.add_argument("--graph-chunks", type=int, default=2000, help="tokens the demo graph streams in the overhead run")
    parser.add_argument("--rounds", type=int, default=9, help="runs of each path in the overhead measurement")
    parser.add_argument("--auth", action="store_true", help="serve with a bearer-token auth.py and an owner filter; every client sends its token")
    args = parser.parse_args()
    run_on_database(lambda dsn: run(dsn, args))


if __name__ == "__main__":
    main()
