"""Event kinds, the event records, and the canonical JSON every payload is stored as."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from graphledger.ledger.errors import InvalidEvent, InvalidPayload

RUN_CREATED = "run.created"
RUN_STARTED = "run.started"
RUN_CANCEL_REQUESTED = "run.cancel_requested"
RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_TIMED_OUT = "run.timed_out"
RUN_INTERRUPTED = "run.interrupted"
RUN_RELEASED = "run.released"
"""A worker gave a running run back unfinished (its process is stopping): the run is pending again, to be resumed."""
LLM_USAGE = "llm.usage"

STREAM_PREFIX = "stream:"
"""A stream chunk's kind is ``stream:<mode>[|<namespace>]``: the SSE event name after the prefix."""

STREAM_ERROR = STREAM_PREFIX + "error"
"""A run's error as its stream tells it (sent as the SSE ``error`` event), appended before ``run.failed``/``run.timed_out``."""

TERMINAL_KINDS = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_TIMED_OUT, RUN_INTERRUPTED})
NOTE_PREFIX = "note."
"""A note (``note.feedback``, ...) is a record about a run, not a step of it: it may follow the terminal event."""
NOTE_FEEDBACK = NOTE_PREFIX + "feedback"


def is_note(kind: str | None) -> bool:
    """Whether ``kind`` is a note: appended at any time after ``run.created``, even after the terminal event.

    A note changes no status, is never part of a stream, and does not become
    the head's ``last_kind``: a finished run stays finished.
    """
    return kind is not None and kind.startswith(NOTE_PREFIX)
FAILURE_KINDS = frozenset({RUN_FAILED, RUN_TIMED_OUT})
"""Terminal kinds whose payload carries ``{"error": {"type", "message"}}``."""

STATUS_AFTER: dict[str, str] = {
    RUN_CREATED: "pending",
    RUN_STARTED: "running",
    RUN_SUCCEEDED: "success",
    RUN_FAILED: "error",
    RUN_TIMED_OUT: "timeout",
    RUN_INTERRUPTED: "interrupted",
    RUN_RELEASED: "pending",
}
"""The run status each lifecycle kind leads to (kinds not listed leave it as it is)."""

TERMINAL_STATUSES = frozenset({"success", "error", "timeout", "interrupted"})
ACTIVE_STATUSES = ("pending", "running")
RUN_STATUSES = tuple(dict.fromkeys(STATUS_AFTER.values()))
"""Every run status, in lifecycle order: pending, running, success, error, timeout, interrupted."""

EXECUTOR_SERVER = "server"
EXECUTOR_CALLER = "caller"
"""Who executes a run, as its ``run.created`` payload's ``executor`` says: a ``graphledger serve``
worker claims only ``server`` runs; a ``caller`` run (created by a program through
``Ledger.create_run`` or the recorder) is executed by that program and never claimed."""

MAX_KIND_LENGTH = 256
_DOTTED_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")


_valid_kinds: set[str] = set()


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it may be stored, else raise :class:`InvalidEvent`.

    Allowed: dotted lower-case kinds (``run.started``, ``llm.usage``, ...) and
    stream kinds ``stream:<name>`` whose name is printable text without newlines.
    """
    if kind in _valid_kinds:
        return kind
    _check_kind(kind)
    if len(_valid_kinds) < 10_000:  # kinds repeat: remember the valid ones
        _valid_kinds.add(kind)
    return kind


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND_LENGTH:
        raise InvalidEvent(f"event kind must be a non-empty string of at most {MAX_KIND_LENGTH} characters")
    if kind.startswith(STREAM_PREFIX):
        name = kind[len(STREAM_PREFIX):]
        if not name or not name.isprintable():
            raise InvalidEvent(f"stream kind {kind!r} needs a printable mode name")
        return
    if _DOTTED_KIND.fullmatch(kind) is None:
        raise InvalidEvent(f"invalid event kind {kind!r}: use dotted lower-case words or stream:<mode>")


def _explain(value: Any, path: str) -> str | None:
    """Where ``value`` stops being JSON, for the error message (the slow path)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"payload key {key!r} at {path or '$'} is not a string"
            found = _explain(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _explain(item, f"{path}[{index}]")
            if found:
                return found
    elif isinstance(value, float) and not math.isfinite(value):
        return f"payload value {value!r} at {path or '$'} is not valid JSON"
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        return f"payload value of type {type(value).__name__} at {path or '$'} is not JSON-encodable"
    return None


def _plain(value: Any) -> bool:
    """Whether ``value`` is JSON as it is: string keys, finite numbers, JSON types (the fast path)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            item_kind = type(item)
            if item_kind is str or item_kind is int or item_kind is bool or item is None:
                continue
            if item_kind is float:
                if item - item != 0.0:  # NaN and infinities
                    return False
            elif not _plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            item_kind = type(item)
            if item_kind is str or item_kind is int or item_kind is bool or item is None:
                continue
            if item_kind is float:
                if item - item != 0.0:
                    return False
            elif not _plain(item):
                return False
        return True
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return bool(value - value == 0.0)
    return _explain(value, "") is None  # subclasses of JSON types are JSON too


_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_json(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Canonical JSON text of ``value``, unchecked (:func:`canonical_json` checks first).

    Sorted keys, no insignificant whitespace, UTF-8 text. ``default`` turns an
    object JSON has no type for into JSON data. Raises ``TypeError`` or
    ``ValueError`` for what cannot be encoded.
    """
    try:
        return orjson.dumps(value, default=default, option=_ORJSON).decode()
    except orjson.JSONEncodeError:
        if default is not None:
            raise
        # Integers beyond 64 bits, subclasses orjson does not take, very deep nesting.
        text = _encode(value)
        text.encode("utf-8")
        return text


def canonical_json(value: Any) -> str:
    """Encode ``value`` as canonical JSON: sorted keys, no insignificant whitespace, UTF-8 text.

    Raises :class:`InvalidPayload` for NaN or infinities, non-string keys, lone
    surrogates and objects JSON cannot represent; nothing is written then.
    """
    if not _plain(value):
        raise InvalidPayload(_explain(value, "") or "payload is not valid JSON")
    try:
        return encode_json(value)
    except UnicodeEncodeError as exc:
        raise InvalidPayload(f"payload is not valid UTF-8 text: {exc.reason}") from None
    except (TypeError, ValueError, RecursionError):
        raise InvalidPayload(_explain(value, "") or "payload is not valid JSON") from None


class RunRef:
    """Where a run lives: every read and write names the thread and the run (immutable, hashable)."""

    __slots__ = ("thread_id", "run_id", "_hash")

    thread_id: UUID
    run_id: UUID
    _hash: int

    def __init__(self, thread_id: UUID, run_id: UUID) -> None:
        object.__setattr__(self, "thread_id", thread_id)
        object.__setattr__(self, "run_id", run_id)
        # Looked up in dicts once per appended event: hash once.
        object.__setattr__(self, "_hash", hash((thread_id, run_id)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RunRef is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RunRef)
            and self._hash == other._hash
            and self.run_id == other.run_id
            and self.thread_id == other.thread_id
        )

    def __repr__(self) -> str:
        return f"RunRef(thread_id={self.thread_id!r}, run_id={self.run_id!r})"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended: its kind and canonical JSON payload."""

    kind: str
    data: str

    @classmethod
    def of(cls, kind: str, payload: Any) -> NewEvent:
        """Validate ``kind`` and encode ``payload`` canonically."""
        return cls(validate_kind(kind), canonical_json(payload))


_UNDECODED: Any = object()


@dataclass(slots=True)
class Event:
    """A stored event, exactly as the log holds it (treat as read-only)."""

    thread_id: UUID
    run_id: UUID
    seq: int
    kind: str
    data: str
    ts: datetime
    hash: bytes
    global_position: int = 0
    tx: int = 0
    _value: Any = field(default=_UNDECODED, repr=False, compare=False)

    @property
    def value(self) -> Any:
        """The payload decoded (cached)."""
        if self._value is _UNDECODED:
            self._value = json.loads(self.data)
        return self._value

    @property
    def is_terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(item) for item in value)
    return False


def jsonb_text(value: Any, what: str) -> str:
    """JSON text for a ``jsonb`` column (metadata, secrets), which cannot hold U+0000 as the log's ``json`` can.

    Raises :class:`InvalidPayload` naming ``what`` when ``value`` is not
    canonical JSON or carries U+0000 in a key or a string.
    """
    text = canonical_json(value)
    if "\\u0000" in text and _has_nul(value):
        raise InvalidPayload(f"{what} cannot contain the character U+0000")
    return text
