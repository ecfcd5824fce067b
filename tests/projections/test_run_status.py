from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

from graphledger.ledger.events import Event, canonical_json
from graphledger.projections.run_status import (
    RunStatus,
    apply,
    fold,
    patch_of,
    replay,
    thread_status,
)

T0 = datetime(2026, 11, 22, tzinfo=timezone.utc)


def history(*steps: tuple[str, dict[str, Any]]) -> list[Event]:
    thread, run = uuid4(), uuid4()
    return [
        Event(thread, run, seq, kind, canonical_json(payload), T0 + timedelta(seconds=seq), bytes(32))
        for seq, (kind, payload) in enumerate(steps, start=1)
    ]


def test_success_lifecycle() -> None:
    events = history(
        ("run.created", {"assistant_id": "agent"}),
        ("run.started", {"worker": "w1"}),
        ("stream:values", {"x": 1}),
        ("run.succeeded", {}),
    )
    state = replay(events)
    assert state is not None
    assert (state.status, state.assistant_id, state.worker, state.attempt, state.status_seq) == ("success", "agent", "w1", 1, 4)
    assert (state.created_at, state.started_at, state.finished_at) == (events[0].ts, events[1].ts, events[3].ts)


def test_failure_records_the_error() -> None:
    state = replay(history(("run.created", {}), ("run.started", {}), ("run.failed", {"error": {"type": "ValueError", "message": "bad"}})))
    assert state is not None and (state.status, state.error_type, state.error_message) == ("error", "ValueError", "bad")


def test_each_start_is_an_attempt() -> None:
    state = replay(history(("run.created", {}), ("run.started", {"worker": "a"}), ("run.started", {"worker": "b"})))
    assert state is not None and (state.attempt, state.worker) == (2, "b")


def test_a_released_run_is_pending_again_and_its_next_start_is_the_next_attempt() -> None:
    released = replay(history(("run.created", {}), ("run.started", {"worker": "a"}), ("run.released", {"worker": "a", "reason": "shutdown"})))
    assert released is not None and (released.status, released.attempt, released.worker, released.finished) == ("pending", 1, "a", False)
    resumed = replay(history(
        ("run.created", {}), ("run.started", {"worker": "a"}), ("run.released", {"worker": "a"}), ("run.started", {"worker": "b"}), ("run.succeeded", {}),
    ))
    assert resumed is not None and (resumed.status, resumed.attempt, resumed.worker) == ("success", 2, "b")


def test_patches_compose_like_the_events_they_fold() -> None:
    events = history(
        ("run.created", {"assistant_id": "agent"}),
        ("run.started", {"worker": "a"}),
        ("stream:values", {}),
        ("run.released", {"worker": "a", "reason": "shutdown"}),
        ("run.started", {}),
        ("run.failed", {"error": {"type": "KeyError", "message": "x"}}),
    )
    patches = [p for p in map(patch_of, events) if p is not None]
    for split in range(1, len(patches)):
        head, tail = patches[:split], patches[split:]
        state = None
        for group in (head, tail):
            combined = group[0]
            for patch in group[1:]:
                combined = combined.then(patch)
            state = apply(state, combined)
        assert state == replay(events)


def test_a_patch_applied_twice_changes_nothing() -> None:
    events = history(("run.created", {}), ("run.started", {}))
    state = replay(events)
    assert apply(state, patch_of(events[1])) == state  # type: ignore[arg-type]


def test_cancel_request_keeps_status_until_the_run_ends() -> None:
    events = history(("run.created", {}), ("run.started", {}), ("run.cancel_requested", {"action": "interrupt"}), ("run.interrupted", {}))
    assert fold(replay(events[:3]), events[2]).status == "running"
    assert replay(events).status == "interrupted"  # type: ignore[union-attr]


def test_odd_payloads_do_not_break_the_fold() -> None:
    state = replay(history(("run.created", []), ("run.started", {"worker": 3}), ("run.failed", {"error": "text"})))
    assert state is not None and (state.status, state.attempt, state.worker, state.error_type) == ("error", 1, None, None)


def run(status: str, finished: int | None) -> RunStatus:
    return RunStatus(uuid4(), uuid4(), status=status, finished_at=T0 + timedelta(seconds=finished) if finished is not None else None)


def test_thread_status() -> None:
    assert thread_status([]) == "idle"
    assert thread_status([run("success", 1), run("running", None)]) == "busy"
    assert thread_status([run("pending", None)]) == "busy"
    assert thread_status([run("error", 1), run("success", 2)]) == "idle"
    assert thread_status([run("success", 1), run("interrupted", 2)]) == "interrupted"
    assert thread_status([run("success", 1), run("timeout", 2)]) == "error"
