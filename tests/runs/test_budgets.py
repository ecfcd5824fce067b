"""Budgets at admission on a real database: the rule, its windows, reservations under concurrency, refusals recorded."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from graphledger.ledger import Ledger, NewEvent, RunRef
from graphledger.runs import GraphRegistry, RunRequest, admit, budget_use, cancel
from graphledger.runs.budgets import Budget, Use, parse_file, retry_after
from graphledger.runs.errors import InvalidBudget, OverBudget
from tests._db import raw
from tests.runs.conftest import ask

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def budget(name: str = "b", **fields: Any) -> Budget:
    return Budget.parse(name, {"per": "metadata.team", "limit": 1000, "window": "1d", **fields})


def as_user(request: RunRequest, identity: str, **fields: Any) -> RunRequest:
    request.set_actor({"identity": identity, "permissions": [], **fields})
    return request


async def used(ledger: Ledger, ref: RunRef, tokens: int, *, ago: timedelta = timedelta(0), model: str = "fake", end: bool = True) -> None:
    """Record an LLM call of ``tokens`` on the run, ``ago`` in the past (its recorded time), and end the run."""
    usage = {"input_tokens": tokens // 2, "output_tokens": tokens - tokens // 2, "total_tokens": tokens}
    event = NewEvent.of("llm.usage", {"call_id": str(uuid4()), "model": model, "usage": usage})
    async with ledger.transaction() as tx:
        await tx.append(ref, [event], ts=datetime.now(timezone.utc) - ago)
    if end:
        await cancel(ledger, ref)


async def clean(ledger: Ledger) -> None:
    for found in await budget_use.defined(ledger):
        await budget_use.remove(ledger, found.name, by="test")


# -- the definition, pure -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("", {"per": "identity", "limit": 1, "window": "1d"}, "budget name ''"),
        ("b", {"limit": 1, "window": "1d"}, "per is required"),
        ("b", {"per": "tenant", "limit": 1, "window": "1d"}, "per must be identity, user.<field> or metadata.<key>"),
        ("b", {"per": "identity", "limit": 0, "window": "1d"}, "limit must be a positive number"),
        ("b", {"per": "identity", "limit": -5, "window": "1d"}, "limit must be a positive number"),
        ("b", {"per": "identity", "limit": "lots", "window": "1d"}, "limit must be a number"),
        ("b", {"per": "identity", "limit": 1.5, "window": "1d"}, "a whole number"),
        ("b", {"per": "identity", "limit": True, "window": "1d"}, "limit must be a number"),
        ("b", {"per": "identity", "limit": 1, "window": "week"}, "window must be day, month, <N>h or <N>d"),
        ("b", {"per": "identity", "limit": 1, "window": "0d"}, "window must be"),
        ("b", {"per": "identity", "limit": 1, "window": "1d", "metric": "words"}, "metric must be one of"),
        ("b", {"per": "identity", "limit": 1, "window": "1d", "reserve_per_run": -1}, "reserve_per_run must be a non-negative"),
        ("b", {"per": "identity", "limit": 1, "window": "1d", "colour": "red"}, "unknown field 'colour'"),
        ("b", {"per": "identity", "limit": 1, "window": "1d", "match": ""}, "match must be"),
    ],
)
def test_a_bad_definition_is_one_line_naming_what_is_wrong(name: str, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidBudget, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("*", r"\*")) as raised:
        Budget.parse(name, fields)
    assert "\n" not in str(raised.value)


def test_a_cost_limit_is_an_exact_decimal_and_tokens_are_whole() -> None:
    cost = Budget.parse("c", {"per": "identity", "metric": "cost_usd", "limit": "12.50", "window": "month"})
    assert cost.limit == Decimal("12.50") and cost.json()["limit"] == "12.5"
    assert budget(limit="2000").limit == 2000


def test_keys_come_from_the_recorded_request() -> None:
    created = {"actor": {"identity": "alice", "org": 7, "admin": True}, "metadata": {"team": "search", "tags": ["x"]}}
    assert Budget.parse("i", {"per": "identity", "limit": 1, "window": "1d"}).key_of(created) == "alice"
    assert Budget.parse("o", {"per": "user.org", "limit": 1, "window": "1d"}).key_of(created) == "7"
    assert Budget.parse("a", {"per": "user.admin", "limit": 1, "window": "1d"}).key_of(created) == "true"
    assert budget().key_of(created) == "search"
    assert budget(match="search").key_of(created) == "search" and budget(match="ads").key_of(created) is None
    assert Budget.parse("t", {"per": "metadata.tags", "limit": 1, "window": "1d"}).key_of(created) is None  # not a scalar
    assert Budget.parse("i", {"per": "identity", "limit": 1, "window": "1d"}).key_of({"metadata": {}}) is None  # no auth


def test_windows_start_where_they_say() -> None:
    assert budget(window="1d").start(NOW) == NOW - timedelta(days=1)
    assert budget(window="12h").start(NOW) == NOW - timedelta(hours=12)
    assert budget(window="day").start(NOW) == datetime(2026, 11, 29, tzinfo=timezone.utc)
    assert budget(window="month").start(NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert budget(window="month").next_start(datetime(2026, 12, 31, 23, tzinfo=timezone.utc)) == datetime(2027, 1, 1, tzinfo=timezone.utc)


def test_retry_after_is_when_the_window_lets_go_of_enough() -> None:
    rolling = budget(limit=100, window="1d")
    calls = [(NOW - timedelta(hours=23), 60), (NOW - timedelta(hours=2), 50)]
    use = Use(rolling, "k", 110, 0, rolling.start(NOW))
    assert not use.admits
    assert retry_after(use, calls, NOW) == 3600  # the 60 of 23 hours ago leaves the window in an hour
    reserved = Use(budget(limit=100, window="1d", reserve_per_run=50), "k", 110, 60, rolling.start(NOW))
    assert retry_after(reserved, calls, NOW) is None  # active runs hold more than room for one: not by time alone
    daily = budget(limit=100, window="day")
    assert retry_after(Use(daily, "k", 150, 0, daily.start(NOW)), [], NOW) == 12 * 3600


def test_a_budget_file_in_toml_or_json() -> None:
    toml = '[budgets.daily]\nper = "identity"\nlimit = 200000\nwindow = "1d"\n\n[budgets.search]\nper = "metadata.team"\nmatch = "search"\nlimit = 5\nwindow = "month"\n'
    assert [b.name for b in parse_file(toml, "budgets.toml")] == ["daily", "search"]
    assert parse_file('{"budgets": {"d": {"per": "identity", "limit": 1, "window": "day"}}}', "b.json")[0].window == "day"
    for text, source, message in [
        ("[budgets.daily\n", "b.toml", "b.toml: not TOML"),
        ("{", "b.json", "b.json: not JSON"),
        ("[other]\nx = 1\n", "b.toml", 'expected only a "budgets" table'),
        ("[budgets]\n", "b.toml", "no budgets in it"),
        ('[budgets.d]\nper = "identity"\nlimit = 0\nwindow = "1d"\n', "b.toml", "b.toml: budget d: limit must be a positive"),
    ]:
        with pytest.raises(InvalidBudget, match=message.replace("[", r"\[")) as raised:
            parse_file(text, source)
        assert "\n" not in str(raised.value)


# -- admission on the database -----------------------------------------------------------


async def test_a_token_budget_refuses_once_used_up_and_records_the_refusal(ledger: Ledger, graphs: GraphRegistry) -> None:
    await budget_use.put(ledger, [budget("search-daily", match="search", limit=100)], by="ops")
    first = await admit(ledger, ask(metadata={"team": "search"}), graphs=graphs)
    await used(ledger, first.ref, 120)
    other = await admit(ledger, ask(metadata={"team": "ads"}), graphs=graphs)  # not under it
    await cancel(ledger, other.ref)
    async with raw(ledger) as conn:
        threads_before = await conn.fetchval("SELECT count(*) FROM threads")
    refused_run = uuid4()
    with pytest.raises(OverBudget) as raised:
        await admit(ledger, as_user(ask(metadata={"team": "search"}), "alice"), run_id=refused_run, graphs=graphs)
    assert "budget search-daily exhausted" in str(raised.value) and "120 of 100 total_tokens" in str(raised.value)
    assert raised.value.budget == "search-daily" and raised.value.retry_after is not None
    assert 0 < raised.value.retry_after <= 24 * 3600
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT count(*) FROM threads") == threads_before  # nothing but the refusal
        assert await conn.fetchval("SELECT count(*) FROM runs WHERE run_id = $1", refused_run) == 0
    (refusal,) = await budget_use.refusals(ledger, budget="search-daily")
    assert refusal.identity == "alice" and refusal.key == "search"
    assert refusal.data["used"] == 120 and refusal.data["limit"] == 100 and refusal.data["run_id"] == str(refused_run)
    assert refusal.data["actor"]["identity"] == "alice" and refusal.data["budget"]["window"] == "1d"
    assert await budget_use.refusals(ledger, identity="bob") == []
    async with raw(ledger) as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute("DELETE FROM budget_refusals")
    await clean(ledger)
    await cancel(ledger, (await admit(ledger, ask(metadata={"team": "search"}), graphs=graphs)).ref)  # no budget: admitted


async def test_usage_outside_the_window_no_longer_counts(ledger: Ledger, graphs: GraphRegistry) -> None:
    await budget_use.put(ledger, [budget("roll", match="roll", limit=100, window="1d"), budget("roll3", match="roll", limit=100, window="3d")], by="ops")
    old = await admit(ledger, ask(metadata={"team": "roll"}), graphs=graphs)
    await used(ledger, old.ref, 500, ago=timedelta(days=2))  # recorded two days ago
    uses = {use.budget.name: use for use in await budget_use.uses(ledger)}
    assert uses["roll"].used == 0 and uses["roll3"].used == 500
    with pytest.raises(OverBudget, match="budget roll3 exhausted"):  # the 3-day window still holds it
        await admit(ledger, ask(metadata={"team": "roll"}), graphs=graphs)
    await budget_use.remove(ledger, "roll3", by="ops")
    recent = await admit(ledger, ask(metadata={"team": "roll"}), graphs=graphs)  # the 1-day window does not
    await used(ledger, recent.ref, 150, ago=timedelta(hours=23))
    with pytest.raises(OverBudget) as raised:
        await admit(ledger, ask(metadata={"team": "roll"}), graphs=graphs)
    assert raised.value.retry_after is not None and raised.value.retry_after <= 3600  # when the call of 23 hours ago leaves
    async with raw(ledger) as conn:  # an admission marked the run that had ended, so later ones read it only while it may count
        marks = {row["run_id"]: row["ended_at"] for row in await conn.fetch("SELECT run_id, ended_at FROM budget_runs WHERE budget = 'roll'")}
    assert set(marks) == {old.ref.run_id, recent.ref.run_id} and marks[old.ref.run_id] is not None
    await clean(ledger)


async def test_a_new_budget_counts_the_use_its_window_already_holds(ledger: Ledger, graphs: GraphRegistry) -> None:
    before = await admit(ledger, as_user(ask(), "carol"), graphs=graphs)
    await used(ledger, before.ref, 300)
    await budget_use.put(ledger, [Budget.parse("per-user", {"per": "identity", "limit": 250, "window": "day"})], by="ops")
    with pytest.raises(OverBudget, match="for identity carol: 300 of 250"):
        await admit(ledger, as_user(ask(), "carol"), graphs=graphs)
    await cancel(ledger, (await admit(ledger, as_user(ask(), "dave"), graphs=graphs)).ref)  # each identity its own
    await cancel(ledger, (await admit(ledger, ask(), graphs=graphs)).ref)  # no identity (auth off): not under it
    await clean(ledger)


async def test_a_tenant_is_a_field_of_the_user(ledger: Ledger, graphs: GraphRegistry) -> None:
    await budget_use.put(ledger, [Budget.parse("org", {"per": "user.org", "limit": 100, "window": "1d"})], by="ops")
    first = await admit(ledger, as_user(ask(), "erin", org="acme"), graphs=graphs)
    await used(ledger, first.ref, 100)
    with pytest.raises(OverBudget, match="for user.org acme"):
        await admit(ledger, as_user(ask(), "frank", org="acme"), graphs=graphs)  # another user of the same tenant
    await cancel(ledger, (await admit(ledger, as_user(ask(), "gina", org="initech"), graphs=graphs)).ref)
    await clean(ledger)


async def test_concurrent_admissions_take_exactly_the_room_there_is(ledger: Ledger, graphs: GraphRegistry) -> None:
    # Room for 10 runs: 1000 tokens, each pending or running run reserves 100.
    await budget_use.put(ledger, [budget("burst", match="burst", limit=1000, reserve_per_run=100)], by="ops")
    attempts = 30

    async def one() -> RunRef | OverBudget:
        try:
            return (await admit(ledger, ask(metadata={"team": "burst"}), graphs=graphs)).ref
        except OverBudget as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(attempts)))
    admitted = [r for r in results if isinstance(r, RunRef)]
    refused = [r for r in results if isinstance(r, OverBudget)]
    assert len(admitted) == 10 and len(refused) == attempts - 10
    assert len(await budget_use.refusals(ledger, budget="burst")) == attempts - 10
    (use,) = [u for u in await budget_use.uses(ledger) if u.budget.name == "burst"]
    assert use.used == 0 and use.reserved == 1000 and use.percent == 100.0
    # A run that used 30 tokens and ended gives back the rest of its reservation: room for exactly one more.
    await used(ledger, admitted[0], 30)
    again = await asyncio.gather(*(one() for _ in range(5)))
    assert sum(isinstance(r, RunRef) for r in again) == 0  # 30 used + 900 reserved: 70 left, less than a run's 100
    await used(ledger, admitted[1], 0)
    again = await asyncio.gather(*(one() for _ in range(5)))
    assert sum(isinstance(r, RunRef) for r in again) == 1  # 30 + 800: 170 left, room for one
    for ref in [*admitted[2:], *(r for r in again if isinstance(r, RunRef))]:
        await cancel(ledger, ref)
    await clean(ledger)


async def test_a_running_run_holds_what_it_reserved_beyond_what_it_used(ledger: Ledger, graphs: GraphRegistry) -> None:
    await budget_use.put(ledger, [budget("hold", match="hold", limit=300, reserve_per_run=100)], by="ops")
    run = await admit(ledger, ask(metadata={"team": "hold"}), graphs=graphs)
    await used(ledger, run.ref, 40, end=False)
    (use,) = [u for u in await budget_use.uses(ledger) if u.budget.name == "hold"]
    assert (use.used, use.reserved) == (40, 60)
    await used(ledger, run.ref, 150, end=False)  # beyond its reservation: it holds nothing more
    (use,) = [u for u in await budget_use.uses(ledger) if u.budget.name == "hold"]
    assert (use.used, use.reserved) == (190, 0)
    await cancel(ledger, (await admit(ledger, ask(metadata={"team": "hold"}), graphs=graphs)).ref)  # 110 left >= 100
    await cancel(ledger, run.ref)
    await clean(ledger)


def per_token(model: str | None, provider: str | None, at: datetime, tokens: Any) -> Decimal | None:
    """A price source for tests: one cent per token, for the model named "priced" only."""
    return Decimal("0.01") * tokens["total_tokens"] if model == "priced" else None


async def test_a_cost_budget_prices_each_call_and_refuses_on_an_unpriced_one(ledger: Ledger, graphs: GraphRegistry) -> None:
    cost = Budget.parse("spend", {"per": "metadata.team", "match": "spend", "metric": "cost_usd", "limit": "1.50", "window": "1d"})
    await budget_use.put(ledger, [cost], by="ops")
    first = await admit(ledger, ask(metadata={"team": "spend"}), graphs=graphs, pricer=per_token)
    await used(ledger, first.ref, 100, model="priced")  # $1.00
    second = await admit(ledger, ask(metadata={"team": "spend"}), graphs=graphs, pricer=per_token)
    await used(ledger, second.ref, 60, model="priced")  # $1.60 in all
    with pytest.raises(OverBudget, match=r"1\.6 of 1\.5 cost_usd"):
        await admit(ledger, ask(metadata={"team": "spend"}), graphs=graphs, pricer=per_token)
    await budget_use.put(ledger, [Budget.parse("spend", {**cost.json(), "limit": 100})], by="ops")
    third = await admit(ledger, ask(metadata={"team": "spend"}), graphs=graphs, pricer=per_token)
    await used(ledger, third.ref, 10, model="mystery")  # nothing prices it: its cost is unknown, not zero
    with pytest.raises(OverBudget, match="1 calls in its window have no price") as raised:
        await admit(ledger, ask(metadata={"team": "spend"}), graphs=graphs, pricer=per_token)
    assert raised.value.retry_after is None
    (use,) = [u for u in await budget_use.uses(ledger, per_token) if u.budget.name == "spend"]
    assert use.json()["unpriced_calls"] == 1 and use.json()["used"] == "1.6"
    await clean(ledger)


async def test_changes_are_recorded_with_who_made_them(ledger: Ledger) -> None:
    await budget_use.put(ledger, [budget("audit-me", limit=5)], by="alice")
    await budget_use.put(ledger, [budget("audit-me", limit=7)], by="bob")
    await budget_use.remove(ledger, "audit-me", by="carol")
    with pytest.raises(InvalidBudget, match="there is no budget named 'audit-me'"):
        await budget_use.remove(ledger, "audit-me", by="carol")
    async with ledger.session() as session:
        changes = [(c.name, c.action, c.by, (c.definition or {}).get("limit")) for c in await session.budgets.changes()]
    assert changes[:3] == [("audit-me", "remove", "carol", None), ("audit-me", "set", "bob", 7), ("audit-me", "set", "alice", 5)]
    async with raw(ledger) as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute("UPDATE budget_changes SET by = 'mallory'")


def test_the_budget_file_in_the_architecture_doc_loads() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    section = doc[doc.index("\n## Budgets\n"):]
    example = section[section.index("```toml\n") + len("```toml\n"):section.index("```\n", section.index("```toml\n") + 7)]
    assert [b.name for b in parse_file(example, "budgets.toml")] == ["daily", "search-team", "acme"]


async def test_a_batch_over_a_budget_is_refused_whole(ledger: Ledger, graphs: GraphRegistry) -> None:
    from graphledger.runs.lifecycle import Admission, admit_batch

    await budget_use.put(ledger, [budget("batch", match="batch", limit=300, reserve_per_run=100)], by="ops")
    async with raw(ledger) as conn:
        runs_before = await conn.fetchval("SELECT count(*) FROM runs")
    with pytest.raises(OverBudget, match="budget batch exhausted for metadata.team batch: 0 \\+ 300 reserved"):
        await admit_batch(ledger, [Admission(ask(metadata={"team": "batch"})) for _ in range(4)], graphs=graphs)
    async with raw(ledger) as conn:
        assert await conn.fetchval("SELECT count(*) FROM runs") == runs_before  # the three that fitted went with the fourth
    (refusal,) = await budget_use.refusals(ledger, budget="batch")
    assert refusal.data["reserved"] == 300
    admitted = await admit_batch(ledger, [Admission(ask(metadata={"team": "batch"})) for _ in range(3)], graphs=graphs)
    for run in admitted:
        await cancel(ledger, run.ref)
    await clean(ledger)


async def test_a_cost_budget_prices_with_a_price_file(ledger: Ledger, graphs: GraphRegistry, tmp_path: Any) -> None:
    from graphledger.projections.prices import price_book
    from graphledger.runs import pricing

    prices = tmp_path / "prices.toml"
    prices.write_text('[[price]]\nmodel = "house-model"\ninput = 1000\noutput = 2000\n')  # USD per million tokens
    pricer = pricing.of_book(price_book(prices))
    cost = Budget.parse("house", {"per": "metadata.team", "match": "house", "metric": "cost_usd", "limit": "1.2", "window": "1d"})
    await budget_use.put(ledger, [cost], by="ops")
    first = await admit(ledger, ask(metadata={"team": "house"}), graphs=graphs, pricer=pricer)
    await used(ledger, first.ref, 1000, model="house-model")  # 500 in at $1000/M, 500 out at $2000/M: $1.50
    with pytest.raises(OverBudget, match=r"1\.5 of 1\.2 cost_usd"):
        await admit(ledger, ask(metadata={"team": "house"}), graphs=graphs, pricer=pricer)
    await clean(ledger)


async def test_a_run_admitted_as_its_budget_is_set_is_charged_to_it(ledger: Ledger, graphs: GraphRegistry) -> None:
    """The admission read the budgets before the new one committed, and commits after it: the setting charges it once it has."""
    await clean(ledger)
    thread = await ledger.create_thread()
    async with raw(ledger) as holder:
        async with holder.transaction():  # holds the thread's row: the admission waits on it, having read no budget
            await holder.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE", thread)
            admission = asyncio.create_task(admit(ledger, ask(metadata={"team": "search"}), thread_id=thread, graphs=graphs))
            async with raw(ledger) as watch:
                for _ in range(200):
                    if await watch.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    ):
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("the admission should be waiting for the thread's row")
            setting = asyncio.create_task(budget_use.put(ledger, [budget("team")], by="test"))
            await asyncio.sleep(0.3)
            assert not setting.done()  # it waits for the admission in flight
    ref = (await asyncio.wait_for(admission, 10)).ref
    await asyncio.wait_for(setting, 10)
    async with raw(ledger) as conn:
        charged = await conn.fetch("SELECT key FROM budget_runs WHERE budget = 'team' AND run_id = $1", ref.run_id)
    assert [row["key"] for row in charged] == ["search"]
    await cancel(ledger, ref)
    await clean(ledger)
