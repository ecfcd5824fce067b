"""Exports of the log as NDJSON, and their verification with no database.

An export is one UTF-8 file, one JSON object per line (see docs/export.md):

1. a **header**: ``{"type": "header", "format": "graphledger-export",
   "version": 2, "exported_at", "server_version", "filters", "runs",
   "not_ended", "checkpoint", "unproven", "sha256"}`` (``checkpoint``: the latest
   signed checkpoint of the Merkle log, or null; ``unproven``: how many of the
   export's events that checkpoint does not cover); runs that have not ended
   are left out (their record is not complete yet) and listed in ``not_ended``;
2. one **event** line per event, runs one after another, each run's events in
   ``seq`` order: ``{"type": "event", "thread_id", "run_id", "seq", "kind",
   "ts", "data", "hash"}``, where ``ts`` is the writer's timestamp in the
   chain's text form and ``data`` is a JSON string holding the payload's
   stored text exactly; version 2 adds ``"leaf"`` (its leaf index, or null
   when the checkpoint does not cover it) and ``"proof"`` (its inclusion
   proof in the checkpoint's tree, hex); version 1 files still verify;
3. a **trailer**: ``{"type": "trailer", "events", "runs": [{"thread_id",
   "run_id", "events", "first_hash", "last_hash", "terminal"}], "sha256"}``.

The header's and trailer's ``sha256`` is the SHA-256 (hex) of the line's
canonical JSON without that key, so a changed byte in either is found on its
own line; event lines are covered by the hash chain.

Only a signed checkpoint proves an event, so an export made with a
:class:`Signer` first makes sure one covers every event it carries: when the
latest checkpoint is not signed by that key or leaves some of the events out
(they are newer), the tree is grown and a checkpoint signed before the
export's snapshot is taken.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson

from graphledger import __version__
from graphledger.ledger import merkle
from graphledger.ledger.chain import GENESIS, format_ts, link_with, run_prefix
from graphledger.ledger.checkpointer import sign_checkpoint
from graphledger.ledger.errors import (
    InvalidEvent,
    RunNotEnded,
    RunNotFound,
    ThreadNotFound,
)
from graphledger.ledger.events import (
    TERMINAL_KINDS,
    TERMINAL_STATUSES,
    RunRef,
    canonical_json,
    is_note,
)
from graphledger.ledger.note import Checkpoint, NoteError, Signer, Verifier, read_checkpoint, unsigned_checkpoint
from graphledger.ledger.session import Session

if TYPE_CHECKING:
    from graphledger.ledger.store import Ledger

FORMAT = "graphledger-export"
VERSION = 2
"""Version 2 adds the latest signed checkpoint and the count of events it does not cover (header), and each
event's leaf index and inclusion proof."""
VERSIONS = (1, 2)
BATCH = 2_000  # event lines per chunk yielded (and rows per cursor fetch)


def sealed(record: dict[str, Any]) -> str:
    """A header or trailer line: its canonical JSON plus ``sha256`` of that JSON."""
    body = canonical_json(record)
    return body[:-1] + f',"sha256":"{hashlib.sha256(body.encode()).hexdigest()}"}}'


@dataclass(slots=True)
class RunSummary:
    thread_id: UUID
    run_id: UUID
    events: int = 0
    first_hash: str | None = None
    last_hash: str | None = None
    terminal: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "thread_id": str(self.thread_id), "run_id": str(self.run_id), "events": self.events,
            "first_hash": self.first_hash, "last_hash": self.last_hash, "terminal": self.terminal,
        }


@dataclass(slots=True)
class Selection:
    """Which runs an export holds: one run, one thread's runs, or the runs created in ``[since, until)``."""

    run_id: UUID | None = None
    thread_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.run_id is not None and self.thread_id is not None:
            raise InvalidEvent("export either a run or a thread, not both")
        if (self.run_id or self.thread_id) and (self.since or self.until):
            raise InvalidEvent("--since/--until select runs by time; they do not combine with a run or a thread")
        if self.since and self.until and self.since >= self.until:
            raise InvalidEvent("since must be before until")

    def filters(self) -> dict[str, Any]:
        found = {"run_id": self.run_id, "thread_id": self.thread_id, "since": self.since, "until": self.until}
        return {k: (v.isoformat() if isinstance(v, datetime) else str(v)) for k, v in found.items() if v is not None}

    async def runs(self, session: Session) -> tuple[list[tuple[UUID, UUID]], list[UUID]]:
        """The ended runs selected, in order, and the runs left out because they have not ended yet."""
        if self.thread_id is not None and not await session.threads.exists(self.thread_id):
            raise ThreadNotFound(f"thread {self.thread_id} not found")
        rows = await session.heads.statuses(run_id=self.run_id, thread_id=self.thread_id, since=self.since, until=self.until)
        if self.run_id is not None:
            if not rows:
                raise RunNotFound(f"run {self.run_id} not found")
            if rows[0][1] not in TERMINAL_STATUSES:
                raise RunNotEnded(f"run {self.run_id} has not ended yet ({rows[0][1]}): its record is not complete")
        ended = [(ref.thread_id, ref.run_id) for ref, status in rows if status in TERMINAL_STATUSES]
        return ended, [ref.run_id for ref, status in rows if status not in TERMINAL_STATUSES]


def _event_line(
    thread: str, run: str, seq: int, kind: str, ts: datetime, data: str, digest: bytes, leaf: int | None, proof: list[bytes]
) -> bytes:
    return b"".join((
        b'{"type":"event","thread_id":"', thread.encode(), b'","run_id":"', run.encode(), b'","seq":', str(seq).encode(),
        b',"kind":', orjson.dumps(kind), b',"ts":"', format_ts(ts).encode(), b'","data":', orjson.dumps(data),
        b',"hash":"', digest.hex().encode(), b'","leaf":', b"null" if leaf is None else str(leaf).encode(),
        b',"proof":', orjson.dumps([p.hex() for p in proof]), b"}\n",
    ))


def _signed_by(note: str, verifier: Verifier) -> bool:
    try:
        read_checkpoint(note, verifier)
    except NoteError:
        return False
    return True


async def cover(ledger: Ledger, selection: Selection, signer: Signer, directory: Path | None = None) -> bool:
    """Make the latest checkpoint one signed by ``signer`` that covers every event of ``selection``'s ended runs.

    Signs one (growing the tree first, and writing it to ``directory`` too)
    unless the latest already is; returns whether it signed. Refusals of the
    selection (a run not found, not ended) come first, before anything is signed.
    """
    async with ledger.session() as session:
        runs, _ = await selection.runs(session)
        note = await session.log.latest_checkpoint()
        if note is not None and _signed_by(note, signer.verifier):
            if await session.log.uncovered(runs, unsigned_checkpoint(note).size) == 0:
                return False
    await sign_checkpoint(ledger, signer, directory)
    return True


async def export(
    ledger: Ledger, selection: Selection, *, progress: Any = None, signer: Signer | None = None, directory: Path | None = None,
) -> AsyncGenerator[bytes, None]:
    """The export of ``selection`` as chunks of lines, read from one consistent snapshot with constant memory.

    The first chunk is the header line alone. With ``signer``, a checkpoint
    covering every exported event is signed first when the latest does not
    (:func:`cover`; also written to ``directory``). Events that the header's
    checkpoint does not cover anyway (a transaction older than them was still
    open when the tree grew) go out without a proof and are counted in the
    header's ``unproven``. ``progress``, when given, is called with the number
    of events written so far.
    """
    if signer is not None:
        await cover(ledger, selection, signer, directory)
    async with ledger.transaction(isolation="repeatable_read", readonly=True) as tx:
        runs, active = await selection.runs(tx)
        note = await tx.log.latest_checkpoint()
        size = unsigned_checkpoint(note).size if note is not None else 0
        header = {
            "type": "header", "format": FORMAT, "version": VERSION, "server_version": __version__,
            "exported_at": datetime.now(timezone.utc).isoformat(), "filters": selection.filters(), "runs": len(runs),
            "not_ended": [str(run_id) for run_id in active], "checkpoint": note, "unproven": await tx.log.uncovered(runs, size),
        }
        yield (sealed(header) + "\n").encode()
        summaries: list[RunSummary] = []
        total = 0
        chunk: list[bytes] = []
        for thread_id, run_id in runs:
            summary = RunSummary(thread_id, run_id)
            summaries.append(summary)
            thread, run = str(thread_id), str(run_id)
            leaves = {seq: index for seq, index in (await tx.log.run_leaves(thread_id, run_id)).items() if index < size}
            async for row in tx.run_rows(RunRef(thread_id, run_id), prefetch=BATCH):
                digest = bytes(row["hash"])
                leaf = leaves.get(row["seq"])
                proof = await tx.log.inclusion(leaf, size) if leaf is not None else []
                chunk.append(_event_line(thread, run, row["seq"], row["kind"], row["ts"], row["data"], digest, leaf, proof))
                summary.events += 1
                summary.first_hash = summary.first_hash or digest.hex()
                summary.last_hash = digest.hex()
                if row["kind"] in TERMINAL_KINDS:
                    summary.terminal = row["kind"]
                if len(chunk) >= BATCH:
                    total += len(chunk)
                    yield b"".join(chunk)
                    chunk = []
                    if progress is not None:
                        progress(total)
        total += len(chunk)
        trailer = {"type": "trailer", "events": total, "runs": [s.as_json() for s in summaries]}
        yield b"".join(chunk) + (sealed(trailer) + "\n").encode()
        if progress is not None:
            progress(total)


# -- offline verification -------------------------------------------------------------------


@dataclass(slots=True)
class FileReport:
    """The outcome of checking an export: ``line`` is the first bad line (1-based), if any."""

    ok: bool
    runs: int = 0
    events: int = 0
    line: int | None = None
    reason: str | None = None
    version: int = VERSION
    checkpoint: Checkpoint | None = None
    proven: int = 0
    """Events whose inclusion in the checkpoint's tree was proven."""
    unproven: int = 0
    """Events without a proof: newer than the checkpoint (refused when a key is given)."""


class _Bad(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice")
    return found


def _parse(number: int, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise _Bad(number, f"not a JSON object: {exc}") from None
    except RecursionError:
        raise _Bad(number, "not a JSON object: nested too deeply") from None
    if not isinstance(record, dict):
        raise _Bad(number, "not a JSON object")
    return record


def _check_seal(number: int, record: dict[str, Any], what: str) -> None:
    claimed = record.pop("sha256", None)
    try:
        body = canonical_json(record)
    except Exception:
        raise _Bad(number, f"the {what} is not canonical JSON") from None
    if claimed != hashlib.sha256(body.encode()).hexdigest():
        raise _Bad(number, f"the {what} was altered: its sha256 does not match its content")


EVENT_KEYS_V1 = {"type", "thread_id", "run_id", "seq", "kind", "ts", "data", "hash"}
EVENT_KEYS = EVENT_KEYS_V1 | {"leaf", "proof"}


@dataclass(slots=True)
class _Run:
    thread_id: str
    prefix: bytes
    seq: int = 0
    hash: bytes = GENESIS
    first_hash: str | None = None
    terminal: str | None = None


def verify_file(path: str | os.PathLike[str], verifier: Verifier | None = None) -> FileReport:
    """Check an export file with no database; see :func:`verify_lines`."""
    with open(path, "rb") as lines:
        return verify_lines(lines, verifier)


@dataclass(slots=True)
class _Proofs:
    """What the header's checkpoint lets the event lines prove."""

    checkpoint: Checkpoint | None
    required: bool
    proven: int = 0
    unproven: int = 0


def verify_lines(lines: Iterable[bytes], verifier: Verifier | None = None) -> FileReport:
    """Check an export's lines (see the module docstring): chains, seq, terminal events, header and trailer.

    Version 2 event lines carry an inclusion proof in the header's checkpoint,
    and every proof given is checked. With ``verifier``, the checkpoint's
    signature is checked and every event must be proven to be in its tree.
    """
    runs: dict[str, _Run] = {}
    current: str | None = None
    events = 0
    version = VERSION
    proofs = _Proofs(None, verifier is not None)
    trailer_seen = False
    number = 0
    try:
        for number, raw in enumerate(lines, start=1):
            if not raw.endswith(b"\n"):
                raise _Bad(number, "the last line has no line end (cut short?)")
            try:
                text = raw[:-1].decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad(number, "the line is not UTF-8 text") from None
            if trailer_seen:
                raise _Bad(number, "a line after the trailer")
            record = _parse(number, text)
            kind = record.get("type")
            if number == 1:
                if kind != "header":
                    raise _Bad(1, "the first line is not the export header")
                _check_seal(1, record, "header")
                version = record.get("version")  # type: ignore[assignment]  # checked on the next line
                if record.get("format") != FORMAT or type(version) is not int or version not in VERSIONS:
                    raise _Bad(1, f"not a {FORMAT} file of version {' or '.join(map(str, VERSIONS))}")
                if verifier is not None and version < 2:
                    # Its events carry no proofs: a signed note pasted into its header would prove none of them.
                    raise _Bad(1, f"a version {version} file carries no proofs for the key to check: {SIGN_FIRST}")
                proofs.checkpoint = _header_checkpoint(record, verifier)
                continue
            if kind == "event":
                current = _check_event(number, record, runs, current, version, proofs)
                events += 1
            elif kind == "trailer":
                _check_seal(number, record, "trailer")
                _check_trailer(number, record, runs, events)
                trailer_seen = True
            else:
                raise _Bad(number, f"unknown line type {kind!r}")
        if number == 0:
            raise _Bad(1, "the file is empty")
        if not trailer_seen:
            raise _Bad(number + 1, "the file ends without a trailer (cut short?)")
    except _Bad as bad:
        return FileReport(False, len(runs), events, bad.line, bad.reason, version, proofs.checkpoint, proofs.proven, proofs.unproven)
    return FileReport(
        True, len(runs), events, version=version, checkpoint=proofs.checkpoint, proven=proofs.proven, unproven=proofs.unproven
    )


SIGN_FIRST = (
    "export it again with graphledger export --key ledger.key, which first signs a checkpoint that covers it, "
    "or once the server (serve --signing-key) has signed its next checkpoint"
)


def _header_checkpoint(record: dict[str, Any], verifier: Verifier | None) -> Checkpoint | None:
    note = record.get("checkpoint")
    if note is None:
        if verifier is not None:
            raise _Bad(
                1,
                "the export carries no signed checkpoint to check with the key (a version 1 file, or none was signed yet): "
                + SIGN_FIRST.replace(" it,", " its events,"),
            )
        return None
    if not isinstance(note, str):
        raise _Bad(1, "the header's checkpoint is not a signed note")
    try:
        return read_checkpoint(note, verifier) if verifier is not None else unsigned_checkpoint(note)
    except NoteError as exc:
        raise _Bad(1, f"the header's checkpoint: {exc}") from None


def _check_proof(number: int, record: dict[str, Any], digest: bytes, proofs: _Proofs) -> None:
    leaf, proof = record["leaf"], record["proof"]
    checkpoint = proofs.checkpoint
    if leaf is None:
        if proofs.required:
            raise _Bad(number, f"the event is not in the checkpoint's tree (it is newer than the checkpoint): {SIGN_FIRST}")
        if proof != []:
            raise _Bad(number, "an event line without a leaf carries a proof")
        proofs.unproven += 1
        return
    if type(leaf) is not int or not isinstance(proof, list) or not all(isinstance(p, str) and len(p) == 64 for p in proof):
        raise _Bad(number, "an event line's leaf or proof has the wrong type")
    try:
        path = [bytes.fromhex(p) for p in proof]
    except ValueError:
        raise _Bad(number, "an event line's proof is not hex") from None
    if checkpoint is None or not merkle.verify_inclusion(merkle.leaf_hash(digest), leaf, checkpoint.size, path, checkpoint.root):
        raise _Bad(number, f"the event is not proven to be leaf {leaf} of the checkpoint's tree (the line or the proof was altered)")
    proofs.proven += 1


def _check_event(
    number: int, record: dict[str, Any], runs: dict[str, _Run], current: str | None, version: int, proofs: _Proofs
) -> str:
    keys = EVENT_KEYS if version >= 2 else EVENT_KEYS_V1
    if set(record) != keys:
        raise _Bad(number, f"an event line needs exactly the keys {', '.join(sorted(keys))}")
    thread, run, seq, kind, ts, data, claimed = (record[k] for k in ("thread_id", "run_id", "seq", "kind", "ts", "data", "hash"))
    if not all(isinstance(v, str) for v in (thread, run, kind, ts, data, claimed)) or type(seq) is not int:
        raise _Bad(number, "an event line has a field of the wrong type")
    state = runs.get(run)
    if state is None:
        if current is not None and runs[current].terminal is None:
            raise _Bad(number, f"run {current} ends without a terminal event (a line missing?)")
        try:
            prefix = run_prefix(UUID(thread), UUID(run))
        except ValueError:
            raise _Bad(number, "thread_id or run_id is not a UUID") from None
        if prefix != f"{thread}\n{run}\n".encode():
            raise _Bad(number, "thread_id or run_id is not a lower-case hyphenated UUID")
        state = runs[run] = _Run(thread, prefix)
    elif run != current:
        raise _Bad(number, f"run {run} appears again after other runs' events (lines out of order)")
    if thread != state.thread_id:
        raise _Bad(number, f"run {run} changes thread")
    if state.terminal is not None and not is_note(kind):
        raise _Bad(number, f"an event after run {run}'s terminal event ({state.terminal}) that is not a note")
    if seq != state.seq + 1:
        raise _Bad(number, f"seq {seq} of run {run} where {state.seq + 1} was expected (a line missing or out of order)")
    try:
        digest = link_with(state.hash, state.prefix, seq, kind, ts, data)
    except UnicodeEncodeError:
        raise _Bad(number, "an event line has text that is not valid Unicode (a lone surrogate escape)") from None
    if digest.hex() != claimed:
        raise _Bad(number, f"hash of run {run} seq {seq} does not match the recomputed chain (the line was altered)")
    if version >= 2:
        _check_proof(number, record, digest, proofs)
    state.seq, state.hash = seq, digest
    state.first_hash = state.first_hash or claimed
    if kind in TERMINAL_KINDS:
        state.terminal = kind
    return str(run)


def _check_trailer(number: int, record: dict[str, Any], runs: dict[str, _Run], events: int) -> None:
    for run, state in runs.items():
        if state.terminal is None:
            raise _Bad(number, f"run {run} ends without a terminal event (a line missing?)")
    if record.get("events") != events:
        raise _Bad(number, f"the trailer counts {record.get('events')} events, the file holds {events}")
    listed = record.get("runs")
    if not isinstance(listed, list) or len(listed) != len(runs):
        raise _Bad(number, f"the trailer lists {len(listed) if isinstance(listed, list) else 'no'} runs, the file holds {len(runs)}")
    for entry in listed:
        listed_state = runs.get(str(entry.get("run_id"))) if isinstance(entry, dict) else None
        if listed_state is None:
            raise _Bad(number, f"the trailer lists run {entry.get('run_id') if isinstance(entry, dict) else entry!r}, which has no events here")
        expected = {
            "thread_id": listed_state.thread_id, "run_id": entry["run_id"], "events": listed_state.seq,
            "first_hash": listed_state.first_hash, "last_hash": listed_state.hash.hex(), "terminal": listed_state.terminal,
        }
        if entry != expected:
            raise _Bad(number, f"the trailer's entry for run {entry['run_id']} does not match its events")
