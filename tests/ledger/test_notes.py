"""Notes: records about a run (feedback) that may follow its terminal event without reopening it."""

from __future__ import annotations

import asyncpg
import pytest

from graphledger.ledger import Ledger, RunFinished
from graphledger.ledger.events import NOTE_FEEDBACK, NewEvent, is_note
from graphledger.ledger.export import Selection, export, verify_lines
from tests.ledger.helpers import count_events, new_run


async def _note(ledger: Ledger, ref: object, value: object) -> None:
    async with ledger.transaction() as tx:
        await tx.append(ref, [NewEvent.of(NOTE_FEEDBACK, value)])  # type: ignore[arg-type]


def test_a_note_is_named_by_its_prefix() -> None:
    assert is_note("note.feedback") and not is_note("run.succeeded") and not is_note(None) and not is_note("notes")


async def test_a_note_may_follow_the_terminal_event_and_nothing_else_may(ledger: Ledger, conn: asyncpg.Connection) -> None:
    ref = await new_run(ledger)
    await _note(ledger, ref, {"during": True})  # a note before the end is an event like any other
    await ledger.append(ref, "run.succeeded", {})
    await _note(ledger, ref, {"key": "helpful", "score": 1})
    await _note(ledger, ref, {"key": "helpful", "score": 0})
    async with ledger.session() as session:
        head = await session.heads.require(ref)
    assert (head.seq, head.kind, head.status) == (5, "run.succeeded", "success")  # still finished
    before = await count_events(conn)
    with pytest.raises(RunFinished):
        await ledger.append(ref, "stream:values", {"x": 1})
    with pytest.raises(RunFinished):
        async with ledger.transaction() as tx:
            await tx.append(ref, [NewEvent.of("stream:values", {"x": 1}), NewEvent.of(NOTE_FEEDBACK, {})])
    assert await count_events(conn) == before
    assert (await ledger.verify(ref)).ok


async def test_a_tail_of_a_finished_run_ends_at_its_terminal_event(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    await _note(ledger, ref, {"during": True})
    await ledger.append(ref, "run.succeeded", {})
    await _note(ledger, ref, {"after": True})
    assert [e.kind for e in [e async for e in ledger.tail(ref, 0)]] == ["run.created", NOTE_FEEDBACK, "run.succeeded"]
    assert [e async for e in ledger.tail(ref, 3)] == []  # after the terminal event: nothing, and no wait
    assert [e async for e in ledger.tail(ref, 4)] == []


async def test_an_export_with_notes_after_the_end_verifies(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    await ledger.append(ref, "run.succeeded", {})
    await _note(ledger, ref, {"key": "helpful", "score": 1})
    lines = b"".join([chunk async for chunk in export(ledger, Selection(run_id=ref.run_id))]).splitlines(keepends=True)
    report = verify_lines(lines)
    assert report.ok and report.events == 3, report.reason
    tampered = [line.replace(b'"note.feedback"', b'"stream:values"') if b"note.feedback" in line else line for line in lines]
    assert not verify_lines(tampered).ok
