"""A database restart or outage fails no run, answers 503 meanwhile, and every stream goes on after it.

These tests own a PostgreSQL server of their own, which they stop and start
under a live server; the outage lengths and the lease are short parameters,
so nothing here waits for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from graphledger import projections
from graphledger.embedded import EmbeddedPostgres
from graphledger.http.app import create_app
from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.errors import DatabaseUnavailable
from graphledger.ledger.migrate import upgrade
from graphledger.runs import GraphRegistry, RunSettings, checkpoint, demo
from graphledger.runs.sse import frame, sse_modes
from tests.conftest import TEST_DIR_PREFIX
from tests.http.conftest import serve

LEASE, GRACE = 1.0, 0.5
HEARTBEAT = 0.3
SETTINGS = RunSettings(workers=8, lease_seconds=LEASE, lease_grace_seconds=GRACE, poll_interval=0.2, drain_seconds=1.0, outage_seconds=60.0)


@dataclass
class Database:
    server: EmbeddedPostgres
    dsn: str

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def start(self) -> None:
        dsn = await asyncio.to_thread(self.server.start)
        assert dsn == self.dsn, "the server came back on another port"

    async def outage(self, seconds: float) -> None:
        await self.stop()
        await asyncio.sleep(seconds)
        await self.start()


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[Database]:
    root = Path(tempfile.mkdtemp(prefix=TEST_DIR_PREFIX))
    root.chmod(0o755)
    server = EmbeddedPostgres(root / "pg", settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    try:
        dsn = await asyncio.to_thread(server.start)
        await asyncio.to_thread(upgrade, dsn)
        await checkpoint.setup(dsn)
        yield Database(server, dsn)
    finally:
        if server.dsn is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def base_url(database: Database) -> AsyncIterator[str]:
    app = create_app(database.dsn, graphs=GraphRegistry({"demo": demo.graph}), settings=SETTINGS, heartbeat_seconds=HEARTBEAT)
    async with serve(app) as url:
        yield url


def long_run(tokens: int = 40, delay: float = 0.05) -> dict[str, Any]:
    return {
        "assistant_id": "demo",
        "input": {"messages": [{"role": "user", "content": "count these words please"}]},
        "stream_mode": ["values", "messages-tuple"],
        "config": {"configurable": {"tokens": tokens, "token_delay": delay}},
    }


@dataclass
class Stream:
    """What one SSE client read: frames (name, id), and when each heartbeat came."""

    run_id: str | None = None
    frames: list[tuple[str, int]] = field(default_factory=list)
    heartbeats: list[float] = field(default_factory=list)
    status: int = 0


async def read_stream(url: str, body: dict[str, Any]) -> Stream:
    got = Stream()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        thread = (await client.post("/threads", json={})).json()["thread_id"]
        async with client.stream("POST", f"/threads/{thread}/runs/stream", json=body) as response:
            got.status = response.status_code
            name = ""
            async for line in response.aiter_lines():
                if line.startswith(": heartbeat"):
                    got.heartbeats.append(time.monotonic())
                elif line.startswith("event: "):
                    name = line[len("event: "):]
                elif line.startswith("id: "):
                    got.frames.append((name, int(line[len("id: "):])))
                elif line.startswith("data: ") and name == "metadata":
                    got.run_id = json.loads(line[len("data: "):])["run_id"]
    return got


async def check_runs(database: Database, streams: list[Stream]) -> None:
    """Every run succeeded, its chain verifies, its events are gapless, and its client got each stream event once."""
    async with await projections.connect(database.dsn, tail=False) as ledger:
        for got in streams:
            assert got.status == 200 and got.run_id is not None
            ref = await ledger.run_ref(UUID(got.run_id))
            events = await ledger.read_run(ref)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].kind == "run.succeeded", [e.kind for e in events if e.kind.startswith("run.")]
            assert (await ledger.verify(ref)).ok
            status = await projections.Projections(ledger).run_status(ref)
            assert status.status == "success" and status.error_type is None
            sent = [seq for _, seq in got.frames]
            assert sent == sorted(set(sent)), "every frame once, in order"
            modes = sse_modes(events[0].value["stream_mode"])
            streamed = [e.seq for e in events if frame(e, modes) is not None]
            assert sent == streamed


async def wait_ok(client: httpx.AsyncClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get("/ok")).status_code != 200:
        assert time.monotonic() < deadline, "/ok never answered 200 again"
        await asyncio.sleep(0.1)


async def test_runs_stream_on_through_a_fast_restart(base_url: str, database: Database) -> None:
    clients = [asyncio.create_task(read_stream(base_url, long_run())) for _ in range(8)]
    await asyncio.sleep(0.8)
    assert not any(c.done() for c in clients), "the runs should still be streaming"
    await database.outage(0.2)
    streams = await asyncio.gather(*clients)
    await check_runs(database, streams)


async def test_an_outage_longer_than_a_lease_fails_no_run_and_streams_keep_their_heartbeats(base_url: str, database: Database) -> None:
    clients = [asyncio.create_task(read_stream(base_url, long_run())) for _ in range(4)]
    await asyncio.sleep(0.8)
    down = time.monotonic()
    await database.stop()
    await asyncio.sleep(4 * (LEASE + GRACE))  # far past every lease and its grace
    up = time.monotonic()
    await database.start()
    streams = await asyncio.gather(*clients)
    await check_runs(database, streams)
    for got in streams:
        during = [t for t in got.heartbeats if down < t < up]
        assert len(during) >= 3, "a stream keeps its heartbeats while the database is away"


ROUTES = [
    ("GET", "/ok"),
    ("POST", "/threads"),
    ("GET", "/threads/{thread}"),
    ("DELETE", "/threads/{thread}"),
    ("POST", "/threads/{thread}/runs"),
    ("POST", "/threads/{thread}/runs/stream"),
    ("POST", "/threads/{thread}/runs/wait"),
    ("POST", "/runs/stream"),
    ("POST", "/runs/wait"),
    ("GET", "/threads/{thread}/runs"),
    ("GET", "/threads/{thread}/runs/{run}"),
    ("POST", "/threads/{thread}/runs/{run}/cancel"),
    ("GET", "/threads/{thread}/runs/{run}/join"),
    ("GET", "/threads/{thread}/runs/{run}/stream"),
    ("GET", "/threads/{thread}/messages"),
    ("GET", "/threads/{thread}/usage"),
    ("GET", "/threads/{thread}/runs/{run}/messages"),
    ("GET", "/threads/{thread}/runs/{run}/events"),
    ("GET", "/threads/{thread}/runs/{run}/usage"),
    ("GET", "/threads/{thread}/runs/{run}/verify"),
    ("GET", "/threads/{thread}/export"),
    ("GET", "/threads/{thread}/runs/{run}/export"),
]


async def test_an_outage_answers_503_on_every_route_fast_and_the_first_run_after_it_succeeds(base_url: str, database: Database) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        thread = (await client.post("/threads", json={})).json()["thread_id"]
        done = (await client.post(f"/threads/{thread}/runs/wait", json=long_run(tokens=3, delay=0))).status_code
        assert done == 200
        run = (await client.get(f"/threads/{thread}/runs")).json()[0]["run_id"]
        await database.stop()
        try:
            for method, path in ROUTES:
                body = long_run(tokens=1, delay=0) if "runs" in path and method == "POST" and not path.endswith("cancel") else {}
                started = time.monotonic()
                answer = await client.request(method, path.format(thread=thread, run=run), json=body if method == "POST" else None)
                took = time.monotonic() - started
                assert answer.status_code == 503, (method, path, answer.status_code, answer.text)
                assert answer.json()["detail"] and answer.headers["retry-after"], (method, path)
                assert took < 2.0, (method, path, took)
        finally:
            await database.start()
        await wait_ok(client)
        # The pool's connections died in the outage; none of them may fail the first requests or run after it.
        again = await client.post(f"/threads/{thread}/runs/wait", json=long_run(tokens=3, delay=0))
        assert again.status_code == 200 and "__error__" not in again.json()
        runs = (await client.get(f"/threads/{thread}/runs")).json()
        assert [r["status"] for r in runs] == ["success", "success"]


async def test_a_run_admitted_right_before_an_outage_is_executed_after_it(base_url: str, database: Database) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        thread = (await client.post("/threads", json={})).json()["thread_id"]
        created = (await client.post(f"/threads/{thread}/runs", json=long_run(tokens=20, delay=0.05))).json()
        await database.outage(1.5)
        await wait_ok(client)
        ended = await client.get(f"/threads/{thread}/runs/{created['run_id']}/join")
        assert ended.status_code == 200 and "__error__" not in ended.json()
    async with await projections.connect(database.dsn, tail=False) as ledger:
        ref = RunRef(UUID(thread), UUID(created["run_id"]))
        assert (await projections.Projections(ledger).run_status(ref)).status == "success"


class Proxy:
    """A TCP proxy to the database that the test can cut and restore: a network partition, the server itself untouched."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.open = True
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.open = False
        for writer in self.links:
            writer.close()
        self.links.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def cut_off_from(database: Database, settle: float) -> AsyncIterator[tuple[Ledger, Ledger, Proxy, RunRef]]:
    """A database of its own with a run whose lease expired a minute ago; ledgers on it directly and through a proxy.

    The database has been up for longer than ``settle``: it cannot tell that
    anyone lost it; only a process that was cut off can.
    """
    from urllib.parse import urlsplit

    # A database of its own: the module's server reaps expired leases in the shared one, as it should.
    admin = await asyncpg.connect(database.server.admin_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS partitioned WITH (FORCE)")
        await admin.execute("CREATE DATABASE partitioned")
    finally:
        await admin.close()
    dsn = database.dsn.rsplit("/", 1)[0] + "/partitioned"
    await asyncio.to_thread(upgrade, dsn)
    parts = urlsplit(dsn)
    proxy = Proxy(parts.port or 5432)
    port = await proxy.start()
    through = dsn.replace(f":{parts.port}/", f":{port}/")
    async with await projections.connect(dsn, tail=False) as direct, await projections.connect(through, tail=False) as cut_off:
        thread = await direct.create_thread()
        ref = RunRef(thread, (await direct.create_run(thread)).run_id)
        await direct.append(ref, "run.started", {"worker": "a holder far away"})
        async with direct.transaction() as tx:
            await tx.heads.set_lease(ref, "a holder far away", -60)  # expired a minute ago, as after an outage
        async with direct.session() as session:
            up = await session.connection.fetchval("SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")
        await asyncio.sleep(max(0.0, settle + 0.2 - up))
        try:
            yield direct, cut_off, proxy, ref
        finally:
            await proxy.close()


async def status_of(ledger: Ledger, ref: RunRef) -> str:
    status = await projections.Projections(ledger).run_status(ref)
    assert status is not None
    return status.status


async def test_a_process_that_lost_the_database_judges_no_lease_until_holders_could_renew(database: Database) -> None:
    """The database never restarted (so it cannot tell), but this process lost it: it waits a lease and its grace."""
    from graphledger.runs.leases import Reaper

    settle = 1.5
    async with cut_off_from(database, settle) as (direct, cut_off, proxy, ref):
        reaper = Reaper(cut_off, grace_seconds=0, idle_seconds=LEASE, settle_seconds=settle)
        proxy.cut()
        with pytest.raises(DatabaseUnavailable):
            await reaper.tick()
        proxy.open = True
        await reaper.tick()  # the database answers again: holders get their time to renew
        assert await status_of(direct, ref) == "running"
        await asyncio.sleep(settle + 0.1)
        await reaper.tick()
        assert await status_of(direct, ref) == "error"


async def test_a_process_judges_no_lease_before_the_database_answered_it_for_a_lease_and_its_grace(database: Database) -> None:
    """Neither a process that just started, nor one that lost the database again while it waited, reaps early."""
    from graphledger.runs.leases import Reaper

    settle = 3.0
    async with cut_off_from(database, settle) as (direct, cut_off, proxy, ref):
        reaper = Reaper(cut_off, grace_seconds=0, idle_seconds=LEASE, settle_seconds=settle)
        await reaper.tick()  # just started: the others may have been away from the database until now
        assert await status_of(direct, ref) == "running"
        await asyncio.sleep(settle / 2)
        proxy.cut()
        with pytest.raises(DatabaseUnavailable):
            await reaper.tick()  # away again inside the wait
        proxy.open = True
        await reaper.tick()
        await asyncio.sleep(settle * 2 / 3)  # past a full wait since the first answer, not since the last one
        await reaper.tick()
        assert await status_of(direct, ref) == "running"
        await asyncio.sleep(settle / 3 + 0.2)
        await reaper.tick()
        assert await status_of(direct, ref) == "error"
        assert reaper.reaped == 1
