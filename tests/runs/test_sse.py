"""A run's SSE frames rendered from its stored events (no database: frames are a pure function of events)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from graphledger.ledger import Event
from graphledger.runs.sse import frame, sse_modes

RUN = uuid.UUID("6f1c1f2f-5e10-4d1e-9d57-0b4a1c525a0e")


def event(seq: int, kind: str, data: str = "{}") -> Event:
    return Event(uuid.uuid4(), RUN, seq, kind, data, datetime(2026, 11, 28, tzinfo=timezone.utc), b"\0" * 32)


def test_created_is_the_metadata_frame_and_the_seq_is_the_id() -> None:
    assert frame(event(1, "run.created"), {"values"}) == (
        b'event: metadata\ndata: {"run_id":"6f1c1f2f-5e10-4d1e-9d57-0b4a1c525a0e","attempt":1}\nid: 1\n\n'
    )


def test_a_later_attempt_is_announced_and_the_first_start_is_not() -> None:
    assert frame(event(2, "run.started", '{"attempt":1,"worker":"w"}'), {"values"}) is None
    second = frame(event(9, "run.started", '{"attempt":2,"worker":"w"}'), {"values"})
    assert second is not None and b'"attempt":2' in second and second.endswith(b"id: 9\n\n")


def test_chunks_of_the_requested_modes_only_with_their_stored_bytes() -> None:
    modes = sse_modes(["messages-tuple", "values"])
    assert modes == {"messages", "values"}
    data = '{"b":1,"a":"é"}'
    assert frame(event(3, "stream:values", data), modes) == f"event: values\ndata: {data}\nid: 3\n\n".encode()
    assert frame(event(4, "stream:messages|outer:1", "[1]"), modes) == b"event: messages|outer:1\ndata: [1]\nid: 4\n\n"
    assert frame(event(5, "stream:updates", "{}"), modes) is None


def test_errors_are_sent_and_other_events_are_not() -> None:
    assert frame(event(6, "stream:error", '{"error":"E","message":"m"}'), set()) == b'event: error\ndata: {"error":"E","message":"m"}\nid: 6\n\n'
    for kind in ("llm.usage", "run.cancel_requested", "run.succeeded", "run.released"):
        assert frame(event(7, kind), {"values"}) is None
