"""The last-resort 500 answer, and bad input that must be refused at the door instead of reaching it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from graphledger.http.app import create_app
from graphledger.http.common import MAX_JSON_DEPTH
from graphledger.runs import GraphRegistry, RunSettings, demo
from tests.http.conftest import serve

INPUT = {"messages": [{"role": "user", "content": "hello there"}]}


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


@pytest.fixture(scope="module")
async def base_url(dsn: str) -> AsyncIterator[str]:
    """The app with the default body limit (so that a deep body is refused for its depth) and a route that raises."""
    app = create_app(
        dsn,
        graphs=GraphRegistry({"demo": demo.graph}),
        settings=RunSettings(workers=2, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        heartbeat_seconds=0.5,
    )
    app.add_route("/boom", boom)
    async with serve(app) as url:
        yield url


@pytest.fixture
def internal_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """The records the last-resort handler has logged so far in the test."""
    caplog.set_level(logging.ERROR, logger="graphledger.http")

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "graphledger.http" and r.getMessage().startswith("internal error")]

    return records


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert found is not None, head
    body = await asyncio.wait_for(reader.readexactly(int(found.group(1))), 10)
    return int(head.split(b" ", 2)[1]), head, body


async def test_an_unexpected_exception_is_a_logged_json_500_on_a_connection_that_stays_open(
    base_url: str, internal_errors: Callable[[], list[logging.LogRecord]]
) -> None:
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        status, head, body = await _exchange(reader, writer, "/boom")
        assert status == 500
        assert json.loads(body) == {"detail": "internal error"}
        assert b"connection: close" not in head.lower()
        status, _, body = await _exchange(reader, writer, "/ok")  # the same connection
        assert status == 200 and json.loads(body) == {"ok": True}
    finally:
        writer.close()
        await writer.wait_closed()
    [record] = internal_errors()
    assert "GET /boom" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def nested(depth: int, leaf: str = "0") -> str:
    """JSON text of ``depth`` arrays around ``leaf``."""
    return "[" * depth + leaf + "]" * depth


def run_body(input_json: str) -> str:
    return '{"assistant_id": "demo", "input": ' + input_json + "}"


def message_with(value_json: str) -> str:
    """An input whose one message carries ``value_json`` in its additional_kwargs (five levels into the body)."""
    return '{"messages": [{"role": "user", "content": "hello there", "additional_kwargs": {"x": ' + value_json + "}}]}"


BAD_BODIES: list[tuple[str, str, bytes]] = [
    ("nested 100,000 levels", "/threads", nested(100_000).encode()),
    ("unclosed 100,000 levels", "/threads", b"[" * 100_000),
    ("nested objects", "/threads", ('{"a":' * 5000 + "0" + "}" * 5000).encode()),
    ("input nested 900 levels", "/threads/{thread_id}/runs", run_body(nested(900)).encode()),
    ("one level too deep", "/threads/{thread_id}/runs/wait", run_body(message_with(nested(MAX_JSON_DEPTH - 4))).encode()),
    ("NaN", "/threads", b'{"metadata": {"x": NaN}}'),
    ("Infinity", "/threads/{thread_id}/runs", run_body('{"x": Infinity}').encode()),
    ("-Infinity", "/runs/wait", run_body('[-Infinity]').encode()),
    ("1e999", "/threads/{thread_id}/runs/stream", run_body('{"x": 1e999}').encode()),
    ("-1e400", "/threads/{thread_id}/runs", run_body(message_with("-1e400")).encode()),
    ("4000 digits", "/threads/{thread_id}/runs", run_body(message_with("7" * 4000)).encode()),
    ("5000 digits", "/runs/stream", run_body("9" * 5000).encode()),
    ("2**63", "/threads/{thread_id}/runs", run_body(message_with(str(2**63))).encode()),
    ("-2**63-1", "/threads", ('{"metadata": {"x": ' + str(-(2**63) - 1) + "}}").encode()),
    ("2**64", "/runs/wait", run_body(str(2**64)).encode()),
    ("not UTF-8", "/threads", b'{"metadata": {"x": "\xff"}}'),
]
BAD_TIMES = [
    "until=0001-01-01T00:00:00%2B01:00",  # year 0 in UTC
    "since=9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    "since=10000-01-01T00:00:00",
    "until=0000-12-31T00:00:00",
    "since=9999-12-31T23:59:59&until=0001-01-01T00:00:00",  # in range, but since is after until
]
GOOD_TIMES = ["since=9999-12-31T23:59:59", "since=9999-12-31T23:59:59.999999%2B00:00", "until=0001-01-01T00:00:00", "until=0001-01-01T01:00:00%2B01:00"]


@pytest.fixture(scope="module")
async def finished(base_url: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        thread = (await http.post("/threads", json={})).json()
        (await http.post(f"/threads/{thread['thread_id']}/runs/wait", json={"assistant_id": "demo", "input": INPUT})).raise_for_status()
        run = (await http.get(f"/threads/{thread['thread_id']}/runs")).json()[0]
    return {"thread_id": thread["thread_id"], "run_id": run["run_id"]}


async def test_bad_input_is_refused_at_the_door_and_never_reaches_the_last_resort(
    http: httpx.AsyncClient, finished: dict[str, str], internal_errors: Callable[[], list[logging.LogRecord]]
) -> None:
    answers: dict[str, httpx.Response] = {}
    for name, path, body in BAD_BODIES:
        answers[name] = await http.post(path.format(**finished), content=body, headers={"Content-Type": "application/json"})
    for query in BAD_TIMES + GOOD_TIMES:
        for path in ("/threads/{thread_id}/usage", "/threads/{thread_id}/runs/{run_id}/usage"):
            answers[f"{path} {query}"] = await http.get(f"{path.format(**finished)}?{query}")
    for name, response in answers.items():
        expected = 200 if any(name.endswith(" " + good) for good in GOOD_TIMES) else 422
        assert response.status_code == expected, (name, response.status_code, response.text[:200])
        if expected == 422:
            assert isinstance(response.json()["detail"], str) and response.json()["detail"], name
    assert answers["NaN"].json()["detail"] == "the body holds NaN, which is not a JSON number"
    assert "deeper than 100 levels" in answers["nested 100,000 levels"].json()["detail"]
    assert "beyond 64 bits" in answers["4000 digits"].json()["detail"]
    assert internal_errors() == []
    runs = (await http.get(f"/threads/{finished['thread_id']}/runs")).json()
    assert [r["run_id"] for r in runs] == [finished["run_id"]]  # nothing refused was admitted


async def test_what_the_door_lets_in_runs_to_the_end(http: httpx.AsyncClient, internal_errors: Callable[[], list[logging.LogRecord]]) -> None:
    """At the limits (depth, 64-bit integers, the largest floats) a run succeeds and the values come back unchanged."""
    value = {"deep": json.loads(nested(MAX_JSON_DEPTH - 6)), "ints": [2**63 - 1, -(2**63)], "floats": [1.7976931348623157e308, -5e-324]}
    body = run_body(message_with(json.dumps(value)))
    assert body.count("[") - body.count("]") == 0 and "[" * (MAX_JSON_DEPTH - 6) in body
    thread = (await http.post("/threads", json={})).json()
    response = await http.post(f"/threads/{thread['thread_id']}/runs/wait", content=body.encode())
    assert response.status_code == 200, response.text[:300]
    result = response.json()
    assert "__error__" not in result
    assert result["messages"][0]["additional_kwargs"]["x"] == value
    [run] = (await http.get(f"/threads/{thread['thread_id']}/runs")).json()
    assert run["status"] == "success"
    assert internal_errors() == []


async def test_a_warm_app_opens_its_pool_whole_and_freezes_its_startup_objects(dsn: str) -> None:
    """``serve``'s app (``warm=True``): every connection of the ledger's pool open before the first request, the
    startup's objects out of the garbage collector's full collections, young collections rarer; and it serves as any
    other."""
    import gc

    from graphledger.process import YOUNG_THRESHOLD

    app = create_app(dsn, graphs=GraphRegistry({"demo": demo.graph}), settings=RunSettings(workers=1, poll_interval=0.2), warm=True)
    frozen, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        async with serve(app) as url:
            ledger = app.state.ledger
            assert ledger._pool.get_size() == ledger.pool_size  # all open, none idle-closed later
            assert gc.get_freeze_count() > frozen
            assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                thread = (await http.post("/threads", json={})).json()["thread_id"]
                run = (await http.post(f"/threads/{thread}/runs/wait", json={"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": "hi"}]}}))
                assert run.status_code == 200, run.text
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
