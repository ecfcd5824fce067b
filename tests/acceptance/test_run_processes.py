"""Runs across real ``graphledger serve`` processes on one database.

The test process is a client of its own (its ledger, its listener): it admits
runs, follows them and cancels them, while the server processes execute and
reap them.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from graphledger.ledger import Event, Ledger, RunRef
from graphledger.projections import Projections
from graphledger.runs import GraphRegistry, RunRequest, admit, cancel, demo, join
from tests._db import raw
from tests.acceptance.servers import GRACE, Server
from tests.acceptance.test_serve import free_port, graphledger

HANG_GUARD = 60.0  # only stops a broken run from hanging the suite; never a measurement

GRAPHS = GraphRegistry({"demo": demo.graph})


def slow(text: str = "a long answer") -> RunRequest:
    return RunRequest.parse(
        {
            "assistant_id": "demo",
            "input": {"messages": [{"role": "user", "content": text}]},
            "config": {"configurable": {"tokens": 2000, "token_delay": 0.01}},
            "stream_mode": ["messages-tuple"],
        }
    )


async def until(ledger: Ledger, ref: RunRef, kind: str) -> Event:
    async for event in ledger.tail(ref):
        if event.kind == kind:
            return event
        assert not event.is_terminal, event
    raise AssertionError(f"run ended without {kind}")


async def follow(ledger: Ledger, ref: RunRef, seen: list[Event]) -> None:
    """Collect every event of the run, to its end."""
    async for event in ledger.tail(ref):
        seen.append(event)


async def test_a_run_executed_by_one_process_is_followed_and_cancelled_from_another(
    dsn: str, tmp_path: Path, servers: list[Server], client: Ledger
) -> None:
    a = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "2")
    servers.append(a)
    ref = (await admit(client, slow(), graphs=GRAPHS)).ref
    started = await asyncio.wait_for(until(client, ref, "run.started"), HANG_GUARD)
    assert f":{a.pid}:" in started.value["worker"]
    await asyncio.wait_for(until(client, ref, "stream:messages"), HANG_GUARD)
    seen: list[Event] = []
    follower = asyncio.create_task(follow(client, ref, seen))
    result = await cancel(client, ref)
    assert result.requested
    await asyncio.wait_for(follower, HANG_GUARD)
    assert seen[-1].kind == "run.interrupted" and seen[-1].value == {"reason": "cancel", "action": "interrupt"}
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert (await join(client, ref)).seq == seen[-1].seq
    output = await asyncio.to_thread(a.stop)
    assert a.process.returncode == 0, output


async def test_a_killed_worker_s_run_is_failed_by_another_process_and_its_tail_ends(
    dsn: str, tmp_path: Path, servers: list[Server], client: Ledger
) -> None:
    a = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "2")
    b = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "0")  # executes nothing, but reaps
    servers.extend([a, b])
    ref = (await admit(client, slow(), graphs=GRAPHS)).ref
    await asyncio.wait_for(until(client, ref, "stream:messages"), HANG_GUARD)
    seen: list[Event] = []
    follower = asyncio.create_task(follow(client, ref, seen))
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    await asyncio.wait_for(follower, HANG_GUARD)
    end = seen[-1]
    assert end.kind == "run.failed" and end.value["error"]["type"] == "LeaseExpired"
    assert f":{a.pid}:" in end.value["error"]["message"]
    assert seen[-2].kind == "stream:error"
    async with raw(client) as conn:
        expired = await conn.fetchval("SELECT lease_expires_at FROM runs WHERE run_id = $1", ref.run_id)
    assert (end.ts - expired).total_seconds() >= GRACE  # never reaped before lease and grace ran out
    status = await Projections(client).run_status(ref)
    assert status is not None and status.status == "error"
    assert (await client.verify(ref)).ok
    # the next run of the thread is executed by a live worker
    c = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "1")
    servers.append(c)
    quick = RunRequest.parse({"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "after the crash"}]}})
    again = (await admit(client, quick, thread_id=ref.thread_id, graphs=GRAPHS)).ref
    assert (await asyncio.wait_for(join(client, again), HANG_GUARD)).kind == "run.succeeded"


def test_bad_graph_specs_stop_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "langgraph.json").write_text('{"graphs": {"agent": "./missing.py:graph"}}')
    process = graphledger("serve", "--port", str(free_port()), "--database-url", "postgresql://x@127.0.0.1:1/x", cwd=tmp_path)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("graphledger: error:")]
    assert len(errors) == 1 and "missing.py not found" in errors[0] and "Traceback" not in output
    process = graphledger("serve", "--workers", "-1", cwd=tmp_path)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2 and "is negative" in output


async def test_sigterm_drains_then_releases_what_is_left(dsn: str, tmp_path: Path, servers: list[Server], client: Ledger) -> None:
    a = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "2", "--drain", "0.5")
    servers.append(a)
    ref = (await admit(client, slow(), graphs=GRAPHS)).ref
    await asyncio.wait_for(until(client, ref, "stream:messages"), HANG_GUARD)
    output = await asyncio.to_thread(a.stop)
    assert a.process.returncode == 0, output
    last = (await client.read_run(ref))[-1]
    assert last.kind == "run.released" and last.value["reason"] == "shutdown" and f":{a.pid}:" in last.value["worker"]
    status = await Projections(client).run_status(ref)
    assert status is not None and status.status == "pending"
    # the next server to start takes it over and finishes it
    b = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "2")
    servers.append(b)
    end = await asyncio.wait_for(join(client, ref), HANG_GUARD)
    assert end.kind == "run.succeeded"
