"""A thread's messages as a fold over its events.

Complete messages are read from three kinds of events, root namespace only:

- ``run.created``: ``input.messages`` (the human input of the run);
- ``stream:updates``: ``<node>.messages`` of each node's update;
- ``stream:values``: ``messages`` of the graph state.

Token chunks (``stream:messages``) are never folded: they are parts of a
message, whose complete form arrives in an update or in the state. A message is
a mapping with ``content`` and a ``type`` (``human``, ``ai``, ``tool``,
``system``, ...) or a ``role`` (``user``, ``assistant``, ...), or LangChain's
serialized form (``{"lc": 1, "type": "constructor", "id": [..., "AIMessage"],
"kwargs": {...}}``).

Messages are deduplicated by id within a thread, as LangGraph's
``add_messages`` does: a message keeps the place where it first appeared (and the run that
first wrote it) and takes the content of its latest write ; it also names the
run and seq of its last write that is not an echo (input, a node's update;
a ``stream:values`` snapshot repeats every message and writes none of them),
so a later run that rewrites a message shows as its editor. Both rules compare log positions
(global position, then index within the event), not arrival order, so they
give the same result whatever order the writes are applied in: applied inline
as flushes commit, or replayed from the log. A message without an id gets one
derived from where it was written (``<run_id>:<seq>:<index>``), so a replay
names it alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from graphledger.ledger.events import RUN_CREATED, Event
from graphledger.projections._text import text

MESSAGE_KINDS = frozenset({RUN_CREATED, "stream:updates", "stream:values"})

_TYPES = {
    "human": "human", "user": "human", "HumanMessage": "human", "HumanMessageChunk": "human",
    "ai": "ai", "assistant": "ai", "AIMessage": "ai", "AIMessageChunk": "ai",
    "tool": "tool", "ToolMessage": "tool", "ToolMessageChunk": "tool",
    "system": "system", "developer": "system", "SystemMessage": "system", "SystemMessageChunk": "system",
    "function": "function", "FunctionMessage": "function",
    "chat": "chat", "ChatMessage": "chat",
}


@dataclass(frozen=True, slots=True)
class Written:
    """One message as one event carries it."""

    message_id: str
    part: int  # its index among the event's messages
    type: str
    data: Mapping[str, Any]
    echo: bool = False  # carried by a state snapshot (``stream:values``), which repeats the thread's messages


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a thread: where it first appeared, and its latest content."""

    thread_id: UUID
    message_id: str
    position: int
    part: int
    run_id: UUID  # the run that first recorded it
    seq: int
    updated_position: int
    updated_part: int
    type: str
    data: Mapping[str, Any]
    updated_run_id: UUID  # the run that last wrote it (see ``writer``): another run than ``run_id`` edited it
    updated_seq: int
    writer_position: int | None  # where that write is; None when every write was an echo (then it is the first one)
    writer_part: int | None

    @property
    def edited_by(self) -> UUID | None:
        """The run that rewrote this message after the run that first recorded it, if another one did."""
        return self.updated_run_id if self.updated_run_id != self.run_id else None

    @property
    def key(self) -> tuple[int, int]:
        return (self.position, self.part)


def _message(value: Any) -> tuple[str, Mapping[str, Any]] | None:
    """(type, fields) of a message in any of its serialized forms, or None for anything else."""
    if not isinstance(value, Mapping):
        return None
    if value.get("lc") == 1 and value.get("type") == "constructor":
        path, fields = value.get("id"), value.get("kwargs")
        if not isinstance(path, list) or not path or not isinstance(fields, Mapping):
            return None
        kind = _TYPES.get(path[-1]) if isinstance(path[-1], str) else None
        return (kind, {**fields, "type": kind}) if kind and "content" in fields else None
    name = value.get("type") if value.get("type") is not None else value.get("role")
    kind = _TYPES.get(name) if isinstance(name, str) else None
    return (kind, value) if kind and "content" in value else None


def _listed(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _carried(event: Event) -> Iterator[Any]:
    """The candidate messages an event carries, in order."""
    if event.kind not in MESSAGE_KINDS:
        return
    payload = event.value
    if not isinstance(payload, dict):
        return
    if event.kind == RUN_CREATED:
        given = payload.get("input")
        if isinstance(given, dict):
            yield from _listed(given.get("messages"))
    elif event.kind == "stream:values":
        yield from _listed(payload.get("messages"))
    else:
        for update in payload.values():
            for item in update if isinstance(update, list) else [update]:
                if isinstance(item, dict):
                    yield from _listed(item.get("messages"))


def messages_of(event: Event) -> list[Written]:
    """The complete messages ``event`` writes (none for most events)."""
    written = []
    for part, candidate in enumerate(_carried(event)):
        found = _message(candidate)
        if found is None:
            continue
        kind, fields = found
        message_id = text(fields.get("id")) or f"{event.run_id}:{event.seq}:{part}"
        written.append(Written(message_id, part, kind, fields, event.kind == "stream:values"))
    return written


def merge(stored: Message | None, new: Message) -> Message:
    """Two writes of one message: the earlier place, the later content (in any order, same result)."""
    if stored is None:
        return new
    first = new if new.key < stored.key else stored
    last = new if (new.updated_position, new.updated_part) > (stored.updated_position, stored.updated_part) else stored
    writer = new if _writes_after(new, stored) else stored
    return Message(
        stored.thread_id, stored.message_id, first.position, first.part, first.run_id, first.seq,
        last.updated_position, last.updated_part, last.type, last.data,
        writer.updated_run_id, writer.updated_seq, writer.writer_position, writer.writer_part,
    )


def _writes_after(new: Message, stored: Message) -> bool:
    """Whether ``new`` names the message's last writer rather than ``stored``.

    The writer is the latest write that is not an echo (a run's input, a
    node's update); a state snapshot repeats every message of the thread and
    names no writer, unless the message was only ever echoed (then the first
    echo is its writer).
    """
    if new.writer_position is not None and new.writer_part is not None:
        if stored.writer_position is None or stored.writer_part is None:
            return True
        return (new.writer_position, new.writer_part) > (stored.writer_position, stored.writer_part)
    return stored.writer_position is None and new.key < stored.key


def fold(messages: dict[tuple[UUID, str], Message], event: Event) -> dict[tuple[UUID, str], Message]:
    """Add the messages ``event`` writes (the event must carry its global position)."""
    for written in messages_of(event):
        new = Message(
            event.thread_id, written.message_id, event.global_position, written.part, event.run_id, event.seq,
            event.global_position, written.part, written.type, written.data, event.run_id, event.seq,
            None if written.echo else event.global_position, None if written.echo else written.part,
        )
        key = (event.thread_id, written.message_id)
        messages[key] = merge(messages.get(key), new)
    return messages


def conversation(messages: Iterable[Message], thread_id: UUID) -> list[Message]:
    """A thread's messages in conversation order."""
    return sorted((m for m in messages if m.thread_id == thread_id), key=lambda m: m.key)
