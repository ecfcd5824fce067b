"""Budgets over real HTTP with the auth project (tests/http/authproject): 429 naming the budget, refusals read back, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import pytest

from graphledger.http import auth
from graphledger.http.app import create_app
from graphledger.ledger import Ledger, NewEvent, RunRef
from graphledger.runs import GraphRegistry, RunSettings, budget_use, cancel, demo
from graphledger.runs.budgets import Budget
from tests.http.conftest import serve
from tests.http.test_auth import ALICE, BOB, MALLORY, PROJECT, REVIEWER, client

INPUT = {"messages": [{"role": "user", "content": "two words"}]}


def cents_per_token(model: str | None, provider: str | None, at: datetime, tokens: Any) -> Decimal | None:
    """The server's price source in these tests: a cent per token of the model "priced", nothing else priced."""
    return Decimal("0.01") * tokens["total_tokens"] if model == "priced" else None


@pytest.fixture(scope="module")
async def url(dsn: str) -> AsyncIterator[str]:
    # No workers: admitted runs stay pending and hold their reservations, so what is admitted is exact.
    graphs = GraphRegistry({"demo": demo.graph, **GraphRegistry.from_config(PROJECT / "langgraph.json")._graphs})
    app = create_app(
        dsn, graphs=graphs, settings=RunSettings(workers=0), auth=auth.load(config=PROJECT / "langgraph.json"), pricer=cents_per_token
    )
    async with serve(app) as base:
        yield base


@pytest.fixture
async def clients(url: str) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    made = {name: client(url, token) for name, token in (("alice", ALICE), ("bob", BOB), ("reviewer", REVIEWER), ("mallory", MALLORY), ("anyone", None))}
    try:
        yield made
    finally:
        for c in made.values():
            await c.aclose()


async def set_budgets(ledger: Ledger, *budgets: tuple[str, dict[str, Any]]) -> None:
    await budget_use.put(ledger, [Budget.parse(name, fields) for name, fields in budgets], by="ops")


async def clean(ledger: Ledger) -> None:
    for found in await budget_use.defined(ledger):
        await budget_use.remove(ledger, found.name, by="ops")
    async with ledger.session() as session:
        active = await session.connection.fetch("SELECT thread_id, run_id FROM runs WHERE status IN ('pending', 'running')")
    for row in active:
        await cancel(ledger, RunRef(row["thread_id"], row["run_id"]))


async def create_run(c: httpx.AsyncClient, **body: Any) -> httpx.Response:
    thread = await c.post("/threads", json={})
    assert thread.status_code == 200, thread.text
    return await c.post(f"/threads/{thread.json()['thread_id']}/runs", json={"assistant_id": "demo", "input": INPUT, **body})


async def test_a_user_over_budget_gets_429_naming_it_and_a_reviewer_lists_the_refusal(
    projected: Ledger, clients: dict[str, httpx.AsyncClient]
) -> None:
    await set_budgets(projected, ("per-user", {"per": "identity", "limit": 300, "window": "1d", "reserve_per_run": 100}))
    alice, bob, reviewer = clients["alice"], clients["bob"], clients["reviewer"]
    for _ in range(3):
        assert (await create_run(alice)).status_code == 200
    refused = await create_run(alice)
    assert refused.status_code == 429, refused.text
    detail = refused.json()["detail"]
    assert "budget per-user exhausted for identity alice" in detail and "200 reserved" not in detail and "300 reserved" in detail
    assert "retry-after" not in refused.headers  # only active runs hold it: no time frees it
    stateless = await alice.post("/runs/wait", json={"assistant_id": "demo", "input": INPUT})
    assert stateless.status_code == 429 and "per-user" in stateless.json()["detail"]
    assert (await create_run(bob)).status_code == 200  # bob's budget is his own

    seen = (await reviewer.get("/budgets/refusals")).json()["refusals"]
    assert [(r["identity"], r["budget"], r["key"], r["used"], r["reserved"], r["limit"]) for r in seen] == [
        ("alice", "per-user", "alice", 0, 300, 300), ("alice", "per-user", "alice", 0, 300, 300)
    ]
    assert seen[0]["actor"]["email"] == "alice@example.org" and seen[0]["thread_id"] is None and seen[1]["thread_id"]
    assert seen[0]["definition"] == {"name": "per-user", "per": "identity", "metric": "total_tokens", "limit": 300, "window": "1d", "reserve_per_run": 100}
    own = (await alice.get("/budgets/refusals")).json()["refusals"]
    assert [r["position"] for r in own] == [r["position"] for r in seen]
    assert (await bob.get("/budgets/refusals")).json() == {"refusals": []}
    assert (await bob.get("/budgets/refusals", params={"identity": "alice"})).json() == {"refusals": []}  # not his to see
    assert len((await reviewer.get("/budgets/refusals", params={"identity": "alice", "limit": 1})).json()["refusals"]) == 1
    assert (await reviewer.get("/budgets/refusals", params={"budget": "other"})).json() == {"refusals": []}
    assert (await clients["mallory"].get("/budgets/refusals")).status_code == 403
    assert (await clients["anyone"].get("/budgets/refusals")).status_code == 401
    for params in ({"limit": "0"}, {"since": "soon"}, {"since": "2026-11-02", "until": "2026-11-01"}, {"identity": "a\x00b"}):
        bad = await reviewer.get("/budgets/refusals", params=params)
        assert bad.status_code == 422 and "detail" in bad.json(), (params, bad.text)
    await clean(projected)


async def test_a_window_that_frees_up_says_when_in_retry_after(projected: Ledger, clients: dict[str, httpx.AsyncClient]) -> None:
    await set_budgets(projected, ("bob-daily", {"per": "identity", "match": "bob", "limit": 100, "window": "1d"}))
    first = await create_run(clients["bob"])
    ref = RunRef(UUID(first.json()["thread_id"]), UUID(first.json()["run_id"]))
    usage = {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}
    async with projected.transaction() as tx:
        await tx.append(ref, [NewEvent.of("llm.usage", {"call_id": "c1", "model": "fake", "usage": usage})])
    refused = await create_run(clients["bob"])
    assert refused.status_code == 429 and "bob-daily" in refused.json()["detail"] and "150" in refused.json()["detail"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400  # when that call leaves the 1-day window
    assert (await create_run(clients["alice"])).status_code == 200  # the budget matches bob only
    await clean(projected)


async def test_concurrent_requests_against_a_budget_admit_exactly_its_room(projected: Ledger, clients: dict[str, httpx.AsyncClient]) -> None:
    await set_budgets(projected, ("burst", {"per": "metadata.team", "limit": 500, "window": "1d", "reserve_per_run": 100}))
    bob = clients["bob"]
    threads = [(await bob.post("/threads", json={})).json()["thread_id"] for _ in range(20)]

    async def run(thread_id: str) -> httpx.Response:
        return await bob.post(f"/threads/{thread_id}/runs", json={"assistant_id": "demo", "input": INPUT, "metadata": {"team": "burst"}})

    answers = await asyncio.gather(*(run(t) for t in threads))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 15, [a.text for a in answers if a.status_code not in (200, 429)]
    assert all("budget burst exhausted for metadata.team burst" in a.json()["detail"] for a in answers if a.status_code == 429)
    refusals = (await clients["reviewer"].get("/budgets/refusals", params={"budget": "burst"})).json()["refusals"]
    assert len(refusals) == 15 and {r["identity"] for r in refusals} == {"bob"}
    await clean(projected)


async def test_a_cost_budget_is_priced_by_the_servers_price_source(projected: Ledger, clients: dict[str, httpx.AsyncClient]) -> None:
    await set_budgets(projected, ("alice-spend", {"per": "identity", "match": "alice", "metric": "cost_usd", "limit": "2", "window": "1d"}))
    alice = clients["alice"]
    first = (await create_run(alice)).json()
    ref = RunRef(UUID(first["thread_id"]), UUID(first["run_id"]))
    usage = {"input_tokens": 200, "output_tokens": 50, "total_tokens": 250}
    async with projected.transaction() as tx:
        await tx.append(ref, [NewEvent.of("llm.usage", {"call_id": "p1", "model": "priced", "usage": usage})])
    await cancel(projected, ref)
    refused = await create_run(alice)
    assert refused.status_code == 429, refused.text
    assert "budget alice-spend exhausted for identity alice: 2.5 of 2 cost_usd" in refused.json()["detail"]
    (seen,) = (await clients["reviewer"].get("/budgets/refusals", params={"budget": "alice-spend"})).json()["refusals"]
    assert (seen["used"], seen["limit"], seen["unpriced_calls"]) == ("2.5", "2", 0)
    await clean(projected)
