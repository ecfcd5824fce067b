"""Feedback on runs, read from the runs' own logs: ``note.feedback`` events.

Feedback is a note (see :func:`graphledger.ledger.events.is_note`): it is
appended to the run's chain at any time, also after the run's terminal
event, and carries who gave it (``actor``) inside its hashed payload; the
event's ``ts`` says when. There is no table of it: a run's feedback is read
from its events (``kind = 'note.feedback'``, by the run's key), and a page
of messages shows each run's feedback on that run's last AI message (the
messages projection says which one that is).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.events import NOTE_FEEDBACK

MAX_FEEDBACK = 1_000
"""The most feedback entries read for one run."""

# Per run, its last AI message in conversation order: the message it
# recorded first that comes last (messages are keyed by thread and id).
LAST_AI_SQL = """
SELECT DISTINCT ON (run_id) run_id, message_id FROM messages
WHERE thread_id = $1 AND run_id = ANY($2::uuid[]) AND type = 'ai'
ORDER BY run_id, position DESC, part DESC
"""


@dataclass(frozen=True, slots=True)
class Feedback:
    """One entry of feedback on a run, as recorded."""

    thread_id: UUID
    run_id: UUID
    seq: int
    ts: datetime
    feedback_id: str
    key: str
    score: float | int | None
    comment: str | None
    actor: Mapping[str, Any] | None


def feedback_of(event: Event) -> Feedback:
    """The feedback a ``note.feedback`` event records (pure)."""
    value = event.value if isinstance(event.value, Mapping) else {}
    score = value.get("score")
    comment = value.get("comment")
    actor = value.get("actor")
    return Feedback(
        event.thread_id, event.run_id, event.seq, event.ts,
        str(value.get("feedback_id") or f"{event.run_id}:{event.seq}"), str(value.get("key") or ""),
        score if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
        comment if isinstance(comment, str) else None,
        actor if isinstance(actor, Mapping) else None,
    )


async def run_feedback(ledger: Ledger, ref: RunRef) -> list[Feedback]:
    """The run's feedback, oldest first."""
    async with ledger.session() as session:
        events = await session.read_run(ref, 0, MAX_FEEDBACK, kinds=[NOTE_FEEDBACK])
    return [feedback_of(e) for e in events]


async def on_last_ai_messages(ledger: Ledger, thread_id: UUID, run_ids: Iterable[UUID]) -> dict[str, list[Feedback]]:
    """For the runs of ``run_ids`` that have feedback: their last AI message's id and the feedback to show on it."""
    runs = sorted(set(run_ids))
    if not runs:
        return {}
    found: dict[str, list[Feedback]] = {}
    async with ledger.session() as session:
        last = {row["run_id"]: row["message_id"] for row in await session.connection.fetch(LAST_AI_SQL, thread_id, runs)}
        for run_id, message_id in last.items():
            events = await session.read_run(RunRef(thread_id, run_id), 0, MAX_FEEDBACK, kinds=[NOTE_FEEDBACK])
            if events:
                found[message_id] = [feedback_of(e) for e in events]
    return found
