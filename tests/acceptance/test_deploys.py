"""Deploys hand runs over: a server stopped with SIGTERM drains, releases what it cannot finish and ends its streams;
another server resumes those runs, and clients that reconnect with ``Last-Event-ID`` see each run whole, every event once.

Real ``graphledger serve`` processes, real HTTP, real PostgreSQL, the bundled demo graph.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from graphledger.ledger import Event, Ledger, RunRef
from graphledger.projections import Projections
from graphledger.runs.sse import HEARTBEAT, frame, sse_modes
from tests.acceptance.servers import Server

HANG_GUARD = 120.0  # only stops a broken hand-over from hanging the suite; never a measurement
MODES = ["messages-tuple", "updates"]
ENDED = ("success", "error", "timeout", "interrupted")
_ID = re.compile(rb"^id: (\d+)$", re.M)


def body(tokens: int, text: str = "count these words please") -> dict[str, Any]:
    """A demo run whose answer streams ``tokens`` tokens, 10 ms apart."""
    return {
        "assistant_id": "demo",
        "input": {"messages": [{"role": "user", "content": text}]},
        "config": {"configurable": {"tokens": tokens, "token_delay": 0.01}},
        "stream_mode": MODES,
    }


class Follower:
    """An SSE client of one run that, like the SDK, reconnects with ``Last-Event-ID`` when a stream ends before the run.

    It keeps the complete frames it received, heartbeats left out, in order.
    ``urls`` is the list of live servers, read at every reconnect.
    """

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.frames = b""
        self.last_id: int | None = None
        self.connections = 0
        self.path = ""

    def _take(self, received: bytes) -> None:
        complete = received[: received.rfind(b"\n\n") + 2] if b"\n\n" in received else b""
        complete = complete.replace(HEARTBEAT, b"")
        self.frames += complete
        ids = _ID.findall(complete)
        if ids:
            self.last_id = int(ids[-1])

    async def _read(self, response: httpx.Response) -> None:
        received = b""
        try:
            async for chunk in response.aiter_raw():
                received += chunk
        except httpx.TransportError:
            pass  # cut mid-stream: keep the complete frames, reconnect after them
        finally:
            self._take(received)

    async def start(self, url: str, thread_id: str, request: dict[str, Any]) -> RunRef:
        """Create a run with a stream on ``url``; follow it in the background from then on."""
        http = httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))
        request_ = http.build_request("POST", f"{url}/threads/{thread_id}/runs/stream", json=request)
        response = await http.send(request_, stream=True)
        assert response.status_code == 200, await response.aread()
        self.path = response.headers["location"]
        self.connections = 1
        _, thread, _, run, _ = self.path.strip("/").split("/")
        self.task = asyncio.create_task(self._follow(http, response))
        return RunRef(UUID(thread), UUID(run))

    async def _follow(self, http: httpx.AsyncClient, first: httpx.Response) -> None:
        try:
            try:
                await self._read(first)
            finally:
                await first.aclose()
            while True:
                status = await self._status(http)
                if status in ENDED:
                    return
                await self._reconnect(http)
        finally:
            await http.aclose()

    async def _status(self, http: httpx.AsyncClient) -> str | None:
        for url in list(self.urls):
            try:
                answer = await http.get(url + self.path.removesuffix("/stream"))
            except httpx.TransportError:
                continue
            if answer.status_code == 200:
                return str(answer.json()["status"])
        await asyncio.sleep(0.1)
        return None

    async def _reconnect(self, http: httpx.AsyncClient) -> None:
        headers = {"Last-Event-ID": str(self.last_id)} if self.last_id is not None else {}
        for url in list(self.urls):
            try:
                async with http.stream("GET", url + self.path, headers=headers) as response:
                    if response.status_code != 200:
                        continue
                    self.connections += 1
                    await self._read(response)
                    return
            except httpx.TransportError:
                continue  # that server is going away: try the next
        await asyncio.sleep(0.1)


async def new_thread(url: str) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{url}/threads", json={})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["thread_id"])


async def stored_frames(ledger: Ledger, ref: RunRef) -> bytes:
    modes = sse_modes(MODES)
    return b"".join(f for e in await ledger.read_run(ref) if (f := frame(e, modes)) is not None)


async def until(ledger: Ledger, ref: RunRef, found: Any) -> Event:
    async for event in ledger.tail(ref):
        if found(event):
            return event
        assert not event.is_terminal, event
    raise AssertionError("the run ended first")


def stop_timed(server: Server) -> tuple[float, str]:
    """SIGTERM, wait for the exit; the seconds it took and the server's output."""
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=HANG_GUARD)
    return time.monotonic() - began, server.stop()


async def test_sigterm_honours_the_drain_with_a_stream_open_and_another_server_resumes_the_run(
    dsn: str, tmp_path: Path, servers: list[Server], client: Ledger
) -> None:
    a = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "2", "--drain", "1")
    servers.append(a)
    urls = [a.url]
    follower = Follower(urls)
    ref = await follower.start(a.url, await new_thread(a.url), body(tokens=400))
    await asyncio.wait_for(until(client, ref, lambda e: e.kind == "stream:updates" and "tools" in e.value), HANG_GUARD)

    took, output = await asyncio.to_thread(stop_timed, a)
    assert a.process.returncode == 0, output
    assert took < 1 + 5, f"SIGTERM with --drain 1 took {took:.1f} s to exit\n{output}"
    events = await client.read_run(ref)
    released = events[-1]
    assert released.kind == "run.released", [e.kind for e in events[-3:]]
    assert f":{a.pid}:" in released.value["worker"] and released.value["reason"] == "shutdown" and released.value["attempt"] == 1
    status = await Projections(client).run_status(ref)
    assert status is not None and status.status == "pending"
    assert follower.connections == 1 and not follower.task.done()  # its stream ended cleanly; it is looking for a server
    assert follower.frames == await stored_frames(client, ref)  # everything committed before the release, once

    b = await asyncio.to_thread(Server, dsn, tmp_path, "--workers", "2")
    servers.append(b)
    urls[:] = [b.url]
    await asyncio.wait_for(follower.task, HANG_GUARD)
    events = await client.read_run(ref)
    assert events[-1].kind == "run.succeeded"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    starts = [e for e in events if e.kind == "run.started"]
    assert [s.value["attempt"] for s in starts] == [1, 2] and f":{b.pid}:" in starts[1].value["worker"]
    assert starts[1].seq == released.seq + 1
    assert follower.frames == await stored_frames(client, ref)  # every event once, across both servers
    assert f'"attempt":2}}\nid: {starts[1].seq}\n'.encode() in follower.frames
    assert (await client.verify(ref)).ok
    # any Last-Event-ID, before or after the hand-over, resumes with exactly the events after it
    for after in (1, released.seq - 2, released.seq, starts[1].seq + 3):
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.get(b.url + follower.path, headers={"Last-Event-ID": str(after)})
        modes = sse_modes(MODES)
        expected = b"".join(f for e in events if e.seq > after and (f := frame(e, modes)) is not None)
        assert answer.content.replace(HEARTBEAT, b"") == expected


async def test_a_rolling_restart_under_load_loses_no_run_and_no_event(
    dsn: str, tmp_path: Path, servers: list[Server], client: Ledger
) -> None:
    flags = ("--workers", "4", "--drain", "1")
    a = await asyncio.to_thread(Server, dsn, tmp_path, *flags)
    b = await asyncio.to_thread(Server, dsn, tmp_path, *flags)
    servers.extend([a, b])
    urls = [a.url, b.url]
    followers: list[Follower] = []
    refs: list[RunRef] = []
    for i in range(6):
        url = urls[i % 2]
        follower = Follower(urls)
        refs.append(await follower.start(url, await new_thread(url), body(tokens=250 + 50 * i, text=f"question number {i}")))
        followers.append(follower)
    await asyncio.sleep(1.5)  # every run is under way

    for old in (a, b):  # restart A, then B
        took, output = await asyncio.to_thread(stop_timed, old)
        assert old.process.returncode == 0, output
        assert took < 1 + 5, output
        new = await asyncio.to_thread(Server, dsn, tmp_path, *flags)
        servers.append(new)
        urls[urls.index(old.url)] = new.url

    await asyncio.wait_for(asyncio.gather(*(f.task for f in followers)), HANG_GUARD)
    released = 0
    for ref, follower in zip(refs, followers, strict=True):
        status = await Projections(client).run_status(ref)
        assert status is not None and status.status == "success", (ref, status)
        events = await client.read_run(ref)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert (await client.verify(ref)).ok
        assert follower.frames == await stored_frames(client, ref)
        released += sum(1 for e in events if e.kind == "run.released")
    assert released >= 1  # the restarts did hand runs over
