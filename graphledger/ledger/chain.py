"""The per-run SHA-256 hash chain (pure; no I/O).

For the n-th event of a run (``seq = n``, counting from 1)::

    hash_0 = 32 zero bytes
    header_n = UTF-8 of "<thread_id>\\n<run_id>\\n<seq>\\n<kind>\\n<ts>\\n"
    hash_n = SHA-256(hash_{n-1} || header_n || data_n)

``thread_id`` and ``run_id`` are lower-case hyphenated UUIDs, ``seq`` a decimal
integer, ``ts`` the writer's timestamp in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
and ``data_n`` the payload's exact stored UTF-8 bytes. The header has no field
that may contain a newline and the payload comes last, so the encoding is
unambiguous. See docs/hash-chain.md.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol
from uuid import UUID

GENESIS = bytes(32)


_UTC = timezone.utc


def format_ts(ts: datetime) -> str:
    """The chain's text form of a timestamp (UTC, microseconds, ``Z``)."""
    if ts.tzinfo is not _UTC:
        if ts.tzinfo is None:
            raise ValueError("event timestamps must be timezone-aware")
        ts = ts.astimezone(_UTC)
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"


def run_prefix(thread_id: UUID, run_id: UUID) -> bytes:
    """The part of every header of a run that does not change (computed once per run)."""
    return f"{thread_id}\n{run_id}\n".encode()


def link_with(previous: bytes, prefix: bytes, seq: int, kind: str, ts: datetime | str, data: str) -> bytes:
    """:func:`link` with the run's header prefix already encoded (and ``ts`` possibly already formatted)."""
    stamp = ts if isinstance(ts, str) else format_ts(ts)
    return hashlib.sha256(previous + prefix + f"{seq}\n{kind}\n{stamp}\n{data}".encode()).digest()


class Clock:
    """Writer timestamps with their chain text, formatted cheaply.

    The whole seconds are formatted once per second; the datetime and the text
    are built from the same integers, so they always agree.
    """

    __slots__ = ("_second", "_text", "_fields")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._fields = (1970, 1, 1, 0, 0, 0)

    def now(self) -> tuple[datetime, str]:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second = second
            base = datetime.fromtimestamp(second, _UTC)
            self._fields = (base.year, base.month, base.day, base.hour, base.minute, base.second)
            self._text = base.strftime("%Y-%m-%dT%H:%M:%S")
        # The constructor, not base.replace(): a third of the cost, paid on every event.
        return datetime(*self._fields, micro, _UTC), f"{self._text}.{micro:06d}Z"


def link(previous: bytes, thread_id: UUID, run_id: UUID, seq: int, kind: str, ts: datetime, data: str) -> bytes:
    """The hash of one event given the hash of the event before it."""
    return link_with(previous, run_prefix(thread_id, run_id), seq, kind, ts, data)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of checking one run's chain."""

    run_id: UUID
    events: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None
    last_hash: bytes = GENESIS


class _Linked(Protocol):
    thread_id: UUID
    run_id: UUID
    seq: int
    kind: str
    ts: datetime
    data: str
    hash: bytes


def check(run_id: UUID, events: Iterable[_Linked], head_hash: bytes | None = None) -> ChainReport:
    """Recompute a run's chain over ``events`` (in seq order) and report the first bad event.

    ``head_hash``, when given, is the hash the run's head claims as its last; a
    mismatch there means events were removed from the end.
    """
    previous = GENESIS
    count = 0
    for expected_seq, event in enumerate(events, start=1):
        count += 1
        if event.seq != expected_seq:
            return ChainReport(run_id, count, False, event.seq, f"seq {event.seq} where {expected_seq} was expected")
        digest = link(previous, event.thread_id, event.run_id, event.seq, event.kind, event.ts, event.data)
        if digest != event.hash:
            return ChainReport(run_id, count, False, event.seq, "stored hash does not match the recomputed chain")
        previous = digest
    if head_hash is not None and head_hash != previous:
        return ChainReport(run_id, count, False, count + 1, "run head hash does not match the last event (events missing)")
    return ChainReport(run_id, count, True, last_hash=previous)
