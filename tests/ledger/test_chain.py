from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timezone
from uuid import UUID

from graphledger.ledger import chain
from graphledger.ledger.events import Event

THREAD = UUID("00000000-0000-4000-8000-000000000001")
RUN = UUID("00000000-0000-4000-8000-000000000002")
TS = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def make_chain(n: int) -> list[Event]:
    events, previous = [], chain.GENESIS
    for seq in range(1, n + 1):
        data = f'{{"i":{seq}}}'
        digest = chain.link(previous, THREAD, RUN, seq, "stream:values", TS, data)
        events.append(Event(THREAD, RUN, seq, "stream:values", data, TS, digest))
        previous = digest
    return events


def test_link_matches_the_documented_formula() -> None:
    header = f"{THREAD}\n{RUN}\n1\nrun.created\n2026-01-02T03:04:05.678901Z\n".encode()
    expected = hashlib.sha256(bytes(32) + header + b'{"a":1}').digest()
    assert chain.link(chain.GENESIS, THREAD, RUN, 1, "run.created", TS, '{"a":1}') == expected


def test_intact_chain_verifies() -> None:
    events = make_chain(5)
    report = chain.check(RUN, events, head_hash=events[-1].hash)
    assert report.ok and report.events == 5 and report.last_hash == events[-1].hash


def test_changed_payload_names_the_event() -> None:
    events = make_chain(5)
    events[2] = replace(events[2], data='{"i":99}')
    report = chain.check(RUN, events)
    assert not report.ok and report.first_bad_seq == 3


def test_missing_event_is_a_seq_gap() -> None:
    events = make_chain(5)
    del events[1]
    report = chain.check(RUN, events)
    assert not report.ok and report.first_bad_seq == 3 and "expected" in (report.reason or "")


def test_truncated_tail_is_caught_by_the_head() -> None:
    events = make_chain(5)
    report = chain.check(RUN, events[:4], head_hash=events[-1].hash)
    assert not report.ok and report.first_bad_seq == 5


def test_timestamp_is_part_of_the_hash() -> None:
    events = make_chain(3)
    events[0] = replace(events[0], ts=TS.replace(microsecond=0))
    assert chain.check(RUN, events).first_bad_seq == 1


def test_the_writers_clock_gives_a_utc_time_and_its_chain_text_that_agree() -> None:
    clock = chain.Clock()
    before = datetime.now(timezone.utc)
    stamps = [clock.now() for _ in range(20_000)]  # across a second's change, most likely
    after = datetime.now(timezone.utc)
    for ts, text in stamps:
        assert ts.tzinfo is timezone.utc and chain.format_ts(ts) == text
    assert before <= stamps[0][0] and stamps[-1][0] <= after
