"""Runs: create, stream, wait, list, get, cancel, join and join-stream (LangGraph Platform shapes).

A run's stream is its log. Every SSE frame is one stored event, with the
event's ``seq`` as its ``id``: ``run.created`` is sent as ``metadata``,
``stream:<mode>[|<ns>]`` as ``<mode>[|<ns>]`` (only the modes the run asked
for), ``stream:error`` as ``error``. The stream closes after the terminal
event is committed. ``Last-Event-ID: n`` resumes after ``seq`` n on any run,
live or finished, from any process; ``-1`` or ``0`` replays from the start;
a join without it (or with a blank one) sends ``metadata`` and then follows
live events. An id past the run's last committed event, or one that is not a
whole number from -1 up, is refused with 422 before any byte: this server
never sent it, and a stream after it would never end.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from graphledger.http.auth import authorize, guarded
from graphledger.http.common import (
    MAX_SEARCH,
    HTTPError,
    json_body,
    parse_json,
    parse_uuid,
    path_uuid,
    query_bool,
    query_int,
    record_access,
    require,
    status_of,
)
from graphledger.http.identity import actor, user_json
from graphledger.http.sse import check_resumable, last_event_id, sse_response, sse_stream
from graphledger.ledger import Event, Ledger, RunRef
from graphledger.ledger.errors import LedgerError
from graphledger.ledger.events import FAILURE_KINDS, RUN_STATUSES
from graphledger.ledger.threads import Visibility
from graphledger.projections import Projections
from graphledger.projections.run_status import RunStatus
from graphledger.runs import RunRequest, admit, assistants, cancel, checkpoint, join, lifecycle, webhooks
from graphledger.runs.actor import AUTH_KEYS
from graphledger.runs.lifecycle import BULK_CANCEL_STATUSES, Admission, admit_batch, cancel_many
from graphledger.runs.recorder import stream_kind
from graphledger.runs.request import CANCEL_ACTIONS, stream_modes
from graphledger.runs.serialize import to_jsonable
from graphledger.runs.shape import NOT_KWARGS, run_json
from graphledger.runs.sse import sse_modes


async def _runs_json(ledger: Ledger, statuses: list[RunStatus]) -> list[dict[str, Any]]:
    refs = [RunRef(s.thread_id, s.run_id) for s in statuses]
    async with ledger.session() as session:
        created = await session.first_events(refs)
    return [run_json(status, created[ref]) for status, ref in zip(statuses, refs, strict=True)]


async def fetch_run(ledger: Ledger, ref: RunRef) -> dict[str, Any]:
    (found,) = await _runs_json(ledger, [await Projections(ledger).run_status(ref)])
    return found


def _ref(request: Request) -> RunRef:
    return RunRef(path_uuid(request, "thread_id"), path_uuid(request, "run_id"))


# -- creating runs ------------------------------------------------------------------


async def _prepare(request: Request, body: Any, *, thread_id: UUID | None, wait: bool = False) -> Admission:
    """A run-create body parsed, its assistant found and the run authorized: ready to admit (nothing written yet)."""
    if not isinstance(body, dict):
        raise HTTPError(422, "a run request must be a JSON object")
    ledger: Ledger = request.app.state.ledger
    named = body.get("assistant_id")
    assistant = None
    if isinstance(named, str) and named:  # else parse() says what is wrong
        assistant = await assistants.find(ledger, request.app.state.graphs, named)  # an id or a graph's name
        body = assistants.with_defaults(body, assistant)  # before parse(): its secrets are found like the run's
    run_request = RunRequest.parse(body)
    if run_request.webhook is not None:
        webhooks.check_host(run_request.webhook, request.app.state.runtime.settings.webhooks)
    if assistant is not None:
        run_request.graph_id, run_request.assistant_version = assistant.graph_id, assistant.version
    if wait and "values" not in run_request.stream_mode:
        run_request.stream_mode.append("values")  # the final state is the last values chunk
    if thread_id is None:
        run_request.check_stateless()
        run_request.on_completion = run_request.on_completion or "delete"  # the new thread goes with its run unless kept
    else:
        run_request.on_completion = None  # a thread's own run leaves it as it is
    run_id = uuid4()
    value: dict[str, Any] = {
        "thread_id": thread_id, "assistant_id": run_request.assistant_id, "run_id": run_id, "status": "pending",
        "metadata": run_request.metadata, "prevent_insert_if_inflight": run_request.multitask_strategy == "reject",
        "multitask_strategy": run_request.multitask_strategy, "if_not_exists": run_request.if_not_exists,
        "after_seconds": run_request.after_seconds,
        "kwargs": {k: v for k, v in run_request.record().items() if k not in NOT_KWARGS},
    }
    visible = await authorize(request, value)  # may stamp value["metadata"] (an owner)
    run_request.set_actor(user_json(request))  # recorded with its secrets [redacted]; the graph gets them
    thread_metadata = None
    if run_request.actor is not None:
        if not isinstance(value.get("metadata"), dict):
            raise TypeError("an authorization handler set metadata to something other than a dict")
        run_request.metadata = value["metadata"]
        thread_metadata = run_request.metadata  # a thread the run creates carries it (an owner), so the run can see it
        configurable = run_request.config.get("configurable")
        if isinstance(configurable, dict):  # only the server says who the user is
            run_request.config["configurable"] = {k: v for k, v in configurable.items() if k not in AUTH_KEYS}
    return Admission(run_request, thread_id=thread_id, run_id=run_id, thread_metadata=thread_metadata, visible=visible)


async def _admit(request: Request, *, stateless: bool, wait: bool = False) -> tuple[RunRequest, Event]:
    thread_id: UUID | None = None if stateless else path_uuid(request, "thread_id")
    # Workers hold back their claims (and renders) while a burst is admitted, its assistants' lookups included.
    with request.app.state.runtime.admissions:
        prepared = await _prepare(request, await json_body(request), thread_id=thread_id, wait=wait)
        admitted = await admit(
            request.app.state.ledger, prepared.request, thread_id=thread_id, run_id=prepared.run_id,
            thread_metadata=prepared.thread_metadata, graphs=request.app.state.graphs, visible=prepared.visible,
            pricer=request.app.state.pricer,
        )
    return prepared.request, admitted.created


async def create_run(request: Request) -> JSONResponse:
    _, created = await _admit(request, stateless=False)
    return JSONResponse(await fetch_run(request.app.state.ledger, RunRef(created.thread_id, created.run_id)))


async def create_stateless(request: Request) -> JSONResponse:
    _, created = await _admit(request, stateless=True)
    ref = RunRef(created.thread_id, created.run_id)
    headers = {"Content-Location": f"/threads/{ref.thread_id}/runs/{ref.run_id}"}
    return JSONResponse(await fetch_run(request.app.state.ledger, ref), headers=headers)


MAX_BATCH = 1000
"""The most runs one ``POST /runs/batch`` may create."""


async def create_batch(request: Request) -> JSONResponse:
    """Stateless background runs, all admitted in one transaction: every item is checked first, and one bad item admits none."""
    raw = await request.body()
    body = parse_json(raw) if raw.strip() else None
    if not isinstance(body, list) or not body:
        raise HTTPError(422, "the body must be a non-empty JSON array of run requests")
    if len(body) > MAX_BATCH:
        raise HTTPError(422, f"a batch holds at most {MAX_BATCH} run requests, not {len(body)}")
    prepared: list[Admission] = []
    for index, item in enumerate(body):
        try:
            prepared.append(await _prepare(request, item, thread_id=None))
        except HTTPError as exc:
            raise HTTPError(exc.status, f"run request {index}: {exc.detail}") from None
        except LedgerError as exc:
            if status_of(exc) >= 500:
                raise  # the database, not the item: answered as such (503, Retry-After)
            raise HTTPError(status_of(exc), f"run request {index}: {exc}") from None
    ledger: Ledger = request.app.state.ledger
    with request.app.state.runtime.admissions:
        admitted = await admit_batch(ledger, prepared, graphs=request.app.state.graphs, pricer=request.app.state.pricer)
    return JSONResponse(await _runs_json(ledger, [await Projections(ledger).run_status(a.ref) for a in admitted]))


async def _stream_created(request: Request, stateless: bool) -> StreamingResponse:
    run_request, created = await _admit(request, stateless=stateless)
    ref = RunRef(created.thread_id, created.run_id)
    # The metadata frame is the committed run.created event we already hold:
    # sent at once, without a head lookup and a read of the table by the
    # tail, which under a burst of admissions queue behind one another. The
    # tail follows from the event after it, and needs no head lookup either:
    # this request appended that event, and it is not terminal.
    frames = sse_stream(
        request.app.state.ledger, ref, after_seq=created.seq, modes=sse_modes(run_request.stream_mode),
        metadata_first=created, live=True, on_disconnect=run_request.on_disconnect, heartbeat=request.app.state.heartbeat,
        streams=request.app.state.streams, actor=run_request.actor,
    )
    return sse_response(frames, ref, created=True)


async def stream_run(request: Request) -> StreamingResponse:
    return await _stream_created(request, stateless=False)


async def stream_stateless(request: Request) -> StreamingResponse:
    return await _stream_created(request, stateless=True)


async def final_output(request: Request, ref: RunRef, end: Event) -> Any:
    """What ``wait`` and ``join`` answer: the final state values, or ``{"__error__": ...}`` for a failed run.

    The values are the run's last ``values`` chunk; a run that streamed none
    answers with its thread's current state from the checkpointer.
    """
    ledger: Ledger = request.app.state.ledger
    if end.kind in FAILURE_KINDS:
        error = end.value.get("error") if isinstance(end.value, dict) else None
        error = error if isinstance(error, dict) else {}
        return {"__error__": {"error": error.get("type", "Error"), "message": error.get("message", "")}}
    async with ledger.session() as session:
        values = await session.last_of_kind(ref, stream_kind("values"))
    if values is not None:
        return values.value
    checkpointer = request.app.state.runtime.checkpointer
    return to_jsonable(await checkpoint.current_values(checkpointer, ref.thread_id)) if checkpointer is not None else None


async def _wait(request: Request, stateless: bool) -> JSONResponse:
    _, created = await _admit(request, stateless=stateless, wait=True)
    ref = RunRef(created.thread_id, created.run_id)
    ledger: Ledger = request.app.state.ledger
    end = await join(ledger, ref)
    headers = {"Content-Location": f"/threads/{ref.thread_id}/runs/{ref.run_id}"}
    return JSONResponse(await final_output(request, ref, end), headers=headers)


async def wait_run(request: Request) -> JSONResponse:
    return await _wait(request, stateless=False)


async def wait_stateless(request: Request) -> JSONResponse:
    return await _wait(request, stateless=True)


# -- reading, cancelling, joining ---------------------------------------------------


async def list_runs(request: Request) -> JSONResponse:
    thread_id = path_uuid(request, "thread_id")
    limit = query_int(request, "limit", 10, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    status = request.query_params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise HTTPError(422, f"status must be one of {', '.join(RUN_STATUSES)}")
    visible = await authorize(request, {"thread_id": thread_id, "status": status, "limit": limit, "offset": offset})
    ledger: Ledger = request.app.state.ledger
    await require(ledger, thread_id, visible=visible)
    found = await Projections(ledger).runs(thread_id=thread_id, status=status, limit=limit, offset=offset, listed=True)
    return JSONResponse(await _runs_json(ledger, [r.status for r in found]))


async def _require_listed(ledger: Ledger, ref: RunRef, visible: Visibility | None) -> None:
    """404 unless the run exists, its thread is ``visible``, and the API shows it (not deleted, not a record run)."""
    if visible is not None:
        await require(ledger, ref.thread_id, ref.run_id, visible)
    async with ledger.session() as session:
        if await session.heads.hidden(ref):  # RunNotFound (404) for a run that does not exist
            raise HTTPError(404, f"run {ref.run_id} not found in thread {ref.thread_id}")


async def _visible_ref(request: Request, **value: Any) -> RunRef:
    """The run the path names: 404 unless it exists, is shown by the API and its thread is visible to the caller."""
    ref = _ref(request)
    visible = await authorize(request, {"thread_id": ref.thread_id, "run_id": ref.run_id, **value})
    await _require_listed(request.app.state.ledger, ref, visible)
    return ref


async def get_run(request: Request) -> JSONResponse:
    return JSONResponse(await fetch_run(request.app.state.ledger, await _visible_ref(request)))


def _action(request: Request) -> str:
    action = request.query_params.get("action") or "interrupt"
    if action not in CANCEL_ACTIONS:
        raise HTTPError(422, f"action must be one of {', '.join(CANCEL_ACTIONS)}, not {action[:50]!r}")
    return action


async def _cancel(request: Request, ref: RunRef, action: str, visible: Visibility | None) -> None:
    await cancel(request.app.state.ledger, ref, action, actor=actor(request), visible=visible)


async def cancel_run(request: Request) -> Response:
    ref = _ref(request)
    ledger: Ledger = request.app.state.ledger
    wait = query_bool(request, "wait")
    action = _action(request)
    visible = await authorize(request, {"thread_id": ref.thread_id, "run_id": ref.run_id, "action": action})
    await _require_listed(ledger, ref, visible)  # a record run (a webhook's delivery) is not the caller's to cancel
    await _cancel(request, ref, action, visible)
    if wait:
        await join(ledger, ref)
        return JSONResponse(await fetch_run(ledger, ref))
    return JSONResponse(await fetch_run(ledger, ref), status_code=202)


async def cancel_runs(request: Request) -> Response:
    """``POST /runs/cancel``: ``thread_id`` and ``run_ids``, or a ``status`` (pending, running, all); 204, or 404 when none was cancelled."""
    action = _action(request)
    body = await json_body(request)
    status, thread_id, run_ids = body.get("status"), body.get("thread_id"), body.get("run_ids")
    refs: list[RunRef] | None = None
    if status is not None:
        if thread_id is not None or run_ids is not None:
            raise HTTPError(422, "give either a status, or thread_id and run_ids, not both: a status cancels the runs of every thread")
        if status not in BULK_CANCEL_STATUSES:
            raise HTTPError(422, f"status must be one of {', '.join(BULK_CANCEL_STATUSES)}, not {str(status)[:50]!r}")
    else:
        if thread_id is None or run_ids is None:
            raise HTTPError(422, "give thread_id and run_ids, or a status (pending, running or all)")
        if not isinstance(run_ids, list):
            raise HTTPError(422, "run_ids must be a list of run ids")
        if len(run_ids) > MAX_SEARCH:
            raise HTTPError(422, f"run_ids may name at most {MAX_SEARCH} runs")
        thread = parse_uuid("thread_id", thread_id)
        refs = [RunRef(thread, parse_uuid("run_ids", run_id)) for run_id in run_ids]
    value: dict[str, Any] = {
        "thread_id": refs[0].thread_id if refs else None, "run_ids": [r.run_id for r in refs] if refs is not None else None,
        "status": status, "action": action,
    }
    visible = await authorize(request, value)
    done = await cancel_many(request.app.state.ledger, refs=refs, status=status, action=action, actor=actor(request), visible=visible)
    if not done:
        raise HTTPError(404, "No runs found to cancel.")
    return Response(status_code=204)


async def delete_run(request: Request) -> Response:
    """``DELETE /threads/{t}/runs/{r}``: the deletion is recorded, the run hidden from the API, its record kept (204)."""
    ref = _ref(request)
    visible = await authorize(request, {"thread_id": ref.thread_id, "run_id": ref.run_id})
    await lifecycle.delete_run(request.app.state.ledger, ref, visible=visible, actor=actor(request))
    return Response(status_code=204)


async def join_run(request: Request) -> JSONResponse:
    ref = await _visible_ref(request)
    ledger: Ledger = request.app.state.ledger
    end = await join(ledger, ref)
    return JSONResponse(await final_output(request, ref, end))


async def join_stream(request: Request) -> StreamingResponse:
    ref = await _visible_ref(request, **({"action": _action(request)} if request.method == "POST" else {}))
    ledger: Ledger = request.app.state.ledger
    after = last_event_id(request)
    cancel_on_disconnect = query_bool(request, "cancel_on_disconnect")
    wanted = [m for m in request.query_params.getlist("stream_mode") if m]  # clients send an empty one for "all"
    run = await fetch_run(ledger, ref)  # 404 before any byte
    modes = sse_modes(run["kwargs"].get("stream_mode") or ["values"])
    if wanted:
        modes &= sse_modes(stream_modes(wanted))
    if after is not None:
        await check_resumable(ledger, ref, after)
    await record_access(request, "run.stream", thread_id=ref.thread_id, run_id=ref.run_id, after=after)
    if request.method == "POST":
        await _cancel(request, ref, _action(request), None)  # visible: checked above
    metadata_first = None
    if after is None:
        # No Last-Event-ID: the metadata event, then what happens from now on.
        async with ledger.session() as session:
            metadata_first = (await session.read_run(ref, 0, 1))[0]
            after = (await session.heads.require(ref)).seq
    frames = sse_stream(
        ledger, ref, after_seq=after, modes=modes, metadata_first=metadata_first,
        on_disconnect="cancel" if cancel_on_disconnect else "continue", heartbeat=request.app.state.heartbeat,
        streams=request.app.state.streams, actor=actor(request),
    )
    return sse_response(frames, ref)


routes = [
    guarded("/threads/{thread_id}/runs", create_run, methods=["POST"], action="create_run"),
    guarded("/threads/{thread_id}/runs", list_runs, methods=["GET"], action="search"),
    guarded("/threads/{thread_id}/runs/stream", stream_run, methods=["POST"], action="create_run"),
    guarded("/threads/{thread_id}/runs/wait", wait_run, methods=["POST"], action="create_run"),
    guarded("/runs", create_stateless, methods=["POST"], action="create_run"),
    guarded("/runs/batch", create_batch, methods=["POST"], action="create_run"),
    guarded("/runs/stream", stream_stateless, methods=["POST"], action="create_run"),
    guarded("/runs/wait", wait_stateless, methods=["POST"], action="create_run"),
    guarded("/runs/cancel", cancel_runs, methods=["POST"], action="update"),
    guarded("/threads/{thread_id}/runs/{run_id}", get_run, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}", delete_run, methods=["DELETE"], action="delete"),
    guarded("/threads/{thread_id}/runs/{run_id}/cancel", cancel_run, methods=["POST"], action="update"),
    guarded("/threads/{thread_id}/runs/{run_id}/join", join_run, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/stream", join_stream, methods=["GET"], action="read"),
    guarded("/threads/{thread_id}/runs/{run_id}/stream", join_stream, methods=["POST"], action="update"),  # cancels, then joins
]
