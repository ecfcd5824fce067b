"""Fixtures for run execution: a projecting ledger, the demo graph, a worker with a checkpointer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest

from graphledger.ledger import Event, Ledger, RunRef
from graphledger.runs import (
    GraphRegistry,
    RunRequest,
    Worker,
    admit,
    checkpoint,
    demo,
    join,
)

LEASE = 2.0


@pytest.fixture
def ledger(projected: Ledger) -> Ledger:
    """Run execution always goes through a projecting ledger."""
    return projected


@pytest.fixture
def graphs() -> GraphRegistry:
    return GraphRegistry({"demo": demo.graph})


@pytest.fixture
async def saver(dsn: str) -> AsyncIterator[Any]:
    async with checkpoint.saver(dsn) as cp:
        yield cp


@pytest.fixture
async def worker(ledger: Ledger, graphs: GraphRegistry, saver: Any) -> AsyncIterator[Worker]:
    w = Worker(ledger, graphs, checkpointer=saver, concurrency=4, lease_seconds=LEASE, poll_interval=0.2)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_seconds=5)


def ask(text: str = "how many words are here", **body: Any) -> RunRequest:
    """A request to the demo graph."""
    return RunRequest.parse({"assistant_id": "demo", "input": {"messages": [{"role": "user", "content": text}]}, **body})


Submit = Callable[..., Awaitable[tuple[RunRef, Event]]]


@pytest.fixture
def run_to_end(ledger: Ledger, graphs: GraphRegistry) -> Submit:
    """Admit a request and wait for its terminal event."""

    async def submit(request: RunRequest, thread_id: UUID | None = None) -> tuple[RunRef, Event]:
        admitted = await admit(ledger, request, thread_id=thread_id, graphs=graphs)
        return admitted.ref, await join(ledger, admitted.ref)

    return submit
