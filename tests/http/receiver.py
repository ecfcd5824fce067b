"""A webhook receiver on 127.0.0.1 for the tests, and reads of the deliveries a thread's export records."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from graphledger.ledger import Ledger, RunRef
from graphledger.runs.webhooks import DELIVER_WEBHOOK, WEBHOOK_ATTEMPT


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next of ``codes`` (then 200), and keeps what it got."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = list(codes)
        self.got: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.got.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://hook-user:hook-password@127.0.0.1:{self.port}{path}?token=query-secret-value&kind=done"

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        for _ in range(600):  # bounded: 60 s at most on a loaded machine
            if len(self.got) >= count:
                return self.got
            await asyncio.sleep(0.1)
        raise AssertionError(f"the receiver got {len(self.got)} webhooks, not {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def export(http: httpx.AsyncClient, thread_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"/threads/{thread_id}/export")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line]


def events_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of an export, their payloads decoded."""
    return [{**line, "data": json.loads(line["data"])} for line in lines if line.get("type") == "event"]


async def delivery_of(http: httpx.AsyncClient, thread_id: str, run_id: str) -> list[dict[str, Any]]:
    """The events of the run that records the webhook delivery of ``run_id``, waited for until it ended."""
    for _ in range(600):
        events = events_of(await export(http, thread_id))
        records = {
            e["run_id"] for e in events
            if e["kind"] == "run.created" and e["data"].get("command") == DELIVER_WEBHOOK and e["data"].get("record_of") == run_id
        }
        if records:
            (record,) = records
            mine = [e for e in events if e["run_id"] == record]
            if mine[-1]["kind"] in ("run.succeeded", "run.failed"):
                return mine
        await asyncio.sleep(0.1)
    raise AssertionError("the delivery never ended")


async def recorded_attempts(ledger: Ledger, ref: RunRef) -> list[dict[str, Any]]:
    """The attempts recorded so far for the webhook of ``ref`` (read from the log: an export leaves out a delivery not yet ended)."""
    async with ledger.session() as session:
        record = await session.heads.record(ref, DELIVER_WEBHOOK)
        if record is None:
            return []
        return [e.value for e in await session.read_run(record.ref) if e.kind == WEBHOOK_ATTEMPT]
