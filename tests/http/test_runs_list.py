"""``GET /runs``: every visible run, newest first, in keyset pages, over real HTTP with LangGraph's custom auth."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from graphledger.projections.prices import PriceBook, PriceEntry, Rates
from graphledger.runs.assistants import graph_assistant_id
from tests.http.conftest import serve
from tests.http.test_auth import ALICE, BOB, REVIEWER, client, make_app

QUESTION = {"messages": [{"role": "user", "content": "count these four words"}]}


# The demo model at USD 2 per million input tokens and 10 per million output tokens; other models unpriced.
PRICES = PriceBook([PriceEntry("graphledger-demo-*", Rates(Decimal(2), Decimal(10), None, None, "price file test"))], genai=False)


@pytest.fixture(scope="module")
async def url(dsn: str) -> AsyncIterator[str]:
    app = make_app(dsn)
    app.state.prices = PRICES
    async with serve(app) as base:
        yield base


async def _run(user: httpx.AsyncClient, thread_id: str | None = None, **configurable: Any) -> tuple[str, str]:
    if thread_id is None:
        thread_id = (await user.post("/threads", json={})).json()["thread_id"]
    body = {"assistant_id": "demo", "input": QUESTION, "config": {"configurable": configurable}}
    answer = await user.post(f"/threads/{thread_id}/runs/wait", json=body)
    assert answer.status_code == 200, answer.text
    return thread_id, answer.headers["content-location"].rsplit("/", 1)[1]


@pytest.fixture(scope="module")
async def recorded(url: str) -> dict[str, Any]:
    """Alice: two runs on one thread, one failed run on another; Bob: one run."""
    async with client(url, ALICE) as alice, client(url, BOB) as bob:
        thread, first = await _run(alice)
        _, second = await _run(alice, thread)
        other, failed = await _run(alice, fail="the model is down")
        _, bobs = await _run(bob)
    return {"thread": thread, "other": other, "alice": [failed, second, first], "failed": failed, "bob": bobs}


async def _pages(user: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = await user.get("/runs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found.extend(page["runs"])
        cursor = page["next"]
        if cursor is None:
            return found


async def test_each_user_sees_the_runs_of_their_threads_newest_first(url: str, recorded: dict[str, Any]) -> None:
    async with client(url, ALICE) as alice, client(url, BOB) as bob, client(url, REVIEWER) as reviewer:
        mine = (await alice.get("/runs")).json()
        assert [r["run_id"] for r in mine["runs"]] == recorded["alice"] and mine["next"] is None
        assert [r["run_id"] for r in (await bob.get("/runs")).json()["runs"]] == [recorded["bob"]]
        everyone = {r["run_id"] for r in (await reviewer.get("/runs")).json()["runs"]}
        assert everyone >= {*recorded["alice"], recorded["bob"]}


async def test_a_run_shows_its_status_duration_and_tokens(url: str, recorded: dict[str, Any]) -> None:
    async with client(url, ALICE) as alice:
        runs = {r["run_id"]: r for r in (await alice.get("/runs")).json()["runs"]}
        first = runs[recorded["alice"][-1]]
        usage = (await alice.get(f"/threads/{recorded['thread']}/runs/{first['run_id']}/usage")).json()["totals"]
    assert first["status"] == "success" and first["assistant_id"] == str(graph_assistant_id("demo")) and first["thread_id"] == recorded["thread"]
    assert first["llm_calls"] == usage["calls"] == 2
    assert (first["input_tokens"], first["output_tokens"], first["total_tokens"]) == (
        usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]
    )
    assert first["duration_ms"] > 0 and first["error"] is None
    failed = runs[recorded["failed"]]
    assert failed["status"] == "error" and failed["error"]["message"] == "the model is down"
    assert failed["cost"] is None and failed["unpriced_calls"] == 0 and failed["llm_calls"] == 0


async def test_a_run_s_cost_is_its_priced_calls(url: str, recorded: dict[str, Any]) -> None:
    async with client(url, ALICE) as alice:
        first = next(r for r in (await alice.get("/runs")).json()["runs"] if r["run_id"] == recorded["alice"][-1])
        usage = (await alice.get(f"/threads/{recorded['thread']}/runs/{first['run_id']}/usage")).json()
    expected = float((Decimal(first["input_tokens"]) * 2 + Decimal(first["output_tokens"]) * 10) / 1_000_000)
    assert first["cost"] == pytest.approx(expected) and first["cost"] > 0
    assert (first["unpriced_calls"], first["cost_sources"]) == (0, ["price file test"])
    assert (usage["cost"], usage["unpriced_calls"], usage["cost_sources"]) == (first["cost"], 0, ["price file test"])


async def test_calls_no_source_prices_are_counted_not_free(dsn: str, recorded: dict[str, Any]) -> None:
    app = make_app(dsn)
    app.state.prices = PriceBook(genai=False)  # knows no model
    async with serve(app) as base, client(base, ALICE) as alice:
        runs = (await alice.get("/runs")).json()["runs"]
    first = next(r for r in runs if r["run_id"] == recorded["alice"][-1])
    assert (first["cost"], first["unpriced_calls"], first["cost_sources"]) == (None, 2, [])


async def test_pages_cover_every_run_once_while_new_runs_arrive(url: str, recorded: dict[str, Any]) -> None:
    async with client(url, ALICE) as alice:
        first = (await alice.get("/runs", params={"limit": 1})).json()
        await _run(alice, recorded["other"])  # newer than every cursor: not on the pages after one
        rest = await _pages(alice, limit=1, cursor=first["next"])
        walked = [r["run_id"] for r in first["runs"] + rest]
        assert walked == recorded["alice"]
        everything = await _pages(alice, limit=2)
    assert len(everything) == 4 and len({r["run_id"] for r in everything}) == 4
    stamps = [(r["created_at"], r["run_id"]) for r in everything]
    assert stamps == sorted(stamps, reverse=True)


async def test_filters(url: str, recorded: dict[str, Any]) -> None:
    async with client(url, ALICE) as alice:
        by_thread = await _pages(alice, thread_id=recorded["thread"], limit=1)
        assert [r["run_id"] for r in by_thread] == recorded["alice"][1:]
        assert [r["run_id"] for r in await _pages(alice, status="error")] == [recorded["failed"]]
        assert await _pages(alice, assistant_id="whoami") == []
        assert len(await _pages(alice, assistant_id="demo")) >= 3  # a graph's name stands for its assistant
        assert len(await _pages(alice, assistant_id=str(graph_assistant_id("demo")))) >= 3
        oldest = (await _pages(alice))[-1]
        created = datetime.fromisoformat(oldest["created_at"])
        assert [r["run_id"] for r in await _pages(alice, until=created.isoformat())] == []
        assert (await _pages(alice, until=(created + timedelta(microseconds=1)).isoformat()))[0]["run_id"] == oldest["run_id"]
        future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
        assert await _pages(alice, since=future) == []


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"thread_id": "not-a-uuid"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"since": "yesterday"},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"cursor": "bm90IGEgY3Vyc29y"},
        {"cursor": base64.urlsafe_b64encode(b"2026-01-01T00:00:00|00000000-0000-0000-0000-000000000000").decode()},
        {"cursor": "!!"},
        {"assistant_id": "\x00"},
        {"assistant_id": "a" * 1001},
    ],
)
async def test_bad_input_is_422(url: str, params: dict[str, str]) -> None:
    async with client(url, ALICE) as alice:
        answer = await alice.get("/runs", params=params)
    assert answer.status_code == 422, answer.text
    assert isinstance(answer.json()["detail"], str)


async def test_without_credentials_it_is_401(url: str) -> None:
    async with client(url, None) as anonymous, client(url, "token-nobody") as stranger:
        assert (await anonymous.get("/runs")).status_code == 401
        assert (await stranger.get("/runs")).status_code == 401


async def test_a_user_the_handler_refuses_gets_403(url: str) -> None:
    async with client(url, "token-mallory") as mallory:
        answer = await mallory.get("/runs")
    assert (answer.status_code, answer.json()) == (403, {"detail": "Forbidden"})
