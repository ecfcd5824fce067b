from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

from graphledger.ledger.events import Event, canonical_json
from graphledger.projections.messages import conversation, fold, merge, messages_of

T0 = datetime(2026, 11, 22, tzinfo=timezone.utc)
THREAD, RUN = uuid4(), uuid4()


def event(kind: str, payload: Any, seq: int = 1, position: int = 1) -> Event:
    return Event(THREAD, RUN, seq, kind, canonical_json(payload), T0, bytes(32), position)


def test_human_input_of_a_run() -> None:
    found = messages_of(event("run.created", {"input": {"messages": [{"role": "user", "content": "hi", "id": "h1"}]}}))
    assert [(w.message_id, w.type, w.part) for w in found] == [("h1", "human", 0)]


def test_node_updates_values_and_serialized_forms() -> None:
    update = {"agent": {"messages": [{"type": "ai", "content": "", "id": "a1", "tool_calls": []}]},
              "tools": [{"messages": {"type": "tool", "content": "42", "id": "t1", "tool_call_id": "c"}}]}
    assert [(w.message_id, w.type) for w in messages_of(event("stream:updates", update))] == [("a1", "ai"), ("t1", "tool")]
    values = {"messages": [
        {"type": "system", "content": "be brief", "id": "s1"},
        {"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "AIMessage"], "kwargs": {"content": "x", "id": "a2"}},
    ]}
    found = messages_of(event("stream:values", values))
    assert [(w.message_id, w.type, w.part) for w in found] == [("s1", "system", 0), ("a2", "ai", 1)]
    assert found[1].data == {"content": "x", "id": "a2", "type": "ai"}


def test_chunks_subgraphs_and_other_shapes_are_not_messages() -> None:
    assert messages_of(event("stream:messages", [{"type": "AIMessageChunk", "content": "he", "id": "a"}, {}])) == []
    assert messages_of(event("stream:updates|sub:1", {"n": {"messages": [{"type": "ai", "content": "x", "id": "a"}]}})) == []
    assert messages_of(event("stream:values", {"messages": ["text", {"type": "weird", "content": 1}, {"type": "ai"}]})) == []
    assert messages_of(event("stream:values", [1, 2])) == []
    assert messages_of(event("run.created", {"input": "not a mapping"})) == []


def test_a_message_without_id_is_named_by_where_it_was_written() -> None:
    (written,) = messages_of(event("run.created", {"input": {"messages": [{"role": "user", "content": "hi"}]}}, seq=1))
    assert written.message_id == f"{RUN}:1:0"


def test_later_write_replaces_content_and_keeps_the_place() -> None:
    writes = [
        event("stream:updates", {"agent": {"messages": [{"type": "ai", "content": "draft", "id": "a"}]}}, seq=2, position=10),
        event("stream:values", {"messages": [{"type": "human", "content": "q", "id": "h"}, {"type": "ai", "content": "final", "id": "a"}]}, seq=3, position=20),
    ]
    state: dict = {}
    for e in writes:
        fold(state, e)
    ordered = conversation(state.values(), THREAD)
    assert [(m.message_id, m.position, m.part, m.data["content"]) for m in ordered] == [("a", 10, 0, "final"), ("h", 20, 0, "q")]


def test_merge_gives_the_same_message_in_any_order() -> None:
    payloads = ["one", "two", "three"]
    writes = [
        event("stream:updates", {"n": {"messages": [{"type": "ai", "content": text, "id": "a"}]}}, seq=i + 1, position=(i + 1) * 10)
        for i, text in enumerate(payloads)
    ]
    results = set()
    for order in itertools.permutations(writes):
        state: dict = {}
        for e in order:
            fold(state, e)
        (message,) = state.values()
        results.add((message.position, message.seq, message.data["content"]))
    assert results == {(10, 1, "three")}
    assert merge(None, next(iter(state.values()))) == next(iter(state.values()))


def test_a_later_run_rewriting_a_message_shows_as_its_editor() -> None:
    later_run = uuid4()
    first = event("stream:updates", {"agent": {"messages": [{"type": "ai", "content": "original", "id": "a"}]}}, seq=3, position=10)
    rewrite = Event(
        THREAD, later_run, 1, "run.created",
        canonical_json({"input": {"messages": [{"type": "ai", "content": "rewritten", "id": "a"}]}}), T0, bytes(32), 50,
    )
    results = set()
    for order in ([first, rewrite], [rewrite, first]):
        state: dict = {}
        for e in order:
            fold(state, e)
        (message,) = state.values()
        results.add((message.run_id, message.seq, message.updated_run_id, message.updated_seq, message.edited_by, message.data["content"]))
    assert results == {(RUN, 3, later_run, 1, later_run, "rewritten")}
    state = {}
    fold(state, first)
    fold(state, event("stream:values", {"messages": [{"type": "ai", "content": "original", "id": "a"}]}, seq=4, position=11))
    (message,) = state.values()
    # an echo in a state snapshot writes nothing: the writer is still the update
    assert message.edited_by is None and (message.updated_run_id, message.updated_seq) == (RUN, 3)


def test_echoes_in_later_snapshots_are_no_edits_and_an_echoed_only_message_is_written_by_its_first_echo() -> None:
    later_run = uuid4()

    def echo_by(run: Any, seq: int, position: int, content: str) -> Event:
        payload = {"messages": [{"type": "ai", "content": content, "id": "a"}]}
        return Event(THREAD, run, seq, "stream:values", canonical_json(payload), T0, bytes(32), position)

    update = event("stream:updates", {"agent": {"messages": [{"type": "ai", "content": "x", "id": "a"}]}}, seq=2, position=10)
    writes = [echo_by(RUN, 1, 5, "x"), update, echo_by(RUN, 3, 11, "x"), echo_by(later_run, 4, 40, "x")]
    echoes_only = [w for w in writes if w is not update]
    for history, writer in ((writes, (RUN, 2, 10)), (echoes_only, (RUN, 1, None))):
        results = set()
        for order in itertools.permutations(history):
            state: dict = {}
            for e in order:
                fold(state, e)
            (message,) = state.values()
            results.add((message.updated_run_id, message.updated_seq, message.writer_position, message.edited_by))
        assert results == {(*writer, None)}
