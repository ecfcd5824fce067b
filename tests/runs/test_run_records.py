"""Bulk cancel, run deletion and webhook requests at the runs layer: filters applied per run, records kept, secrets left out."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from graphledger.ledger import Ledger, RunNotFound, RunRef
from graphledger.ledger.events import EXECUTOR_CALLER
from graphledger.ledger.threads import Visibility
from graphledger.projections import Projections
from graphledger.runs import InvalidRequest, RunRequest, admit
from graphledger.runs.errors import RunBusy
from graphledger.runs.lifecycle import DELETE_RUN, cancel_many, delete_run
from graphledger.runs.secrets import without_url_secrets
from tests.runs.conftest import ask


async def _pending(ledger: Ledger, owner: str, thread_id: Any = None) -> RunRef:
    """A run nobody executes (its caller would): it stays pending."""
    request = ask(if_not_exists="create")
    return (await admit(ledger, request, thread_id=thread_id or uuid4(), thread_metadata={"owner": owner}, executor=EXECUTOR_CALLER)).ref


async def test_a_bulk_cancel_by_status_cancels_only_the_runs_the_filter_shows(ledger: Ledger) -> None:
    mine = [await _pending(ledger, "ann") for _ in range(2)]
    theirs = await _pending(ledger, "bob")
    actor = {"identity": "ann", "permissions": []}
    done = await cancel_many(ledger, status="pending", visible=Visibility.of({"owner": "ann"}), actor=actor)
    assert {c.ref for c in done} == set(mine)
    projections = Projections(ledger)
    assert [(await projections.run_status(r)).status for r in mine] == ["interrupted"] * 2
    assert (await projections.run_status(theirs)).status == "pending"
    for ref in mine:
        requested = [e for e in await ledger.read_run(ref) if e.kind == "run.cancel_requested"]
        assert [e.value["actor"] for e in requested] == [actor]
    # by ids: unknown and foreign ones are left out, not refused
    unknown = RunRef(theirs.thread_id, uuid4())
    assert await cancel_many(ledger, refs=[theirs, unknown], visible=Visibility.of({"owner": "ann"})) == []
    assert (await projections.run_status(theirs)).status == "pending"
    (done_theirs,) = await cancel_many(ledger, refs=[theirs, unknown], action="rollback")
    assert done_theirs.ref == theirs and (await projections.run_status(theirs)).status == "interrupted"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either run ids or a status"),
        ({"refs": [], "status": "all"}, "either run ids or a status"),
        ({"status": "success"}, "status must be one of"),
        ({"status": "all", "action": "explode"}, "action must be one of"),
    ],
)
async def test_a_bulk_cancel_refuses_what_it_cannot_do(ledger: Ledger, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await cancel_many(ledger, **kwargs)


async def test_deleting_a_run_is_a_record_and_refused_while_it_is_active(ledger: Ledger) -> None:
    ref = await _pending(ledger, "ann")
    with pytest.raises(RunBusy):
        await delete_run(ledger, ref)
    await cancel_many(ledger, refs=[ref])
    with pytest.raises(RunNotFound):  # outside the filter: not found, nothing written
        await delete_run(ledger, ref, visible=Visibility.of({"owner": "bob"}))
    actor = {"identity": "ann", "permissions": ["x"]}
    before = await ledger.read_run(ref)
    await delete_run(ledger, ref, actor=actor)
    assert await ledger.read_run(ref) == before  # the run's own events are untouched
    async with ledger.session() as session:
        assert await session.heads.hidden(ref)
        record = await session.heads.record(ref, DELETE_RUN)
        assert record is not None and not await session.heads.active(ref.thread_id)
        events = await session.read_run(record.ref)
    assert [e.kind for e in events] == ["run.created", "run.succeeded"]
    assert events[0].value["record_of"] == str(ref.run_id) and events[0].value["actor"] == actor
    with pytest.raises(RunNotFound):
        await delete_run(ledger, ref)  # once
    with pytest.raises(RunNotFound):
        await delete_run(ledger, record.ref)  # a record run is not the API's to delete
    runs = await Projections(ledger).runs(thread_id=ref.thread_id, listed=True)
    assert runs == []  # neither the deleted run nor the record are listed
    assert len(await Projections(ledger).runs(thread_id=ref.thread_id)) == 2  # the audit's list has both


@pytest.mark.parametrize(
    ("url", "recorded"),
    [
        ("https://hooks.example.org/run-done", "https://hooks.example.org/run-done"),
        ("http://user:pw@h:8080/p?token=abc&x=1", "http://[redacted]@h:8080/p?token=[redacted]&x=[redacted]"),
        ("https://key@h/p?bare#frag", "https://[redacted]@h/p?[redacted]#[redacted]"),
        ("HTTPS://h/p", "https://h/p"),
    ],
)
def test_a_webhook_is_recorded_without_its_user_info_query_values_and_fragment(url: str, recorded: str) -> None:
    request = RunRequest.parse({"assistant_id": "demo", "webhook": url})
    assert request.webhook == url
    payload = request.record()
    assert payload["webhook"] == without_url_secrets(url) == recorded
    assert ("webhook" in payload.get("redacted", [])) == (recorded != url)


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        ("ftp://h/x", "http or https"),
        ("//h/x", "http or https"),
        ("http:///x", "host"),
        ("http://h:port/x", "not a valid URL"),
        ("http://h/a b", "whitespace"),
        (7, "http or https"),
        ("", "http or https"),
    ],
)
def test_a_webhook_that_is_not_an_http_url_is_refused(webhook: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        RunRequest.parse({"assistant_id": "demo", "webhook": webhook})
    assert RunRequest.parse({"assistant_id": "demo", "webhook": None}).webhook is None
