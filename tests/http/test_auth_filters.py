"""Authorization filters, every operator, applied by PostgreSQL: over real HTTP, with an auth.py whose handler returns each one.

The threads differ in the ways a filter must tell apart: a value and a list
holding it, an object and a larger one, a list and a longer or reordered one,
a list and a string. Each user's filter must show exactly the threads it
matches, on a read, a run list, a search, a count and an admission.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graphledger.http import auth
from graphledger.http.app import create_app
from graphledger.runs import GraphRegistry, RunSettings
from graphledger.runs.graphs import load_spec
from tests.http.conftest import serve

PROJECT = Path(__file__).parent / "authproject"
ORG = {"id": 1, "name": "acme"}
THREADS: dict[str, dict[str, Any]] = {
    "ann": {"owner": "ann", "org": ORG, "tags": ["a", "b"], "members": ["ann", "bob", "cy"]},
    "ann-alone": {"owner": "ann", "org": {"name": "acme", "id": 1}, "tags": ["a"], "members": ["ann"]},
    "ann-gold": {"owner": "ann", "org": {**ORG, "tier": "gold"}, "tags": ["a", "b"], "members": ["bob", "ann"]},
    "bob": {"owner": "bob", "org": {**ORG, "tier": "gold"}, "tags": ["a", "b", "c"], "members": ["bob"]},
    "lists": {"owner": ["ann"], "org": {"id": 1}, "tags": ["b", "a"], "members": "ann"},
    "nested": {"owner": {"name": "ann"}, "org": [ORG], "tags": [["a", "b"]], "members": [["ann", "bob"]]},
    "none": {},
}
VISIBLE: dict[str, set[str]] = {
    "eq-scalar": {"ann", "ann-alone", "ann-gold"},
    "scalar": {"ann", "ann-alone", "ann-gold"},
    "eq-object": {"ann", "ann-alone"},
    "object": {"ann", "ann-alone"},
    "eq-list": {"ann", "ann-gold"},
    "list": {"ann", "ann-gold"},
    "contains-scalar": {"ann", "ann-alone", "ann-gold"},
    "contains-list": {"ann", "ann-gold"},
    "several-keys": {"ann"},
}


def client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module")
async def url(dsn: str) -> AsyncIterator[str]:
    app = create_app(
        dsn,
        graphs=GraphRegistry.from_config(PROJECT / "langgraph.json"),
        settings=RunSettings(workers=1, lease_seconds=2.0, lease_grace_seconds=1.0, poll_interval=0.2, drain_seconds=1.0),
        auth=auth.load("./filters.py:auth", cwd=PROJECT),
    )
    async with serve(app) as base:
        yield base


@pytest.fixture(scope="module")
async def threads(url: str) -> dict[str, str]:
    """The threads, by name: their ids."""
    async with client(url, "admin") as admin:
        made = {name: (await admin.post("/threads", json={"metadata": metadata})).json() for name, metadata in THREADS.items()}
    assert all(made[name]["metadata"] == metadata for name, metadata in THREADS.items())
    return {name: thread["thread_id"] for name, thread in made.items()}


def test_the_cases_cover_every_filter() -> None:
    assert set(VISIBLE) == set(load_spec("./filters.py:FILTERS", PROJECT))


@pytest.mark.parametrize("user", sorted(VISIBLE))
async def test_a_filter_shows_exactly_the_threads_it_matches(url: str, threads: dict[str, str], user: str) -> None:
    expected = VISIBLE[user]
    ids = list(threads.values())
    async with client(url, user) as http:
        found = {t["thread_id"] for t in (await http.post("/threads/search", json={"ids": ids, "limit": 100})).json()}
        assert found == {threads[name] for name in expected}
        everything = {t["thread_id"] for t in (await http.post("/threads/search", json={"limit": 1000})).json()}
        assert everything == found  # the module's database holds these threads only
        assert (await http.post("/threads/count", json={"ids": ids})).json() == len(expected)
        for name, tid in threads.items():
            visible = name in expected
            read = await http.get(f"/threads/{tid}")
            assert read.status_code == (200 if visible else 404), (name, read.text)
            if visible:
                assert read.json()["metadata"] == THREADS[name]
            assert (await http.get(f"/threads/{tid}/runs")).status_code == (200 if visible else 404), name
            if not visible:  # an admission locks the thread under the filter
                admitted = await http.post(f"/threads/{tid}/runs", json={"assistant_id": "whoami", "input": {}})
                assert admitted.status_code == 404, (name, admitted.text)


async def test_a_run_on_a_visible_thread_is_admitted_and_seen(url: str, threads: dict[str, str]) -> None:
    async with client(url, "several-keys") as http:
        tid = threads["ann"]
        answer = await http.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "whoami", "input": {}})
        assert answer.status_code == 200 and answer.json()["who"]["identity"] == "several-keys"
        assert [r["status"] for r in (await http.get(f"/threads/{tid}/runs")).json()] == ["success"]
    async with client(url, "eq-list") as other:  # "ann" matches its filter too; "bob" matches neither
        assert len((await other.get(f"/threads/{tid}/runs")).json()) == 1
        assert (await other.get(f"/threads/{threads['bob']}/runs")).status_code == 404


async def test_a_run_is_deleted_or_cancelled_in_bulk_only_through_the_filter(url: str, threads: dict[str, str]) -> None:
    tid = threads["bob"]
    async with client(url, "admin") as admin:
        assert (await admin.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "whoami", "input": {}})).status_code == 200
        (run,) = (await admin.get(f"/threads/{tid}/runs")).json()
    path = f"/threads/{tid}/runs/{run['run_id']}"
    async with client(url, "scalar") as ann:  # sees ann's threads, not bob's: the run is as unknown as one that never was
        assert (await ann.delete(path)).status_code == 404
        cancelled = await ann.post("/runs/cancel", json={"thread_id": tid, "run_ids": [run["run_id"]]})
        assert cancelled.status_code == 404 and cancelled.json() == {"detail": "No runs found to cancel."}
    async with client(url, "admin") as admin:
        assert (await admin.get(path)).status_code == 200
        assert (await admin.delete(path)).status_code == 204
        assert (await admin.get(path)).status_code == 404
        lines = [json.loads(line) for line in (await admin.get(f"/threads/{tid}/export")).text.splitlines()]
    created = [json.loads(line["data"]) for line in lines if line.get("type") == "event" and line["kind"] == "run.created"]
    (deletion,) = [c for c in created if c.get("command") == "delete_run"]
    assert deletion["record_of"] == run["run_id"] and deletion["actor"]["identity"] == "admin"
