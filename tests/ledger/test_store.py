"""The ledger's own checks before anything is written: kinds, payloads, unknown runs."""

from __future__ import annotations

import json
import math
from typing import Any

import asyncpg
import pytest

from graphledger.ledger import (
    InvalidPayload,
    Ledger,
    RunNotFound,
    RunRef,
)
from graphledger.ledger.errors import InvalidEvent
from tests.ledger.helpers import count_events, new_run


@pytest.mark.parametrize(
    "payload",
    [{"x": math.nan}, {"x": -math.inf}, {3: "non-string key"}, {"x": object()}, {"x": "\udcff"}, {"x": {1, 2}}],
    ids=["nan", "inf", "int-key", "object", "surrogate", "set"],
)
async def test_bad_payloads_write_nothing(ledger: Ledger, conn: asyncpg.Connection, payload: Any) -> None:
    ref = await new_run(ledger)
    before = await count_events(conn)
    with pytest.raises(InvalidPayload):
        await ledger.append(ref, "stream:values", payload)
    with pytest.raises(InvalidPayload):
        ledger.submit(ref, "stream:values", payload)
    with pytest.raises(InvalidPayload):
        await ledger.create_run(ref.thread_id, payload=payload)
    assert await count_events(conn) == before
    await ledger.append(ref, "stream:values", {"fine": True})  # the run is still usable


async def test_bad_kinds_and_unknown_runs(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    with pytest.raises(InvalidEvent):
        await ledger.append(ref, "Not A Kind", {})
    with pytest.raises(RunNotFound):
        await ledger.append(RunRef(ref.thread_id, ref.thread_id), "stream:values", {})
    with pytest.raises(RunNotFound):
        await ledger.append(RunRef(ref.thread_id, ref.thread_id), "stream:values", {}, expected_seq=0)


async def test_stored_payload_is_the_canonical_text(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    payload = {"z": 1, "a": ["ü", 1.5, None, "\u0000"], "m": {"b": True}}
    event = await ledger.append(ref, "stream:values", payload)
    stored = await conn.fetchval("SELECT data::text FROM events WHERE run_id = $1 AND seq = $2", ref.run_id, event.seq)
    assert stored == event.data == json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
