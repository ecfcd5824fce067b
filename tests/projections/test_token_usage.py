from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID, uuid4

from hypothesis import given
from hypothesis import strategies as st

from graphledger.ledger.events import Event, canonical_json
from graphledger.projections.token_usage import (
    TOKEN_FIELDS,
    LlmCall,
    breakdown,
    fold,
    tokens_from_usage,
    totals,
)

TS = datetime(2026, 11, 22, tzinfo=timezone.utc)
THREAD = uuid4()


def usage_event(run: UUID, seq: int, payload: Any, kind: str = "llm.usage") -> Event:
    return Event(THREAD, run, seq, kind, canonical_json(payload), TS, bytes(32))


def calls_of(events: list[Event]) -> dict[tuple[UUID, str], LlmCall]:
    calls: dict[tuple[UUID, str], LlmCall] = {}
    for event in events:
        fold(calls, event)
    return calls


def test_cache_and_reasoning_details() -> None:
    usage = {
        "input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
        "input_token_details": {"cache_read": 100, "cache_creation": 20},
        "output_token_details": {"reasoning": 12},
    }
    (call,) = calls_of([usage_event(uuid4(), 1, {"call_id": "c1", "model": "m", "caller": "agent", "usage": usage, "latency_ms": 41})]).values()
    assert call.tokens == {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150, "cache_read": 100, "cache_creation": 20, "reasoning": 12}
    assert (call.model, call.caller, call.latency_ms) == ("m", "agent", 41.0)


def test_duplicate_reports_count_once() -> None:
    run = uuid4()
    payload = {"call_id": "c1", "usage": {"input_tokens": 5, "output_tokens": 5}}
    calls = calls_of([usage_event(run, 1, payload), usage_event(run, 2, payload)])
    assert len(calls) == 1 and totals(calls.values()).tokens["total_tokens"] == 10


def test_no_usage_is_unknown_not_zero() -> None:
    calls = calls_of([usage_event(uuid4(), 1, {"call_id": "c1", "model": "local", "usage": None})])
    result = totals(calls.values())
    assert (result.calls, result.unknown_usage_calls, result.tokens["input_tokens"]) == (1, 1, 0)
    assert not next(iter(calls.values())).usage_known


def test_other_events_and_bad_payloads_are_ignored() -> None:
    run = uuid4()
    calls = calls_of([
        usage_event(run, 1, {"call_id": "c1"}, kind="stream:values"),
        usage_event(run, 2, {"usage": {"input_tokens": 1}}),
        usage_event(run, 3, ["not", "a", "dict"]),
        usage_event(run, 4, {"call_id": "c2", "usage": {"input_tokens": -3, "output_tokens": True}}),
    ])
    assert list(calls) == [(run, "c2")]
    assert calls[(run, "c2")].tokens == dict.fromkeys(TOKEN_FIELDS, None)


def test_cancelled_runs_count_and_are_labelled_by_status() -> None:
    done, cancelled = uuid4(), uuid4()
    calls = calls_of([
        usage_event(done, 1, {"call_id": "a", "usage": {"input_tokens": 10, "output_tokens": 1}}),
        usage_event(cancelled, 1, {"call_id": "b", "usage": {"input_tokens": 7, "output_tokens": 2}}),
    ])
    status = {done: "success", cancelled: "interrupted"}
    by_status = breakdown(calls.values(), lambda call: status[call.run_id])
    assert by_status["interrupted"].tokens["total_tokens"] == 9
    assert totals(calls.values()).tokens["total_tokens"] == 20


def test_total_is_derived_when_missing() -> None:
    assert tokens_from_usage({"input_tokens": 3, "output_tokens": 4})["total_tokens"] == 7  # type: ignore[index]
    assert tokens_from_usage(None) is None


reports = st.lists(
    st.tuples(
        st.integers(0, 3),  # run
        st.integers(0, 6),  # call id (repeats are duplicate reports)
        st.sampled_from(["m1", "m2", None]),
        st.one_of(st.none(), st.fixed_dictionaries({"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)})),
    ),
    max_size=40,
)


@given(reports)
def test_totals_equal_the_sum_of_distinct_recorded_calls(items: list[tuple[int, int, str | None, dict[str, int] | None]]) -> None:
    runs = [UUID(int=i + 1) for i in range(4)]
    events = [
        usage_event(runs[r], seq, {"call_id": f"c{c}", "model": model, "usage": usage})
        for seq, (r, c, model, usage) in enumerate(items, start=1)
    ]
    calls = calls_of(events)
    first: dict[tuple[int, int], dict[str, int] | None] = {}
    for r, c, _, usage in items:
        first.setdefault((r, c), usage)
    result = totals(calls.values())
    assert result.calls == len(first)
    assert result.unknown_usage_calls == sum(1 for u in first.values() if u is None)
    assert result.tokens["input_tokens"] == sum(u["input_tokens"] for u in first.values() if u)
    assert result.tokens["total_tokens"] == sum(u["input_tokens"] + u["output_tokens"] for u in first.values() if u)
    by_model = breakdown(calls.values(), lambda call: call.model)
    assert sum(t.calls for t in by_model.values()) == result.calls
