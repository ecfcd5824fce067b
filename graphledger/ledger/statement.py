"""The append statement: one conditional statement that writes a batch of events of many runs.

Concurrency, in short. The ``runs`` row of a run is its stream head
(``last_seq``, ``last_hash``, ``last_kind``). Every append names the head it
expects and the statement only writes when the head is still there and the run
has no terminal event::

    lock heads (FOR UPDATE, in (thread_id, run_id) order)
      WHERE last_seq = expected AND last_kind is not terminal
    update heads to the new last seq/hash/kind
    insert the events of exactly the runs whose heads were locked
    pg_notify('graphledger_events', 'run_id:last_seq,...')
    pg_notify('graphledger_runs', '') if a run was created or ended

all in one statement, so one round trip and one implicit transaction. Two
writers on one run cannot interleave: the second waits for the first's row
lock, then re-evaluates ``last_seq = expected`` against the committed head
(READ COMMITTED re-checks the locked row), finds it moved and writes nothing
for that run; it reloads the head and either retries or reports why. Because
the row lock is held until commit, a run's events become visible in ``seq``
order, so a reader of ``seq > n`` never skips one. Locking heads in a fixed
order keeps two multi-run flushes from deadlocking. Notifications are sent at
commit, never before the rows are visible.

This is the one statement that writes the ``events`` table and the head
columns of ``runs``; every other statement on ``runs`` is in
:mod:`graphledger.ledger.heads`. Read models written in the same statement
(a :class:`Projector`) name their parameters; the statement numbers them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from graphledger.ledger import chain
from graphledger.ledger.errors import Conflict, LedgerError, RunFinished, RunNotFound
from graphledger.ledger.events import (
    NOTE_PREFIX,
    STATUS_AFTER,
    TERMINAL_KINDS,
    Event,
    NewEvent,
    RunRef,
    is_note,
)
from graphledger.ledger.read import Connection

CHANNEL = "graphledger_events"
"""Notified with ``run_id:last_seq,...`` hints by every append (see :mod:`graphledger.ledger.tail`)."""
RUNS_CHANNEL = "graphledger_runs"
"""Notified (empty payload) when an append admits a run or ends one: the run queue changed."""
NOTIFY_RUNS_PER_MESSAGE = 100  # keeps each payload far below PostgreSQL's 8000-byte limit
_TERMINAL_KINDS_SQL = ", ".join(f"'{kind}'" for kind in sorted(TERMINAL_KINDS))

HEAD_PARAMS = (
    ("thread_id", "uuid"), ("run_id", "uuid"), ("expected_seq", "int"), ("last_seq", "int"),
    ("last_hash", "bytea"), ("last_kind", "text"), ("status", "text"),
)
"""The statement's arrays of one element per run (the heads it moves)."""
EVENT_PARAMS = (("idx", "int"), ("seq", "int"), ("kind", "text"), ("data", "text"), ("ts", "timestamptz"), ("hash", "bytea"))
"""The statement's arrays of one element per event (``idx``: the run's ordinality in the head arrays)."""


class Projector(Protocol):
    """Read models written in the same statement as the events they come from.

    :attr:`params` names the projector's own array parameters; :meth:`ctes`
    returns data-modifying CTEs that follow the append statement's own, with
    each parameter written as the placeholder it is given, and may use the CTE
    ``inserted(thread_id, run_id, seq, global_position)`` (the events actually
    written: none of a run whose head moved). :meth:`args` fills the
    parameters for a batch of events, by name, or returns None when the events
    change no read model (the plain statement is used then).
    """

    params: Sequence[str]

    def ctes(self, placeholders: Mapping[str, str]) -> str: ...

    def args(self, events: Iterable[Event]) -> Mapping[str, list[Any]] | None: ...


def _arrays(params: Sequence[tuple[str, str]], placeholders: Mapping[str, str]) -> str:
    return ", ".join(f"{placeholders[name]}::{kind}[]" for name, kind in params)


def _placeholders(names: Iterable[str], first: int = 1) -> dict[str, str]:
    return {name: f"${n}" for n, name in enumerate(names, first)}


_OWN = _placeholders([f"head_{name}" for name, _ in HEAD_PARAMS] + [f"event_{name}" for name, _ in EVENT_PARAMS])


_NOTIFIED_CTE = f"""
, notified AS (
    SELECT pg_notify('{CHANNEL}', string_agg(n.run_id::text || ':' || n.last_seq, ','))
    FROM (SELECT run_id, last_seq, (row_number() OVER ()) / {NOTIFY_RUNS_PER_MESSAGE} AS part FROM head) n
    GROUP BY n.part
    UNION ALL
    -- A run was admitted or ended: workers may have a run to claim.
    (SELECT pg_notify('{RUNS_CHANNEL}', '') FROM head h JOIN batch b ON b.idx = h.idx
     WHERE b.status IS NOT NULL AND b.status <> 'running' LIMIT 1)
)"""


def _sql(extension: str, notify: bool = True) -> str:
    """The statement; with ``notify=False`` without its notifications (see :class:`Statement`)."""
    heads = _arrays([(f"head_{n}", k) for n, k in HEAD_PARAMS], _OWN)
    events = _arrays([(f"event_{n}", k) for n, k in EVENT_PARAMS], _OWN)
    return f"""
WITH batch AS (
    SELECT * FROM unnest({heads})
        WITH ORDINALITY AS b(thread_id, run_id, expected_seq, last_seq, last_hash, last_kind, status, idx)
), locked AS (
    SELECT b.idx
    FROM runs r JOIN batch b ON r.thread_id = b.thread_id AND r.run_id = b.run_id
    WHERE r.last_seq = b.expected_seq
      AND (coalesce(r.last_kind, '') <> ALL (ARRAY[{_TERMINAL_KINDS_SQL}])
           -- after the terminal event, only notes (see events.is_note)
           OR NOT EXISTS (SELECT 1 FROM unnest({_OWN["event_idx"]}::int[], {_OWN["event_kind"]}::text[]) AS k(idx, kind)
                          WHERE k.idx = b.idx AND k.kind NOT LIKE '{NOTE_PREFIX}%'))
    ORDER BY r.thread_id, r.run_id
    FOR UPDATE OF r
), head AS (
    UPDATE runs r
    SET last_seq = b.last_seq, last_hash = b.last_hash, last_kind = b.last_kind,
        status = coalesce(b.status, r.status), updated_at = now()
    FROM batch b JOIN locked l ON l.idx = b.idx
    WHERE r.thread_id = b.thread_id AND r.run_id = b.run_id
    RETURNING r.thread_id, r.run_id, r.last_seq, b.idx
), inserted AS (
    INSERT INTO events (thread_id, run_id, seq, kind, data, ts, hash)
    SELECT h.thread_id, h.run_id, e.seq, e.kind, e.data::json, e.ts, e.hash
    FROM unnest({events})
        WITH ORDINALITY AS e(idx, seq, kind, data, ts, hash, ord)
    JOIN head h ON h.idx = e.idx
    ORDER BY e.ord
    RETURNING thread_id, run_id, seq, global_position
){_NOTIFIED_CTE if notify else ""}{"," + extension if extension else ""}
SELECT h.run_id, h.last_seq, (SELECT count(*) FROM inserted) AS inserted{
    ", (SELECT count(*) FROM notified) AS notified" if notify else ""}
FROM head h
"""


APPEND_SQL = _sql("")


class Statement:
    """The append statement, with a projector's CTEs when one is given: its SQL and its arguments.

    With ``notify=False`` the statement sends no notifications; whoever uses
    it sends them once the transaction has committed
    (:class:`~graphledger.ledger.hints.Hints`). Inside a longer transaction
    that matters: PostgreSQL takes one database-wide lock at the commit of a
    transaction that notified, and holds it until that commit is flushed to
    disk, so such commits are flushed one after another instead of many in
    one flush, and a burst of admissions queues for that lock.
    """

    def __init__(self, projector: Projector | None = None, *, notify: bool = True) -> None:
        self.projector = projector
        self.notify = notify
        self._plain_sql = APPEND_SQL if notify else _sql("", notify=False)
        if projector is None:
            self.projected_sql = self._plain_sql
            self._names: tuple[str, ...] = ()
        else:
            self._names = tuple(projector.params)
            self.projected_sql = _projected_sql(projector, notify)

    def plan(self, batch: Batch, events: Sequence[Event]) -> tuple[str, list[Any]]:
        """The SQL and arguments that append ``batch`` (whose events are ``events``)."""
        args = batch.args()
        if self.projector is not None:
            extra = self.projector.args(events)
            if extra is not None:
                return self.projected_sql, [*args, *(extra[name] for name in self._names)]
        return self._plain_sql, args


def _projected_sql(projector: Projector, notify: bool = True) -> str:
    return _sql(projector.ctes(_placeholders(projector.params, len(_OWN) + 1)), notify)


@dataclass(slots=True)
class Head:
    """A run's stream head: the last event's seq, hash and kind, and the run's status."""

    seq: int
    hash: bytes
    kind: str | None
    status: str = "pending"

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


NEW_RUN_HEAD = Head(0, chain.GENESIS, None)
"""The head of a run row just inserted (the table's defaults): no event yet."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def chain_onto(ref: RunRef, head: Head, items: Iterable[tuple[str, str, datetime]]) -> list[Event]:
    """Number and hash ``items`` as the events that follow ``head``."""
    seq, digest = head.seq, head.hash
    prefix = chain.run_prefix(ref.thread_id, ref.run_id)
    events = []
    for kind, data, ts in items:
        seq += 1
        digest = chain.link_with(digest, prefix, seq, kind, ts, data)
        events.append(Event(ref.thread_id, ref.run_id, seq, kind, data, ts, digest))
    return events


@dataclass(slots=True)
class Batch:
    """Column arrays of one append statement."""

    heads: list[list[Any]] = field(default_factory=lambda: [[] for _ in HEAD_PARAMS])
    events: list[list[Any]] = field(default_factory=lambda: [[] for _ in EVENT_PARAMS])

    def add(self, ref: RunRef, head: Head, events: Sequence[Event]) -> Head:
        """Add ``events`` (already chained onto ``head``); return the head after them."""
        indexes, seqs, kinds, datas, stamps, hashes = self.events
        indexes.extend([len(self.heads[0]) + 1] * len(events))  # the run's ordinality in the head arrays
        seqs.extend([e.seq for e in events])
        kinds.extend([e.kind for e in events])
        datas.extend([e.data for e in events])
        stamps.extend([e.ts for e in events])
        hashes.extend([e.hash for e in events])
        status = None
        kind = head.kind  # the last kind that is not a note's: a note never makes a run unfinished
        for event in events:
            if event.kind in STATUS_AFTER:
                status = STATUS_AFTER[event.kind]
            if not is_note(event.kind):
                kind = event.kind
        last = events[-1]
        for column, value in zip(self.heads, (ref.thread_id, ref.run_id, head.seq, last.seq, last.hash, kind, status), strict=True):
            column.append(value)
        return Head(last.seq, last.hash, kind, status or head.status)

    def args(self) -> list[Any]:
        return [*self.heads, *self.events]


class HeadMoved(Exception):
    """The head moved between its read and the conditional append: nothing was written; read it again to say why."""

    def __init__(self, ref: RunRef) -> None:
        super().__init__(f"the head of run {ref.run_id} moved")
        self.ref = ref


def refusal(ref: RunRef, head: Head | None, expected_seq: int | None = None) -> LedgerError:
    """Why an append to ``ref`` expecting ``expected_seq`` cannot be written, given its ``head``."""
    if head is None:
        return RunNotFound(f"run {ref.run_id} not found in thread {ref.thread_id}")
    if head.terminal:
        return RunFinished(ref.run_id, head.status, head.kind)
    return Conflict(ref.run_id, expected_seq if expected_seq is not None else -1, head.seq, head.kind)


async def append_at(
    conn: Connection,
    statement: Statement,
    ref: RunRef,
    head: Head | None,
    new: Sequence[NewEvent],
    expected_seq: int,
    *,
    ts: datetime | None = None,
) -> list[Event]:
    """Append ``new`` to a run whose head (as read: ``head``) must be at ``expected_seq``; durable once committed.

    Raises :class:`Conflict` when ``head`` is not at ``expected_seq``,
    :class:`RunFinished` after a terminal event, :class:`RunNotFound` for an
    unknown run, and :class:`HeadMoved` when the head moved after it was read.
    Writes nothing then.
    """
    notes_only = bool(new) and all(is_note(e.kind) for e in new)
    if head is None or (head.terminal and not notes_only) or head.seq != expected_seq:
        raise refusal(ref, head, expected_seq)
    if not new:
        return []
    stamp = ts or utcnow()
    events = chain_onto(ref, head, [(e.kind, e.data, stamp) for e in new])
    batch = Batch()
    batch.add(ref, head, events)
    sql, args = statement.plan(batch, events)
    if not await conn.fetch(sql, *args):
        raise HeadMoved(ref)
    return events
