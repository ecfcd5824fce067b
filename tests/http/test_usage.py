"""``GET /usage`` over real HTTP: runs of the demo graph summed per bucket and group, OpenTelemetry names,
bad parameters, and what each caller may see when authorization filters threads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from graphledger import projections
from graphledger.http import auth
from graphledger.http.app import create_app
from graphledger.ledger import RunRef
from graphledger.runs import GraphRegistry, RunSettings, demo
from tests.http.conftest import serve
from tests.http.test_reads import finished_run

PROJECT = Path(__file__).parent / "authproject"


async def test_usage_per_bucket_and_model_with_semantic_convention_names(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    tid, rid = await finished_run(sdk)
    thread = (await http.get(f"/threads/{tid}/usage")).json()["totals"]
    answer = (await http.get("/usage", params={"bucket": "hour", "group_by": "model,status", "since": "2d"})).json()
    assert answer["plan"] == "rollup" and answer["currency"] == "USD"
    assert answer["group_by"] == ["gen_ai.request.model", "status"]
    rows = [row for row in answer["rows"] if row["gen_ai.request.model"] == demo.MODEL_NAME]
    assert sum(row["calls"] for row in rows) >= thread["calls"] > 0
    row = rows[-1]
    assert row["start"].endswith("+00:00") and row["status"] == "success"
    for name in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read.input_tokens",
                 "gen_ai.usage.cache_creation.input_tokens", "reasoning_tokens", "total_tokens", "runs", "unknown_usage_calls"):
        assert isinstance(row[name], int)
    # The demo's model is in no price list: its calls are unpriced, with their tokens, never free.
    assert row["cost"] is None and row["cost_sources"] == []
    assert row["unpriced"]["calls"] == row["calls"] and row["unpriced"]["gen_ai.usage.input_tokens"] == row["gen_ai.usage.input_tokens"]

    # One thread, from the calls: the same sums as the thread's own usage.
    mine = (await http.get("/usage", params={"bucket": "month", "tz": "Europe/Berlin", "thread": tid, "since": "2d", "group_by": "thread"})).json()
    assert mine["plan"] == "calls"
    assert sum(r["calls"] for r in mine["rows"]) == thread["calls"]
    assert sum(r["gen_ai.usage.input_tokens"] for r in mine["rows"]) == thread["input_tokens"]
    assert {r["gen_ai.conversation.id"] for r in mine["rows"]} == {tid}
    assert mine["rows"][0]["start"][-6:] in ("+01:00", "+02:00")


async def test_percentiles_and_metadata_groups(sdk: LangGraphClient, http: httpx.AsyncClient) -> None:
    await finished_run(sdk, metadata={"team": "search"})
    answer = (await http.get("/usage", params={"group_by": "metadata.team", "metadata.team": "search", "percentiles": "true", "since": "1d"})).json()
    (row,) = answer["rows"]
    assert row["metadata.team"] == "search" and row["calls"] >= 1
    duration = row["gen_ai.client.operation.duration"]
    assert set(duration) == {"p50", "p95", "p99"} and 0 <= duration["p50"] <= duration["p95"] <= duration["p99"]
    assert row["time_to_first_token"]["p50"] is not None  # the demo model streams
    per_run = row["run.time_to_first_token"]
    assert set(per_run) == {"p50", "p95", "p99"} and 0 < per_run["p50"] <= per_run["p95"] <= per_run["p99"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"bucket": "fortnight"}, "bucket"),
        ({"tz": "Mars/Olympus_Mons"}, "time zone"),
        ({"group_by": "colour"}, "unknown dimension"),
        ({"group_by": "model,model"}, "twice"),
        ({"colour": "red"}, "unknown parameter"),
        ({"model": ","}, "no values"),
        ({"assistant": "\x00"}, "NUL"),
        ({"metadata.team": "a\x00b"}, "NUL"),
        ({"since": "yesterday"}, "ISO 8601"),
        ({"since": "999999w"}, "year 1"),
        ({"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}, "since"),
        ({"bucket": "hour", "since": "2000-01-01"}, "buckets"),
        ({"percentiles": "maybe"}, "percentiles"),
    ],
)
async def test_bad_parameters_are_422_with_detail(http: httpx.AsyncClient, params: dict[str, str], words: str) -> None:
    response = await http.get("/usage", params=params)
    assert response.status_code == 422
    assert words in response.json()["detail"]


# -- access ------------------------------------------------------------------------------------


def client(url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
async def guarded_url(dsn: str) -> AsyncIterator[str]:
    app = create_app(
        dsn,
        graphs=GraphRegistry.from_config(PROJECT / "langgraph.json"),
        settings=RunSettings(workers=1, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        auth=auth.load(config=PROJECT / "langgraph.json", cwd=PROJECT),
    )
    async with serve(app) as base:
        yield base


async def test_each_caller_sees_the_usage_of_the_threads_it_may_see(guarded_url: str, dsn: str) -> None:
    ledger = await projections.connect(dsn, tail=False)
    tokens: dict[str, int] = {}
    try:
        for user, count in (("alice", 100), ("bob", 7)):
            async with client(guarded_url, f"token-{user}") as http:
                thread = UUID((await http.post("/threads", json={})).json()["thread_id"])
            created = await ledger.create_run(thread, payload={"assistant_id": "whoami", "input": {}, "actor": {"identity": user}})
            ref = RunRef(thread, created.run_id)
            await ledger.append(ref, "llm.usage", {"call_id": "c", "model": "guarded-model", "usage": {"input_tokens": count, "output_tokens": 1}})
            await ledger.append(ref, "run.succeeded", {})
            tokens[user] = count
    finally:
        await ledger.close()

    async def seen(token: str | None) -> Any:
        async with client(guarded_url, token) as http:
            return await http.get("/usage", params={"model": "guarded-model", "group_by": "identity", "since": "1d"})

    alice = (await seen("token-alice")).json()
    assert alice["plan"] == "calls"
    assert [(r["user.id"], r["gen_ai.usage.input_tokens"]) for r in alice["rows"]] == [("alice", 100)]
    bob = (await seen("token-bob")).json()
    assert [(r["user.id"], r["gen_ai.usage.input_tokens"]) for r in bob["rows"]] == [("bob", 7)]
    reviewer = (await seen("token-reviewer")).json()
    assert reviewer["plan"] == "rollup"  # reads everything: no filter to apply
    assert sorted((r["user.id"], r["gen_ai.usage.input_tokens"]) for r in reviewer["rows"]) == [("alice", 100), ("bob", 7)]
    assert (await seen("token-mallory")).status_code == 403
    assert (await seen(None)).status_code == 401
