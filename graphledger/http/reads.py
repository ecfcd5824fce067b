"""The ledger's own reads: messages, events, token usage and chain verification.

They serve the record, so they keep answering for a deleted thread: deletion
removes a thread's state, never its history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import HTTPError, iso, parse_uuid, path_uuid, query_bool, query_int, query_time, record_access, require
from graphledger.http.feedback import feedback_json
from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.checkpointer import Checkpointer
from graphledger.ledger.events import RUN_STATUSES
from graphledger.ledger.export import Selection, export
from graphledger.projections import MessagePage, Projections
from graphledger.projections.feedback import Feedback, on_last_ai_messages
from graphledger.projections.read import DEFAULT_PAGE, MAX_PAGE, Group, RunCost, RunSummary
from graphledger.projections.token_usage import Totals
from graphledger.runs.assistants import graph_assistant_id, parse_id

MAX_EVENTS = 1000
USAGE_GROUPS: tuple[Group, ...] = ("model", "caller", "status")


async def _check(request: Request, thread_id: UUID, run_id: UUID | None = None) -> None:
    """Authorize reading the thread (or the run), then 404 unless it exists and is visible to the caller."""
    value: dict[str, Any] = {"thread_id": thread_id} if run_id is None else {"thread_id": thread_id, "run_id": run_id}
    visible = await authorize(request, value)
    await require(request.app.state.ledger, thread_id, run_id, visible)


def _run_id(request: Request) -> UUID | None:
    return path_uuid(request, "run_id") if "run_id" in request.path_params else None


# -- runs across threads ----------------------------------------------------------------


def cost_json(cost: RunCost) -> dict[str, Any]:
    return {
        "cost": float(round(cost.cost, 10)) if cost.cost is not None else None,
        "unpriced_calls": cost.unpriced_calls,
        "cost_sources": sorted(cost.sources),
    }


def summary_json(summary: RunSummary, cost: RunCost) -> dict[str, Any]:
    status = summary.status
    started, finished = status.started_at, status.finished_at
    return {
        "run_id": str(status.run_id),
        "thread_id": str(status.thread_id),
        "assistant_id": status.assistant_id,
        "status": status.status,
        "created_at": iso(status.created_at),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_ms": round((finished - started).total_seconds() * 1000, 3) if started and finished else None,
        "attempt": status.attempt,
        "error": {"type": status.error_type, "message": status.error_message} if status.error_type else None,
        "llm_calls": summary.calls,
        "input_tokens": summary.input_tokens,
        "output_tokens": summary.output_tokens,
        "total_tokens": summary.total_tokens,
        **cost_json(cost),
    }


async def all_runs(request: Request) -> JSONResponse:
    """Runs of every visible thread, newest first, one keyset page: ``status``, ``thread_id``, ``assistant_id``, ``since``, ``until``, ``limit``, ``cursor``."""
    thread_text = request.query_params.get("thread_id")
    thread_id = parse_uuid("thread_id", thread_text) if thread_text else None
    status = request.query_params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise HTTPError(422, f"status must be one of {', '.join(RUN_STATUSES)}")
    assistant_id = request.query_params.get("assistant_id") or None
    if assistant_id is not None and ("\x00" in assistant_id or len(assistant_id) > 1000):
        raise HTTPError(422, "assistant_id must be an assistant's id or a graph's name (at most 1000 characters, no NUL)")
    # A graph's name stands for its assistant, as in a run's request; runs recorded
    # before assistants had ids named the graph itself.
    assistant_ids = None if assistant_id is None else [assistant_id] if parse_id(assistant_id) else [assistant_id, str(graph_assistant_id(assistant_id))]
    since, until = query_time(request, "since"), query_time(request, "until")
    limit = query_int(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    cursor = request.query_params.get("cursor") or None
    value: dict[str, Any] = {"thread_id": thread_id, "status": status, "assistant_id": assistant_id, "limit": limit, "metadata": {}}
    visible = await authorize(request, value)
    reads = Projections(request.app.state.ledger)
    page = await reads.runs_page(
        thread_id=thread_id, status=status, assistant_ids=assistant_ids, since=since, until=until, limit=limit, cursor=cursor, visible=visible
    )
    costs = await reads.run_costs([RunRef(r.status.thread_id, r.status.run_id) for r in page.runs], request.app.state.prices)
    return JSONResponse({"runs": [summary_json(r, costs[RunRef(r.status.thread_id, r.status.run_id)]) for r in page.runs], "next": page.next})


# -- messages -------------------------------------------------------------------------


def page_json(page: MessagePage, feedback: Mapping[str, list[Feedback]] | None = None) -> dict[str, Any]:
    """A page of messages; ``feedback`` by message id (a run's feedback is shown on its last AI message)."""
    feedback = feedback or {}
    return {
        "messages": [
            {
                "id": m.message_id, "type": m.type, "run_id": str(m.run_id), "seq": m.seq,
                "position": m.position, "part": m.part, "data": m.data,
                "updated_run_id": str(m.updated_run_id), "updated_seq": m.updated_seq,
                "edited_by_run_id": str(m.edited_by) if m.edited_by is not None else None,
                "feedback": [feedback_json(f) for f in feedback.get(m.message_id, ())],
            }
            for m in page.messages
        ],
        "has_more": page.has_more,
        "before": page.before,
        "after": page.after,
    }


async def messages(request: Request) -> JSONResponse:
    """A page of a thread's (or a run's) messages in conversation order: ``limit``, ``before``, ``after``, ``last``."""
    thread_id, run_id = path_uuid(request, "thread_id"), _run_id(request)
    limit = query_int(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    before = request.query_params.get("before") or None
    after = request.query_params.get("after") or None
    last = query_bool(request, "last")
    await _check(request, thread_id, run_id)
    page = await Projections(request.app.state.ledger).messages(
        thread_id, run_id=run_id, limit=limit, before=before, after=after, last=last
    )
    return JSONResponse(page_json(page, await _feedback(request.app.state.ledger, thread_id, page)))


async def _feedback(ledger: Ledger, thread_id: UUID, page: MessagePage) -> dict[str, list[Feedback]]:
    """The feedback to show on the page's messages: each run's, on its last AI message."""
    return await on_last_ai_messages(ledger, thread_id, {m.run_id for m in page.messages if m.type == "ai"})


async def run_messages(request: Request) -> JSONResponse:
    """``GET /runs/{run_id}/messages``: as ``/threads/{t}/runs/{r}/messages``, the thread found from the run.

    Authorized as a read of the run's thread, with the same value; a run
    outside the caller's filter is as unknown as one that never existed.
    """
    run_id = path_uuid(request, "run_id")
    limit = query_int(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    before = request.query_params.get("before") or None
    after = request.query_params.get("after") or None
    last = query_bool(request, "last")
    ledger: Ledger = request.app.state.ledger
    async with ledger.session() as session:
        found = await session.heads.locate(run_id)
    if found is None:
        await authorize(request, {"run_id": run_id})  # a forbidden caller is told so (403) before it learns anything
        raise HTTPError(404, f"run {run_id} not found")
    thread_id = found.ref.thread_id
    await _check(request, thread_id, run_id)
    page = await Projections(ledger).messages(thread_id, run_id=run_id, limit=limit, before=before, after=after, last=last)
    return JSONResponse(page_json(page, await _feedback(ledger, thread_id, page)))


# -- events -----------------------------------------------------------------------------


def event_json(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "kind": event.kind,
        "ts": iso(event.ts),
        "data": event.value,
        "hash": event.hash.hex(),
        "global_position": event.global_position,
    }


async def events(request: Request) -> JSONResponse:
    """A run's stored events in ``seq`` order: ``after`` (a seq), ``limit``, ``kinds`` (comma-separated; ``prefix*``)."""
    ref = RunRef(path_uuid(request, "thread_id"), path_uuid(request, "run_id"))
    after = query_int(request, "after", 0, low=0, high=2**31 - 1)
    limit = query_int(request, "limit", 100, low=1, high=MAX_EVENTS)
    kinds = [k.strip() for text in request.query_params.getlist("kinds") for k in text.split(",") if k.strip()] or None
    await _check(request, ref.thread_id, ref.run_id)
    await record_access(request, "events.read", thread_id=ref.thread_id, run_id=ref.run_id, after=after, kinds=",".join(kinds or []) or None)
    ledger: Ledger = request.app.state.ledger
    found = await ledger.read_run(ref, after, limit + 1, kinds=kinds)
    page = found[:limit]
    return JSONResponse(
        {
            "events": [event_json(e) for e in page],
            "has_more": len(found) > limit,
            "next_after": page[-1].seq if page else after,
        }
    )


# -- token usage ------------------------------------------------------------------------


def totals_json(totals: Totals) -> dict[str, int]:
    return {"calls": totals.calls, "unknown_usage_calls": totals.unknown_usage_calls, **totals.tokens}


async def usage(request: Request) -> JSONResponse:
    """Token usage of a thread (or a run): totals and breakdowns by model, caller and run status; ``since``/``until``."""
    thread_id, run_id = path_uuid(request, "thread_id"), _run_id(request)
    since, until = query_time(request, "since"), query_time(request, "until")
    await _check(request, thread_id, run_id)
    reads = Projections(request.app.state.ledger)
    totals = await reads.token_usage(thread_id=thread_id, run_id=run_id, since=since, until=until)
    body: dict[str, Any] = {"thread_id": str(thread_id), "totals": totals_json(totals)}
    if run_id is not None:
        body["run_id"] = str(run_id)
        ref = RunRef(thread_id, run_id)
        body.update(cost_json((await reads.run_costs([ref], request.app.state.prices))[ref]))
    for group in USAGE_GROUPS:
        by = await reads.usage_by(group, thread_id=thread_id, run_id=run_id, since=since, until=until)
        body[f"by_{group}"] = [{group: key, **totals_json(totals)} for key, totals in by.items()]
    return JSONResponse(body)


# -- verification -------------------------------------------------------------------------


async def verify(request: Request) -> JSONResponse:
    """Recompute a run's hash chain from the stored events (see docs/hash-chain.md)."""
    ref = RunRef(path_uuid(request, "thread_id"), path_uuid(request, "run_id"))
    await _check(request, ref.thread_id, ref.run_id)
    await record_access(request, "run.verify", thread_id=ref.thread_id, run_id=ref.run_id)
    report = await request.app.state.ledger.verify(ref)
    return JSONResponse(
        {
            "thread_id": str(ref.thread_id),
            "run_id": str(ref.run_id),
            "ok": report.ok,
            "events": report.events,
            "first_bad_seq": report.first_bad_seq,
            "reason": report.reason,
            "last_hash": report.last_hash.hex() if report.ok else None,
        }
    )


# -- export -------------------------------------------------------------------------------


async def export_download(request: Request) -> StreamingResponse:
    """The NDJSON export of a thread's runs (or of one run), streamed (see docs/export.md).

    A server that signs checkpoints (``serve --signing-key``) signs one first
    when the latest does not cover every event of the export, so that each
    carries its proof; that happens once per new event, not per download.
    """
    thread_id, run_id = path_uuid(request, "thread_id"), _run_id(request)
    await _check(request, thread_id, run_id)
    await record_access(request, "export", thread_id=thread_id, run_id=run_id)
    selection = Selection(run_id=run_id) if run_id is not None else Selection(thread_id=thread_id)
    keeper: Checkpointer = request.app.state.checkpointer
    chunks = export(request.app.state.ledger, selection, signer=keeper.signer, directory=keeper.directory)
    try:
        header = await anext(chunks)  # refusals (a run that has not ended: 409) come before the first byte
    except BaseException:
        await chunks.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield header
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # a client gone mid-download gives its snapshot's connection back now

    name = f"run-{run_id}" if run_id is not None else f"thread-{thread_id}"
    return StreamingResponse(
        body(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}.ndjson"', "Cache-Control": "no-store"},
    )


routes = [
    guarded("/runs", all_runs, methods=["GET"], action="search"),
    guarded("/threads/{thread_id}/messages", messages, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/usage", usage, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/messages", messages, methods=["GET"], action="read"),
    guarded("/runs/{run_id}/messages", run_messages, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/events", events, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/usage", usage, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/verify", verify, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/export", export_download, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/export", export_download, methods=["GET"], action="read"),
]
