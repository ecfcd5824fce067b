"""Feedback on runs: ``POST`` and ``GET /threads/{thread_id}/runs/{run_id}/feedback``.

The LangGraph API has no such route; this one takes ``key``, ``score`` (a
number) and ``comment`` and records them, with who gave them, in the run's
own log as a ``note.feedback`` event (:mod:`graphledger.runs.feedback`),
whether the run is still going or ended long ago. ``GET`` lists a run's
feedback, oldest first; the messages reads show it on the run's last AI
message.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import iso, json_body, path_uuid, require
from graphledger.http.identity import actor
from graphledger.ledger import Ledger, RunRef
from graphledger.projections.feedback import Feedback, feedback_of, run_feedback
from graphledger.runs.feedback import give_feedback, parse_feedback


def feedback_json(found: Feedback) -> dict[str, Any]:
    return {
        "feedback_id": found.feedback_id,
        "thread_id": str(found.thread_id),
        "run_id": str(found.run_id),
        "key": found.key,
        "score": found.score,
        "comment": found.comment,
        "actor": dict(found.actor) if found.actor is not None else None,
        "created_at": iso(found.ts),
        "seq": found.seq,
    }


def _ref(request: Request) -> RunRef:
    return RunRef(path_uuid(request, "thread_id"), path_uuid(request, "run_id"))


async def create_feedback(request: Request) -> JSONResponse:
    ref = _ref(request)
    feedback = parse_feedback(await json_body(request))
    visible = await authorize(request, {"thread_id": ref.thread_id, "run_id": ref.run_id, **feedback})
    event = await give_feedback(request.app.state.ledger, ref, feedback, actor=actor(request), visible=visible)
    return JSONResponse(feedback_json(feedback_of(event)), status_code=201)


async def list_feedback(request: Request) -> JSONResponse:
    ref = _ref(request)
    visible = await authorize(request, {"thread_id": ref.thread_id, "run_id": ref.run_id})
    ledger: Ledger = request.app.state.ledger
    await require(ledger, ref.thread_id, ref.run_id, visible)
    return JSONResponse([feedback_json(f) for f in await run_feedback(ledger, ref)])


routes = [
    guarded("/threads/{thread_id}/runs/{run_id}/feedback", create_feedback, methods=["POST"], action="update"),
    guarded("/threads/{thread_id}/runs/{run_id}/feedback", list_feedback, methods=["GET"], action="read"),
]
