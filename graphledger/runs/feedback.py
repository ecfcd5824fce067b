"""Feedback on a run: a ``note.feedback`` event in the run's own log, at any time, also after it ended.

A note may follow a run's terminal event (see
:func:`graphledger.ledger.events.is_note`), so feedback given long after a
run ended is chained onto the run's record, exported and verified with it,
and never reopens the run. The payload carries ``feedback_id``, ``key``,
``score``, ``comment`` and who gave it (``actor``, absent when
authentication is off); the event's ``ts`` says when.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.errors import RunNotFound, ThreadNotFound
from graphledger.ledger.events import NOTE_FEEDBACK, NewEvent
from graphledger.ledger.threads import Visibility
from graphledger.runs.errors import InvalidRequest

FIELDS = ("key", "score", "comment")
MAX_KEY = 200
MAX_COMMENT = 10_000


def parse_feedback(body: Mapping[str, Any]) -> dict[str, Any]:
    """The feedback a request body gives (``key``; ``score``, ``comment`` optional); :class:`InvalidRequest` when malformed."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown feedback fields {unknown}; give {', '.join(FIELDS)}")
    key = body.get("key")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise InvalidRequest(f"key must be a non-empty string of at most {MAX_KEY} characters")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        raise InvalidRequest("score must be a number (or null)")
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise InvalidRequest(f"comment must be a string of at most {MAX_COMMENT} characters (or null)")
    if score is None and comment is None:
        raise InvalidRequest("give a score, a comment or both")
    return {"key": key, "score": score, "comment": comment}


async def give_feedback(
    ledger: Ledger,
    ref: RunRef,
    feedback: Mapping[str, Any],
    *,
    actor: Mapping[str, Any] | None = None,
    visible: Visibility | None = None,
) -> Event:
    """Append ``feedback`` (as :func:`parse_feedback` gives it) to the run's log; return the event.

    Raises :class:`RunNotFound` for a run that does not exist, was deleted
    or records another run, or whose thread is deleted or not ``visible``.
    (Its feedback given before a deletion stays readable, like its events.)
    """
    payload: dict[str, Any] = {"feedback_id": str(uuid4()), **feedback}
    if actor is not None:
        payload["actor"] = dict(actor)
    new = NewEvent.of(NOTE_FEEDBACK, payload)
    async with ledger.transaction() as tx:
        try:
            deleted = await tx.threads.lock(ref.thread_id, visible)  # a deletion waits, and is not missed
        except ThreadNotFound:
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}") from None
        if deleted or await tx.heads.hidden(ref):  # hidden: a deleted run, or a record run; RunNotFound when none
            raise RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
        # The head's row lock: a worker streaming the run waits for this
        # commit, then finds its head moved and chains its events after the note.
        await tx.heads.lock(ref)
        (event,) = await tx.append(ref, [new])
    return event
