"""A run as the LangGraph API shows it (its JSON), from its status and its ``run.created`` event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from graphledger.ledger import Event
from graphledger.projections.run_status import RunStatus

NOT_KWARGS = ("assistant_id", "graph_id", "assistant_version", "metadata", "multitask_strategy", "executor", "actor")
"""Fields of ``run.created`` that a run's JSON shows on their own, not under ``kwargs``."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def run_json(status: RunStatus, created: Event) -> dict[str, Any]:
    """A run as the LangGraph API shows it: its status from the run status projection, its request from ``run.created``."""
    request = created.value
    return {
        "run_id": str(status.run_id),
        "thread_id": str(status.thread_id),
        "assistant_id": status.assistant_id,
        "created_at": iso(status.created_at),
        "updated_at": iso(status.finished_at or status.started_at or status.created_at),
        "status": status.status,
        "metadata": request.get("metadata") or {},
        "multitask_strategy": request.get("multitask_strategy"),
        "kwargs": {k: v for k, v in request.items() if k not in NOT_KWARGS},
    }
