"""The one door to the database: a session (one pooled connection) and a transaction on it.

Everything above the ledger reads and writes through these: the tables'
statements (:attr:`Session.heads`, :attr:`Session.threads`,
:attr:`Session.secrets`, :attr:`Session.assistants`), the log's reads, and in a :class:`Transaction` the
conditional append. Driver errors are translated into ledger errors here, at
the boundary, by :meth:`Ledger.session <graphledger.ledger.store.Ledger.session>`.

A transaction's appends become visible to the process's subscribers and known
to its group-commit writer only once it commits
(:meth:`Ledger.transaction <graphledger.ledger.store.Ledger.transaction>`);
a transaction rolled back leaves no trace in either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.cursor import CursorFactory

from graphledger.ledger import read
from graphledger.ledger.access import AccessLog
from graphledger.ledger.assistants import Assistants
from graphledger.ledger.budgets import Budgets
from graphledger.ledger.events import RUN_CREATED, STATUS_AFTER, Event, NewEvent, RunRef, is_note
from graphledger.ledger.heads import Heads
from graphledger.ledger.read import Connection
from graphledger.ledger.secrets import Secrets
from graphledger.ledger.statement import NEW_RUN_HEAD, Head, HeadMoved, Statement, append_at, refusal
from graphledger.ledger.threads import Threads
from graphledger.ledger.tlog import Log


class Session:
    """One connection of the ledger's pool: the tables' statements and the log's reads."""

    def __init__(self, conn: Connection, statement: Statement) -> None:
        self.connection = conn
        """The connection itself, for the SQL of tables the ledger does not own (the checkpointer's)."""
        self.heads = Heads(conn)
        self.threads = Threads(conn)
        self.assistants = Assistants(conn)
        self.secrets = Secrets(conn)
        self.access = AccessLog(conn)
        self.budgets = Budgets(conn)
        """Budgets, their changes, the runs they charge and the admissions they refused."""
        self.log = Log(conn)
        """The Merkle log: leaves, tiles, proofs, checkpoints."""
        self._statement = statement

    async def read_run(self, ref: RunRef, after_seq: int = 0, limit: int = 10_000, *, kinds: Sequence[str] | None = None) -> list[Event]:
        return await read.read_run(self.connection, ref, after_seq, limit, kinds=kinds)

    def iter_run(self, ref: RunRef, after_seq: int = 0) -> AsyncIterator[Event]:
        return read.iter_run(self.connection, ref, after_seq)

    def run_rows(self, ref: RunRef, *, prefetch: int = 1000) -> CursorFactory[asyncpg.Record]:
        """The run's stored rows in order, through a cursor (inside a transaction): exports of any length."""
        return read.run_rows(self.connection, ref, prefetch)

    async def first_events(self, refs: Sequence[RunRef]) -> dict[RunRef, Event]:
        """The ``run.created`` event of each run of ``refs`` that exists."""
        events = await read.read_runs(self.connection, [(ref, 0) for ref in refs], 1)
        return {RunRef(e.thread_id, e.run_id): e for e in events}

    def chain_batches(self, *, size: int = 5_000) -> AsyncIterator[list[asyncpg.Record]]:
        """What the chain hashes cover of every event of the feed, in feed order, in batches (see :func:`read.chain_batches`)."""
        return read.chain_batches(self.connection, size)

    async def read_thread_feed(self, thread_id: UUID, after: read.FeedCursor, floor: int = 0, limit: int = 1_000) -> tuple[list[Event], int]:
        """The thread's part of the global feed after ``after`` (see :func:`read.read_thread_feed`)."""
        return await read.read_thread_feed(self.connection, thread_id, after, floor, limit)

    async def feed_event_exists(self, thread_id: UUID, cursor: read.FeedCursor) -> bool:
        return await read.feed_event_exists(self.connection, thread_id, cursor)

    async def feed_now(self) -> read.FeedCursor:
        return await read.feed_now(self.connection)

    async def last_of_kind(self, ref: RunRef, kind: str) -> Event | None:
        """The run's last event of ``kind``."""
        return await read.last_of_kind(self.connection, ref, kind)


class Transaction(Session):
    """A session inside a transaction: appends are conditional on the heads they read, and commit together."""

    def __init__(self, conn: Connection, statement: Statement) -> None:
        super().__init__(conn, statement)
        self.appended: list[Event] = []
        self.heads_after: dict[RunRef, Head] = {}

    async def append(
        self, ref: RunRef, new: Sequence[NewEvent], *, expected_seq: int | None = None, ts: datetime | None = None
    ) -> list[Event]:
        """Append ``new`` after the run's head (or exactly after ``expected_seq``).

        Lock the run's row first (:meth:`Heads.lock <graphledger.ledger.heads.Heads.lock>`)
        when a decision depends on its state: the append is conditional on the
        head it reads and fails with :class:`~graphledger.ledger.errors.Conflict`
        if another writer moved it.
        """
        head = self.heads_after.get(ref)
        if head is None:
            head = await self.heads.get(ref)
        if expected_seq is None:
            expected_seq = head.seq if head is not None else 0
        try:
            events = await append_at(self.connection, self._statement, ref, head, new, expected_seq, ts=ts)
        except HeadMoved:
            # Another writer appended between the read and the statement: say where the head is now.
            raise refusal(ref, await self.heads.get(ref), expected_seq) from None
        if events and head is not None:
            status, kind = head.status, head.kind
            for event in events:
                status = STATUS_AFTER.get(event.kind, status)
                kind = kind if is_note(event.kind) else event.kind  # as the head's last_kind: notes never count
            last = events[-1]
            self.heads_after[ref] = Head(last.seq, last.hash, kind, status)
            self.appended.extend(events)
        return events

    async def create_run(self, ref: RunRef, created: Mapping[str, Any]) -> Event:
        """Insert a run's head row and append its ``run.created`` event with payload ``created``."""
        new = NewEvent.of(RUN_CREATED, dict(created))  # refused before anything is written
        await self.heads.insert(ref, created)
        # The row was just inserted: its head is the table's defaults, no need to read it back
        # (a round trip). The append still checks it.
        self.heads_after[ref] = NEW_RUN_HEAD
        (event,) = await self.append(ref, [new], expected_seq=0)
        return event

