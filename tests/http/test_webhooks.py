"""Webhook deliveries across processes: a process that stops or dies leaves its deliveries to the next one.

Each test serves its own apps on this module's database, one after another,
and webhooks go to real HTTP receivers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import httpx
from langgraph_sdk.client import LangGraphClient

from graphledger.http.app import create_app
from graphledger.ledger import Ledger, RunRef
from graphledger.runs import GraphRegistry, RunSettings, demo
from graphledger.runs.webhooks import WEBHOOK_ATTEMPT, WebhookSettings, take
from tests.http.conftest import free_port, serve
from tests.http.receiver import Receiver, delivery_of, recorded_attempts

INPUT = {"messages": [{"role": "user", "content": "count these words please"}]}


def _app(dsn: str, settings: WebhookSettings, workers: int = 2) -> Any:
    return create_app(
        dsn,
        graphs=GraphRegistry({"demo": demo.graph}),
        settings=RunSettings(workers=workers, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0, webhooks=settings),
        heartbeat_seconds=0.5,
    )


FAST = WebhookSettings(attempts=3, backoff_seconds=0.2, poll_interval=0.1, timeout_seconds=5.0)


async def test_a_delivery_whose_process_stopped_is_taken_up_by_the_next_one(dsn: str, ledger: Ledger) -> None:
    """The first process gets no answer (nothing listens yet) and stops; the next one finds the delivery in the log and makes attempt 2."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/after-restart"
    async with serve(_app(dsn, WebhookSettings(attempts=3, backoff_seconds=3.0, poll_interval=0.1))) as first_url:
        async with httpx.AsyncClient(base_url=first_url, timeout=60) as http:
            sdk = LangGraphClient(http)
            thread = await sdk.threads.create()
            await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT, webhook=url)
            (run,) = await sdk.runs.list(thread["thread_id"])
            ref = RunRef(UUID(thread["thread_id"]), UUID(run["run_id"]))
            for _ in range(600):  # until attempt 1 (connection refused) is recorded
                if await recorded_attempts(ledger, ref):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("attempt 1 was never recorded")
    receiver = _receiver_on(port)  # now something listens where the webhook points
    try:
        async with serve(_app(dsn, FAST, workers=0)) as second_url:
            async with httpx.AsyncClient(base_url=second_url, timeout=60) as http:
                (got,) = await receiver.wait_for(1)
                assert got["body"]["run_id"] == run["run_id"]
                delivery = await delivery_of(http, thread["thread_id"], run["run_id"])
        attempts = [e["data"] for e in delivery if e["kind"] == WEBHOOK_ATTEMPT]
        assert [a["attempt"] for a in attempts] == [1, 2]
        assert "error" in attempts[0] and attempts[0]["outcome"] == "retry"
        assert attempts[1]["status_code"] == 200 and delivery[-1]["kind"] == "run.succeeded"
    finally:
        receiver.close()


def _receiver_on(port: int) -> Receiver:
    receiver = Receiver.__new__(Receiver)
    receiver.codes, receiver.got = [], []
    outer = receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            outer.got.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    receiver.port = port
    receiver.thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    receiver.thread.start()
    return receiver


async def test_a_delivery_held_by_a_deliverer_that_died_is_taken_over_once_its_lease_ends(dsn: str, ledger: Ledger) -> None:
    receiver = Receiver([503])  # the survivor's first attempt fails too: attempts go on from the log's count
    try:
        async with serve(_app(dsn, WebhookSettings(poll_interval=3600.0))) as base:  # this process never delivers
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                sdk = LangGraphClient(http)
                thread = await sdk.threads.create()
                await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT, webhook=receiver.url())
                (run,) = await sdk.runs.list(thread["thread_id"])
        ref = RunRef(UUID(thread["thread_id"]), UUID(run["run_id"]))
        taken = await take(ledger, ref, "a deliverer that dies", lease_seconds=1.0, max_attempts=FAST.attempts)
        assert taken is not None and taken.attempt == 1
        assert await take(ledger, ref, "another deliverer", lease_seconds=1.0, max_attempts=3) is None  # held
        async with serve(_app(dsn, FAST, workers=0)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                got = await receiver.wait_for(2)
                delivery = await delivery_of(http, thread["thread_id"], run["run_id"])
        assert [g["body"]["run_id"] for g in got] == [run["run_id"]] * 2
        attempts = [e["data"] for e in delivery if e["kind"] == WEBHOOK_ATTEMPT]
        assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 503), (2, 200)]
    finally:
        receiver.close()


async def test_a_webhook_that_keeps_failing_is_given_up_after_the_last_attempt(dsn: str) -> None:
    receiver = Receiver([503, 429, 500, 500])
    try:
        async with serve(_app(dsn, FAST)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                sdk = LangGraphClient(http)
                thread = await sdk.threads.create()
                await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT, webhook=receiver.url())
                (run,) = await sdk.runs.list(thread["thread_id"])
                delivery = await delivery_of(http, thread["thread_id"], run["run_id"])
                four = Receiver([404])
                try:
                    await sdk.runs.wait(thread["thread_id"], "demo", input=INPUT, webhook=four.url())
                    latest = (await sdk.runs.list(thread["thread_id"]))[0]
                    refused = await delivery_of(http, thread["thread_id"], latest["run_id"])
                finally:
                    four.close()
        attempts = [(e["data"]["attempt"], e["data"]["status_code"], e["data"]["outcome"]) for e in delivery if e["kind"] == WEBHOOK_ATTEMPT]
        assert attempts == [(1, 503, "retry"), (2, 429, "retry"), (3, 500, "failed")]
        assert delivery[-1]["kind"] == "run.failed" and delivery[-1]["data"]["attempts"] == 3
        assert len(receiver.got) == 3
        # Any other answer than 2xx, 5xx or 429 is final at once.
        assert [e["data"]["outcome"] for e in refused if e["kind"] == WEBHOOK_ATTEMPT] == ["failed"]
    finally:
        receiver.close()


async def test_a_server_with_webhook_hosts_refuses_other_hosts(dsn: str) -> None:
    app = _app(dsn, WebhookSettings(allowed_hosts=("127.0.0.1",)))
    async with serve(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            response = await http.post("/runs/wait", json={"assistant_id": "demo", "input": INPUT, "webhook": "https://example.org/hook"})
            assert response.status_code == 422 and "not allowed" in response.json()["detail"]


async def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_at_the_attempts_deadline() -> None:
    """The client's timeout bounds each read; the deadline bounds the whole POST, so it never outlasts its lease."""
    from graphledger.runs.webhooks import post

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            for byte in answer:  # each byte well inside the client's read timeout
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            whole = await post(client, f"http://127.0.0.1:{port}/hook", b"{}", deadline=60)
        assert whole.status_code == 200, whole  # the same receiver, with time for the whole answer
        async with httpx.AsyncClient(timeout=1.0) as client:
            cut = await post(client, f"http://127.0.0.1:{port}/hook", b"{}", deadline=1.0)
    finally:
        server.close()
        await server.wait_closed()
    assert cut.status_code is None and cut.retryable and "TimeoutError" in (cut.error or ""), cut
