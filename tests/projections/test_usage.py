"""Usage over time: sums per bucket and group equal the events' own sums, in either plan; bucket edges
in a time zone with daylight saving; cost across a price change; unpriced models.

Calls at chosen times are written straight into the log (as an import
would) and projected by a rebuild, which is also how the rollup gets them.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphledger import projections
from graphledger.ledger import chain
from graphledger.ledger.events import canonical_json
from graphledger.projections import InvalidArgument, rebuild
from graphledger.projections.prices import GENAI_PRICES, PriceBook, load_price_file
from graphledger.projections.usage import DIMENSIONS, UsageQuery, usage_series

from .test_properties import in_own_loop

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
TOKEN_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cache_read", "cache_creation", "reasoning")


def call(at: datetime, model: str | None, *, caller: str = "agent", provider: str | None = None, tokens: int = 1000,
         latency: float = 100.0, usage: bool = True, ttft: float | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "at": at, "model": model, "caller": caller, "provider": provider, "latency_ms": latency, "ttft_ms": ttft,
        "usage": {"input_tokens": tokens, "output_tokens": tokens // 2, "total_tokens": tokens + tokens // 2,
                  "input_token_details": {"cache_read": tokens // 4}, "output_token_details": {"reasoning": tokens // 8}} if usage else None,
    }
    return payload


async def write_runs(conn: asyncpg.Connection, runs: list[dict[str, Any]]) -> None:
    """Write runs (thread metadata, assistant, identity, status, calls at their times) into the log, then rebuild."""
    for spec in runs:
        thread = spec.get("thread") or uuid.uuid4()
        await conn.execute(
            "INSERT INTO threads (thread_id, metadata) VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING",
            thread, json.dumps(spec.get("thread_metadata", {})),
        )
        run = uuid.uuid4()
        start = min(c["at"] for c in spec["calls"]) - timedelta(seconds=1) if spec["calls"] else spec.get("at", datetime(2026, 1, 1, tzinfo=UTC))
        created = {"assistant_id": spec.get("assistant", "agent"), "input": {}, "metadata": spec.get("metadata", {})}
        if spec.get("identity"):
            created["actor"] = {"identity": spec["identity"]}
        events: list[tuple[str, str, datetime]] = [("run.created", canonical_json(created), start), ("run.started", "{}", start)]
        for i, c in enumerate(spec["calls"]):
            payload = {"call_id": f"c{i}", "model": c["model"], "caller": c["caller"], "usage": c["usage"], "latency_ms": c["latency_ms"]}
            if c["provider"]:
                payload["provider"] = c["provider"]
            if c.get("ttft_ms") is not None:
                payload["ttft_ms"] = c["ttft_ms"]
            events.append(("llm.usage", canonical_json(payload), c["at"]))
        end = spec.get("end", "run.succeeded")
        if end:
            events.append((end, "{}", max(e[2] for e in events)))
        prefix, digest = chain.run_prefix(thread, run), chain.GENESIS
        records = []
        for seq, (kind, data, ts) in enumerate(events, start=1):
            digest = chain.link_with(digest, prefix, seq, kind, chain.format_ts(ts), data)
            records.append((thread, run, seq, kind, data, ts, digest))
        await conn.execute(
            "INSERT INTO runs (thread_id, run_id, assistant_id, status, last_seq, last_hash, last_kind, created_at) "
            "VALUES ($1, $2, 'agent', $3, $4, $5, $6, $7)",
            thread, run, "success" if end else "running", len(events), digest, events[-1][0], start,
        )
        await conn.copy_records_to_table("events", records=records, columns=["thread_id", "run_id", "seq", "kind", "data", "ts", "hash"])
    await rebuild(conn)


@pytest.fixture(scope="module")
async def reader(dsn: str) -> Any:
    ledger = await projections.connect(dsn, tail=False)
    yield ledger
    await ledger.close()


async def series(ledger: Any, plan: str | None = None, prices: PriceBook | None = None, **query: Any) -> Any:
    return await usage_series(ledger, UsageQuery(**query), prices or PriceBook(genai=False), plan=plan)


# -- bucket edges in a time zone with daylight saving -----------------------------------------


async def test_day_buckets_across_daylight_saving_changes(dsn: str, reader: Any, conn: asyncpg.Connection) -> None:
    local = [
        datetime(2026, 3, 28, 23, 30, tzinfo=BERLIN),  # +01:00
        datetime(2026, 3, 29, 0, 30, tzinfo=BERLIN),  # the 23-hour day begins (+01:00)
        datetime(2026, 3, 29, 23, 30, tzinfo=BERLIN),  # and ends (+02:00): 21:30 UTC
        datetime(2026, 3, 30, 0, 30, tzinfo=BERLIN),  # next day, 22:30 UTC on the 29th
        datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN),  # the 25-hour day (+02:00)
        datetime(2026, 10, 25, 23, 30, tzinfo=BERLIN),  # its last hour (+01:00): 22:30 UTC
        datetime(2026, 10, 26, 0, 30, tzinfo=BERLIN),
    ]
    await write_runs(conn, [{"calls": [call(t.astimezone(UTC), "dst-model", tokens=10 * (i + 1)) for i, t in enumerate(local)]}])
    for plan in ("rollup", "calls"):
        for since, until in (((2026, 3, 28), (2026, 3, 31)), ((2026, 10, 24), (2026, 10, 27))):
            start = datetime(*since, tzinfo=BERLIN).astimezone(UTC)
            end = datetime(*until, tzinfo=BERLIN).astimezone(UTC)
            found = await series(reader, plan, since=start, until=end, bucket="day", tz="Europe/Berlin", filters={"model": ("dst-model",)})
            assert found.plan == plan
            got = {row.bucket.isoformat(): row.sums["input_tokens"] for row in found.rows}
            if since[1] == 3:
                assert got == {"2026-03-28T00:00:00+01:00": 10, "2026-03-29T00:00:00+01:00": 20 + 30, "2026-03-30T00:00:00+02:00": 40}
            else:
                assert got == {"2026-10-25T00:00:00+02:00": 50 + 60, "2026-10-26T00:00:00+01:00": 70}
            # The day of the change is 23 (25) hours long: the next bucket starts that much later.
            starts = [row.bucket.astimezone(UTC) for row in found.rows]  # (aware times of one zone subtract as wall clocks)
            lengths = {(b - a).total_seconds() / 3600 for a, b in itertools.pairwise(starts)}
            assert lengths == ({24.0, 23.0} if since[1] == 3 else {25.0})


async def test_a_run_s_time_to_first_token_is_from_its_start_to_its_first_call_s_first_token(reader: Any, conn: asyncpg.Connection) -> None:
    at = datetime(2026, 6, 1, 12, 0, 10, tzinfo=UTC)  # each run starts a second before its first call is recorded
    await write_runs(conn, [
        # first token at 10.000 - 0.100 + 0.040 = 9.940 s, the run started at 9.000 s: 0.94 s; the later call changes nothing
        {"calls": [call(at, "ttft-model", latency=100.0, ttft=40.0), call(at + timedelta(seconds=5), "ttft-model", ttft=10.0)]},
        # 10.000 - 0.500 + 0.200 = 9.700 s: 0.70 s
        {"calls": [call(at, "ttft-model", latency=500.0, ttft=200.0)]},
        {"calls": [call(at, "ttft-model")]},  # not streamed: no first token, no run time to it
    ])
    found = await series(reader, since=datetime(2026, 6, 1, tzinfo=UTC), until=datetime(2026, 6, 2, tzinfo=UTC), bucket="day",
                         tz="UTC", group_by=("model",), filters={"model": ("ttft-model",)}, percentiles=True)
    (row,) = found.rows
    assert row.run_ttft_ms is not None and row.ttft_ms is not None
    p50, p95, p99 = row.run_ttft_ms
    assert p50 == pytest.approx(820.0) and p95 == pytest.approx(700 + 0.95 * 240) and p99 == pytest.approx(700 + 0.99 * 240)
    assert row.ttft_ms[0] == pytest.approx(40.0)  # the calls' own: 10, 40, 200


async def test_a_half_hour_time_zone_is_answered_from_the_calls(reader: Any, conn: asyncpg.Connection) -> None:
    at = datetime(2026, 5, 1, 18, 45, tzinfo=UTC)  # 00:15 on May 2 in Kolkata (+05:30)
    await write_runs(conn, [{"calls": [call(at, "kolkata-model")]}])
    query = {"since": datetime(2026, 5, 1, tzinfo=UTC), "until": datetime(2026, 5, 3, tzinfo=UTC), "bucket": "day",
             "tz": "Asia/Kolkata", "filters": {"model": ("kolkata-model",)}}
    found = await series(reader, **query)
    assert found.plan == "calls"
    assert [row.bucket.isoformat() for row in found.rows] == ["2026-05-02T00:00:00+05:30"]
    with pytest.raises(InvalidArgument):
        await series(reader, "rollup", **query)


# -- sums equal the events' own sums, for any grouping -----------------------------------------

MODELS = ["m-a", "m-b", None]
window = itertools.count()


def expected_sums(runs: list[dict[str, Any]], zone: ZoneInfo, bucket: str, group_by: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, int]]:
    sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for spec in runs:
        for i, c in enumerate(spec["calls"]):
            local = c["at"].astimezone(zone)
            if bucket == "hour":
                start = local.replace(minute=0, second=0, microsecond=0)
            else:
                start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            values = {"model": c["model"], "provider": c["provider"], "caller": c["caller"], "assistant": spec.get("assistant", "agent"),
                      "status": "success", "identity": spec.get("identity"), "metadata.team": spec.get("metadata", {}).get("team")}
            key = (start.isoformat(), *(values[name] for name in group_by))
            row = sums[key]
            row["calls"] += 1
            row["unknown_usage_calls"] += c["usage"] is None
            row["runs"] += i == 0
            for name in TOKEN_KEYS:
                usage = c["usage"] or {}
                row[name] += {"cache_read": (usage.get("input_token_details") or {}).get("cache_read", 0),
                              "cache_creation": 0,
                              "reasoning": (usage.get("output_token_details") or {}).get("reasoning", 0)}.get(name, usage.get(name, 0))
    return {key: dict(row) for key, row in sums.items()}


a_call = st.fixed_dictionaries({
    "hour": st.integers(0, 71), "minute": st.integers(0, 59), "model": st.sampled_from(MODELS),
    "caller": st.sampled_from(["agent", "tools"]), "provider": st.sampled_from([None, "openai"]),
    "tokens": st.integers(0, 5000), "usage": st.booleans(),
})
a_run = st.fixed_dictionaries({
    "calls": st.lists(a_call, min_size=1, max_size=4), "identity": st.sampled_from([None, "ann", "bob"]),
    "assistant": st.sampled_from(["agent", "planner"]), "team": st.sampled_from(["red", "blue"]),
})
grouping = st.lists(st.sampled_from([*[d for d in DIMENSIONS if d != "thread"], "metadata.team"]), unique=True, max_size=3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=st.lists(a_run, min_size=1, max_size=5), group_by=grouping, bucket=st.sampled_from(["hour", "day"]),
       tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]))
def test_sums_by_bucket_and_group_equal_the_events(dsn: str, runs: list[dict[str, Any]], group_by: list[str], bucket: str, tz: str) -> None:
    # Each example owns a week of its own, far from every other example's.
    base = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(weeks=next(window))
    specs = [
        {"identity": r["identity"], "assistant": r["assistant"], "metadata": {"team": r["team"]},
         "calls": [call(base + timedelta(hours=c["hour"], minutes=c["minute"]), c["model"], caller=c["caller"], provider=c["provider"],
                        tokens=c["tokens"], usage=c["usage"]) for c in r["calls"]]}
        for r in runs
    ]
    for spec in specs:  # a run's first call is its earliest
        spec["calls"].sort(key=lambda c: c["at"])

    async def check() -> None:
        conn = await asyncpg.connect(dsn)
        ledger = await projections.connect(dsn, tail=False)
        try:
            await write_runs(conn, specs)
            zone = ZoneInfo(tz)
            query = {"since": base - timedelta(days=1), "until": base + timedelta(days=5), "bucket": bucket, "tz": tz, "group_by": tuple(group_by)}
            want = expected_sums(specs, zone, bucket, tuple(group_by))
            plans = ["calls"] + (["rollup"] if tz != "Asia/Kolkata" and not any(g.startswith("metadata.") for g in group_by) else [])
            for plan in plans:
                found = await series(ledger, plan, **query)
                got = {(row.bucket.isoformat(), *row.group.values()): {k: v for k, v in row.sums.items()} for row in found.rows}
                assert got == want, plan
        finally:
            await ledger.close()
            await conn.close()

    in_own_loop(check())


# -- cost ------------------------------------------------------------------------------------------

PRICES_TOML = """
[[price]]
model = "acme-*"
effective_until = 2026-06-10T12:00:00Z
input = 1.0
output = 2.0

[[price]]
model = "acme-*"
effective_from = 2026-06-10T12:00:00Z
input = 3.0
output = 4.0
cache_read = 0.5
"""


async def test_cost_splits_a_bucket_at_a_price_change(reader: Any, conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML)
    book = PriceBook(load_price_file(path))
    before, after = datetime(2026, 6, 10, 11, 30, tzinfo=UTC), datetime(2026, 6, 10, 12, 30, tzinfo=UTC)
    await write_runs(conn, [{"calls": [call(before, "acme-1", tokens=1_000_000), call(after, "acme-1", tokens=1_000_000)]}])
    # 1M input (250k of them cache reads) and 500k output each: before 1.0 + 1.0; after 750k × 3 + 250k × 0.5 + 500k × 4.
    want = Decimal("2.0") + Decimal("2.25") + Decimal("0.125") + Decimal("2.0")
    for plan in ("rollup", "calls"):
        found = await series(reader, plan, book, since=datetime(2026, 6, 10, tzinfo=UTC), until=datetime(2026, 6, 11, tzinfo=UTC),
                             bucket="day", filters={"model": ("acme-1",)})
        (row,) = found.rows
        assert row.cost == want
        assert row.cost_sources == {"price file prices.toml"}
        assert row.unpriced["calls"] == 0


async def test_unpriced_calls_are_counted_never_free(reader: Any, conn: asyncpg.Connection) -> None:
    at = datetime(2026, 7, 1, 10, tzinfo=UTC)
    await write_runs(conn, [{"calls": [call(at, "nobody-knows-this-model", tokens=400), call(at, "gpt-4o", tokens=1_000_000),
                                       call(at, None, tokens=40)]}])
    found = await series(reader, None, PriceBook(), since=datetime(2026, 7, 1, tzinfo=UTC), until=datetime(2026, 7, 2, tzinfo=UTC),
                         bucket="day", group_by=("model",))
    rows = {row.group["model"]: row for row in found.rows}
    unknown = rows["nobody-knows-this-model"]
    assert not unknown.priced and unknown.unpriced["calls"] == 1 and unknown.unpriced["input_tokens"] == 400
    assert rows[None].unpriced == {"calls": 1, "input_tokens": 40, "output_tokens": 20, "total_tokens": 60, "cache_read": 10,
                                   "cache_creation": 0, "reasoning": 5}
    # gpt-4o from genai-prices: 750k uncached input at 2.5, 250k cache reads at 1.25, 500k output at 10.
    priced = rows["gpt-4o"]
    assert priced.cost_sources == {GENAI_PRICES}
    assert priced.cost == Decimal("1.875") + Decimal("0.3125") + Decimal("5")
    assert priced.unpriced["calls"] == 0


async def test_bad_queries_are_refused(reader: Any) -> None:
    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    for bad in (
        {"bucket": "fortnight"}, {"tz": "Mars/Olympus"}, {"group_by": ("colour",)}, {"group_by": ("model", "model")},
        {"filters": {"colour": ("red",)}}, {"filters": {"model": ()}}, {"since": until, "until": since},
        {"bucket": "hour", "since": datetime(2000, 1, 1, tzinfo=UTC)}, {"group_by": ("metadata.",)},
    ):
        with pytest.raises(InvalidArgument):
            await series(reader, **{"since": since, "until": until, **bad})
