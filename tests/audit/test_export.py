"""Exports hold the complete record, and offline verification finds any change to them, naming the line."""

from __future__ import annotations

import io
import json
import random
import re
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from graphledger.ledger import Ledger, LedgerError, RunRef
from graphledger.ledger.errors import RunNotEnded
from graphledger.ledger.export import Selection, verify_lines
from tests._db import raw
from tests.audit.conftest import Recorded, export_bytes


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def check(lines: list[bytes]) -> tuple[bool, int | None]:
    report = verify_lines(lines)
    return report.ok, report.line


async def test_an_export_holds_every_event_exactly_as_stored_and_verifies(ledger: Ledger, recorded: Recorded) -> None:
    data = await export_bytes(ledger, Selection(thread_id=recorded.thread_id))
    lines = lines_of(data)
    report = verify_lines(lines)
    assert report.ok and report.runs == 3
    header, *events, trailer = (json.loads(line) for line in lines)
    assert header["type"] == "header" and header["filters"] == {"thread_id": str(recorded.thread_id)} and header["runs"] == 3
    stored = [e for ref in recorded.runs for e in await ledger.read_run(ref)]
    assert report.events == len(stored) == len(events) == trailer["events"]
    assert [(e["run_id"], e["seq"], e["kind"], e["data"], e["hash"]) for e in events] == [
        (str(e.run_id), e.seq, e.kind, e.data, e.hash.hex()) for e in stored
    ]
    assert [r["terminal"] for r in trailer["runs"]] == ["run.succeeded", "run.succeeded", "run.failed"]
    one = lines_of(await export_bytes(ledger, Selection(run_id=recorded.runs[2].run_id)))
    assert verify_lines(one).ok and len(one) == 2 + len([e for e in stored if e.run_id == recorded.runs[2].run_id])


async def test_a_time_window_selects_runs_by_creation(ledger: Ledger, recorded: Recorded) -> None:
    async with raw(ledger) as conn:
        created = [await conn.fetchval("SELECT created_at FROM runs WHERE run_id = $1", r.run_id) for r in recorded.runs]
    data = await export_bytes(ledger, Selection(since=created[1], until=created[2]))
    trailer = json.loads(lines_of(data)[-1])
    assert [r["run_id"] for r in trailer["runs"]] == [str(recorded.runs[1].run_id)]


@pytest.fixture
async def exported(ledger: Ledger, recorded: Recorded) -> list[bytes]:
    return lines_of(await export_bytes(ledger, Selection(thread_id=recorded.thread_id)))


def test_flipping_any_byte_of_any_line_names_that_line(exported: list[bytes]) -> None:
    rng = random.Random(7)
    for index, line in enumerate(exported):
        for position in range(len(line)):  # every byte of the file
            for flip in (0x01, rng.choice((0x02, 0x20, 0x40, 0x80))):
                changed = bytearray(line)
                changed[position] ^= flip
                lines = [*exported[:index], bytes(changed), *exported[index + 1 :]]
                ok, named = check(lines)
                assert not ok, (index + 1, position, flip)
                assert named == index + 1, (index + 1, position, flip, verify_lines(lines).reason)


def test_deleting_any_line_names_where_it_was(exported: list[bytes]) -> None:
    for index in range(len(exported)):
        ok, named = check([*exported[:index], *exported[index + 1 :]])
        assert not ok and named == index + 1, (index + 1, named)


def test_swapping_any_two_neighbouring_lines_names_one_of_them(exported: list[bytes]) -> None:
    for index in range(len(exported) - 1):
        lines = list(exported)
        lines[index], lines[index + 1] = lines[index + 1], lines[index]
        ok, named = check(lines)
        assert not ok and named in (index + 1, index + 2), (index + 1, named)


def test_crafted_lines_are_named_not_raised(exported: list[bytes]) -> None:
    """Lines a parser or an encoder chokes on are reported on their line like any other bad line."""
    nested = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    assert check([*exported[:2], nested, *exported[3:]]) == (False, 3)
    event = json.loads(exported[1])
    event["kind"] = "\ud800"  # a lone surrogate: valid JSON, not encodable text
    surrogate = (json.dumps(event) + "\n").encode()
    assert b"\\ud800" in surrogate
    report = verify_lines([exported[0], surrogate, *exported[2:]])
    assert (report.ok, report.line) == (False, 2) and "Unicode" in (report.reason or ""), report
    from graphledger.ledger.note import NoteError, unsigned_checkpoint

    with pytest.raises(NoteError, match="not a decimal number"):  # a superscript two is a digit to str.isdigit
        unsigned_checkpoint("origin\n\u00b2\n" + "A" * 43 + "=\n\n\u2014 k sig\n")


def test_an_edited_trailer_or_a_cut_file_is_named(exported: list[bytes]) -> None:
    trailer = json.loads(exported[-1])
    trailer["events"] -= 1
    edited = [*exported[:-1], (json.dumps(trailer) + "\n").encode()]
    assert check(edited) == (False, len(exported))
    assert verify_lines(edited).reason is not None and "trailer" in verify_lines(edited).reason  # type: ignore[operator]
    assert check(exported[:-1]) == (False, len(exported))  # cut before the trailer
    assert check([*exported, exported[-1]]) == (False, len(exported) + 1)  # a line after the trailer
    assert check([*exported[:-1], exported[-1][:-1]]) == (False, len(exported))  # no final line end
    assert check([]) == (False, 1)


async def test_the_database_chain_check_finds_a_tampered_event(ledger: Ledger, recorded: Recorded, dsn: str) -> None:
    from graphledger import audit

    assert (await audit.verify_runs(ledger)).bad == []
    target = recorded.runs[1]
    where = "WHERE thread_id = $1 AND run_id = $2 AND seq = 2"
    conn = await asyncpg.connect(dsn)
    original = await conn.fetchval(f"SELECT data::text FROM events {where}", target.thread_id, target.run_id)

    async def store(text: str) -> None:
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute(f"UPDATE events SET data = $3::json {where}", target.thread_id, target.run_id, text)
            await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")

    try:
        await store('{"x":1}')
        result = await audit.verify_runs(ledger)
        assert [(ref, seq) for ref, seq, _ in result.bad] == [(target, 2)]
        data = await export_bytes(ledger, Selection(run_id=target.run_id))
        assert check(lines_of(data)) == (False, 3)  # the header, seq 1, then the altered seq 2
    finally:
        await store(original)  # the other tests of this module share the runs
        await conn.close()
    assert (await audit.verify_runs(ledger)).bad == []


async def test_runs_that_have_not_ended_are_left_out_and_named(ledger: Ledger, recorded: Recorded) -> None:
    pending = await ledger.create_run(recorded.thread_id, assistant_id="demo")
    lines = lines_of(await export_bytes(ledger, Selection(thread_id=recorded.thread_id)))
    header = json.loads(lines[0])
    assert header["not_ended"] == [str(pending.run_id)] and header["runs"] == 3
    assert verify_lines(lines).ok
    with pytest.raises(RunNotEnded, match="has not ended"):
        await export_bytes(ledger, Selection(run_id=pending.run_id))
    await ledger.append(RunRef(recorded.thread_id, pending.run_id), "run.interrupted", {"reason": "test"})


@pytest.mark.parametrize(
    ("selection", "error"),
    [
        (lambda: Selection(run_id=uuid4()), "RunNotFound"),
        (lambda: Selection(thread_id=uuid4()), "ThreadNotFound"),
        (lambda: Selection(run_id=uuid4(), thread_id=uuid4()), "InvalidEvent"),
        (lambda: Selection(since=datetime(2030, 1, 1, tzinfo=timezone.utc), until=datetime(2020, 1, 1, tzinfo=timezone.utc)), "InvalidEvent"),
    ],
)
async def test_bad_selections_are_refused_before_any_byte(ledger: Ledger, selection: Any, error: str) -> None:
    with pytest.raises(LedgerError) as caught:
        await export_bytes(ledger, selection())
    assert type(caught.value).__name__ == error


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_is_shown_on_a_terminal_and_nowhere_else(ledger: Ledger, recorded: Recorded) -> None:
    from graphledger import audit
    from graphledger.progress import Progress

    shown, silent = Terminal(), io.StringIO()
    for stream in (shown, silent):
        await audit.export_to(ledger, Selection(thread_id=recorded.thread_id), io.BytesIO(), Progress("events exported", stream=stream))
    total = len(lines_of(await export_bytes(ledger, Selection(thread_id=recorded.thread_id)))) - 2
    assert re.search(rf"\revents exported: {total:,} events, [0-9,]+/s \n$", shown.getvalue()) and silent.getvalue() == ""
    checked = Terminal()
    await audit.verify_runs(ledger, None, Progress("runs verified", "runs", stream=checked))
    assert re.search(r"\rruns verified \[#{30}\] 100% ([0-9,]+)/\1 runs, [0-9,]+/s \n$", checked.getvalue())
