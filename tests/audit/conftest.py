"""Recorded runs to export, verify, replay and inspect."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID, uuid4

import pytest

from graphledger import audit
from graphledger.ledger import Ledger, RunRef
from graphledger.ledger.export import Selection
from graphledger.projections import Projections
from graphledger.runs import Recorder, demo

INPUT = {"messages": [{"role": "user", "content": "count these four words"}]}


@dataclass
class Recorded:
    thread_id: UUID
    runs: list[RunRef]  # in the order they ran: success, success, failure


@pytest.fixture(scope="module")
async def recorded(dsn: str) -> AsyncIterator[Recorded]:
    """One thread with three recorded runs of the demo graph: two answers and a failure."""
    from graphledger import projections

    ledger = await projections.connect(dsn)
    try:
        thread = uuid4()
        recorder = Recorder(ledger)
        config = {"configurable": {"thread_id": str(thread), "tokens": 3}}
        await recorder.ainvoke(demo.graph, INPUT, config)
        await recorder.ainvoke(demo.graph, INPUT, config)
        with pytest.raises(RuntimeError):
            await recorder.ainvoke(demo.graph, INPUT, {"configurable": {**config["configurable"], "fail": "model down"}})
        runs = sorted(await Projections(ledger).thread_runs(thread), key=lambda r: r.created_at)  # type: ignore[arg-type, return-value]
        yield Recorded(thread, [RunRef(thread, r.run_id) for r in runs])
    finally:
        await ledger.close()


async def export_bytes(ledger: Ledger, selection: Selection) -> bytes:
    out = io.BytesIO()
    await audit.export_to(ledger, selection, out)
    return out.getvalue()
