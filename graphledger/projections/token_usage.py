"""Token usage as a fold over ``llm.usage`` events.

An ``llm.usage`` event records one LLM call::

    {"call_id": "<id, unique per call>", "model": "gpt-4o" | null,
     "caller": "<graph node, subgraph namespace or tag>" | null,
     "usage": <LangChain UsageMetadata> | null, "latency_ms": 412.5 | null,
     "provider": "openai" | null, "ttft_ms": 120.0 | null}

``provider`` is LangChain's ``ls_provider`` of the model; ``ttft_ms`` the
time from the call's start to its first streamed token (absent when the
call did not stream).

``usage`` follows ``langchain_core.messages.ai.UsageMetadata``:
``input_tokens``, ``output_tokens``, ``total_tokens``,
``input_token_details.{cache_read, cache_creation}`` and
``output_token_details.reasoning``. A call whose model reported no usage has
``usage: null``: it is counted as a call with unknown usage, never as zero
tokens. A call reported twice (same ``call_id``) is counted once, the first
report kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from graphledger.ledger.events import LLM_USAGE, Event
from graphledger.projections._text import text

TOKEN_FIELDS = ("input_tokens", "output_tokens", "total_tokens", "cache_read", "cache_creation", "reasoning")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def tokens_from_usage(usage: Mapping[str, Any] | None) -> dict[str, int | None] | None:
    """Our token fields from a LangChain ``UsageMetadata`` mapping; None when no usage was reported."""
    if not isinstance(usage, Mapping):
        return None
    inputs = usage.get("input_token_details") or {}
    outputs = usage.get("output_token_details") or {}
    tokens = {
        "input_tokens": _count(usage.get("input_tokens")),
        "output_tokens": _count(usage.get("output_tokens")),
        "total_tokens": _count(usage.get("total_tokens")),
        "cache_read": _count(inputs.get("cache_read")) if isinstance(inputs, Mapping) else None,
        "cache_creation": _count(inputs.get("cache_creation")) if isinstance(inputs, Mapping) else None,
        "reasoning": _count(outputs.get("reasoning")) if isinstance(outputs, Mapping) else None,
    }
    if tokens["total_tokens"] is None and tokens["input_tokens"] is not None and tokens["output_tokens"] is not None:
        tokens["total_tokens"] = tokens["input_tokens"] + tokens["output_tokens"]
    return tokens


@dataclass(frozen=True, slots=True)
class LlmCall:
    """One LLM call as recorded in the log."""

    thread_id: UUID
    run_id: UUID
    call_id: str
    seq: int
    ts: datetime
    model: str | None
    caller: str | None
    tokens: dict[str, int | None] | None  # None: the model reported no usage
    latency_ms: float | None
    # Of the run, filled in by reads (the llm.usage event does not carry them).
    assistant_id: str | None = None
    run_status: str | None = None
    provider: str | None = None
    ttft_ms: float | None = None

    @property
    def usage_known(self) -> bool:
        return self.tokens is not None


def call_of(event: Event) -> LlmCall | None:
    """The call an ``llm.usage`` event records (None for any other event or a payload without a call id)."""
    if event.kind != LLM_USAGE or not isinstance(event.value, dict):
        return None
    payload = event.value
    call_id = text(payload.get("call_id"))
    if not call_id:
        return None
    return LlmCall(
        event.thread_id, event.run_id, call_id, event.seq, event.ts,
        text(payload.get("model")),
        text(payload.get("caller")),
        tokens_from_usage(payload.get("usage")),
        _millis(payload.get("latency_ms")),
        provider=text(payload.get("provider")),
        ttft_ms=_millis(payload.get("ttft_ms")),
    )


def _millis(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def fold(calls: dict[tuple[UUID, str], LlmCall], event: Event) -> dict[tuple[UUID, str], LlmCall]:
    """Add the call ``event`` records, unless that call (run, call id) is already there."""
    call = call_of(event)
    if call is not None and (call.run_id, call.call_id) not in calls:
        calls[(call.run_id, call.call_id)] = call
    return calls


@dataclass(slots=True)
class Totals:
    """Sums over calls; calls with unknown usage are counted, not summed."""

    calls: int = 0
    unknown_usage_calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))

    def add(self, call: LlmCall) -> None:
        self.calls += 1
        if call.tokens is None:
            self.unknown_usage_calls += 1
            return
        for name in TOKEN_FIELDS:
            self.tokens[name] += call.tokens.get(name) or 0


def totals(calls: Iterable[LlmCall]) -> Totals:
    result = Totals()
    for call in calls:
        result.add(call)
    return result


def breakdown(calls: Iterable[LlmCall], key: Callable[[LlmCall], str | None]) -> dict[str | None, Totals]:
    """Totals per ``key`` (model, caller, or a run's status looked up by the caller)."""
    groups: dict[str | None, Totals] = {}
    for call in calls:
        groups.setdefault(key(call), Totals()).add(call)
    return groups
