"""What the audit and inspection commands do: export, verify, replay, runs, show.

Each takes an open ledger (or a file) and writes to a text stream, so the CLI
only parses arguments and the tests call the same code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO
from uuid import UUID

from graphledger.ledger import Event, Ledger, RunRef, chain, merkle
from graphledger.ledger.access import AccessReport
from graphledger.ledger.chain import GENESIS
from graphledger.ledger.events import RUN_CREATED, STREAM_PREFIX, TERMINAL_KINDS, is_note
from graphledger.ledger.export import Selection, export
from graphledger.ledger.note import DEFAULT_NAME, Checkpoint, Signer
from graphledger.ledger.session import Session
from graphledger.progress import Progress
from graphledger.projections import Projections
from graphledger.projections.read import MAX_PAGE
from graphledger.projections.token_usage import TOKEN_FIELDS
from graphledger.runs.sse import frame, sse_modes


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` and the noun that agrees with it: ``1 run``, ``2 runs``, ``1,204 events``."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


# -- export and verify --------------------------------------------------------------


async def export_to(
    ledger: Ledger,
    selection: Selection,
    out: BinaryIO,
    progress: Progress | None = None,
    *,
    signer: Signer | None = None,
    directory: Path | None = None,
) -> int:
    """Write the export of ``selection`` to ``out`` (see :mod:`graphledger.ledger.export`).

    With ``signer``, a checkpoint covering the exported events is signed first
    when needed (and written to ``directory`` too). Returns how many exported
    events the header's checkpoint does not cover (its ``unproven``).
    """
    unproven: int | None = None
    async for chunk in export(ledger, selection, progress=progress, signer=signer, directory=directory):
        if unproven is None:  # the first chunk is the header line alone
            unproven = int(json.loads(chunk)["unproven"])
        out.write(chunk)
    out.flush()
    if progress is not None:
        progress.close()
    return unproven or 0


@dataclass(slots=True)
class Verified:
    runs: int
    events: int
    bad: list[tuple[RunRef, int | None, str]]


async def verify_runs(ledger: Ledger, refs: Sequence[RunRef] | None = None, progress: Progress | None = None) -> Verified:
    """Recompute the chain of each run (every run when ``refs`` is None) against the database."""
    if refs is None:
        async with ledger.session() as session:
            refs = await session.heads.all()
        if progress is not None:
            progress.total = len(refs)
    bad: list[tuple[RunRef, int | None, str]] = []
    events = 0
    for done, ref in enumerate(refs, start=1):
        report = await ledger.verify(ref)
        events += report.events
        if not report.ok:
            bad.append((ref, report.first_bad_seq, report.reason or "chain broken"))
        if progress is not None:
            progress(done)
    if progress is not None:
        progress.close()
    return Verified(len(refs), events, bad)


# -- replay -------------------------------------------------------------------------


def describe(event: Event) -> str:
    """One readable line about an event's payload."""
    value = event.value
    if event.kind == "stream:messages" and isinstance(value, list) and value and isinstance(value[0], dict):
        text = value[0].get("content")
        return repr(text) if isinstance(text, str) else json.dumps(value[0], separators=(",", ":"))
    if event.kind == "llm.usage" and isinstance(value, dict):
        usage = value.get("usage") or {}
        extra = " (incomplete)" if value.get("incomplete") else ""
        return f"{value.get('model')}: {usage.get('input_tokens', '?')} in, {usage.get('output_tokens', '?')} out{extra}"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def replay(ledger: Ledger, run_id: UUID, out: BinaryIO, *, sse: bool = False, speed: float | None = None, width: int = 100) -> int:
    """Print a run's events as they happened: a timeline, or (``sse``) the exact SSE bytes of its stream.

    With ``speed``, the gaps between events are slept, divided by ``speed``
    (1 is the original pacing); without it everything is printed at once.
    Returns the number of events.
    """
    ref = await ledger.run_ref(run_id)
    modes: set[str] = set()
    start: datetime | None = None
    previous: datetime | None = None
    count = 0
    async for event in ledger.iter_run(ref):
        count += 1
        if speed and previous is not None:
            await asyncio.sleep(max(0.0, (event.ts - previous).total_seconds() / speed))
        previous = event.ts
        if event.kind == RUN_CREATED:
            modes = sse_modes((event.value or {}).get("stream_mode") or ["values"])
        if sse:
            data = frame(event, modes)
            if data is not None:
                out.write(data)
                out.flush()
            continue
        start = start or event.ts
        offset = (event.ts - start).total_seconds()
        name = event.kind[len(STREAM_PREFIX):] if event.kind.startswith(STREAM_PREFIX) else event.kind
        line = f"{offset:+10.3f}s  #{event.seq:<6} {name:<22} {describe(event)}"
        out.write(((line if len(line) <= width else line[: width - 1] + "…") + "\n").encode())
        out.flush()
    return count


# -- runs and show ------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _duration(started: datetime | None, finished: datetime | None) -> float | None:
    return (finished - started).total_seconds() if started and finished else None


async def list_runs(
    ledger: Ledger,
    *,
    thread_id: UUID | None = None,
    status: str | None = None,
    assistant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Runs newest first, with status, tokens and duration."""
    found = await Projections(ledger).runs(
        thread_id=thread_id, status=status, assistant_id=assistant, since=since, until=until, limit=limit
    )
    return [
        {
            "run_id": str(r.status.run_id),
            "thread_id": str(r.status.thread_id),
            "assistant_id": r.status.assistant_id,
            "status": r.status.status,
            "created_at": _iso(r.status.created_at),
            "duration_s": _duration(r.status.started_at, r.status.finished_at),
            "llm_calls": r.calls,
            "total_tokens": r.total_tokens,
        }
        for r in found
    ]


async def show_run(ledger: Ledger, run_id: UUID) -> dict[str, Any]:
    """One run: summary, token breakdown by model and caller, and its messages."""
    ref = await ledger.run_ref(run_id)
    reads = Projections(ledger)
    status = await reads.run_status(ref)
    totals = await reads.token_usage(thread_id=ref.thread_id, run_id=ref.run_id)
    by_model = await reads.usage_by("model", thread_id=ref.thread_id, run_id=ref.run_id)
    by_caller = await reads.usage_by("caller", thread_id=ref.thread_id, run_id=ref.run_id)
    page = await reads.messages(ref.thread_id, run_id=ref.run_id, limit=MAX_PAGE)
    chain = await ledger.verify(ref)
    async with ledger.session() as session:
        created = (await session.first_events([ref]))[ref].value
    actor = created.get("actor") if isinstance(created, dict) else None
    return {
        "run_id": str(ref.run_id),
        "thread_id": str(ref.thread_id),
        "assistant_id": status.assistant_id,
        "status": status.status,
        "error": {"type": status.error_type, "message": status.error_message} if status.error_type else None,
        "created_at": _iso(status.created_at),
        "created_by": actor if isinstance(actor, dict) else None,
        "started_at": _iso(status.started_at),
        "finished_at": _iso(status.finished_at),
        "duration_s": _duration(status.started_at, status.finished_at),
        "events": chain.events,
        "chain_ok": chain.ok,
        "tokens": {"calls": totals.calls, "unknown_usage_calls": totals.unknown_usage_calls, **totals.tokens},
        "by_model": {str(k): {"calls": v.calls, **v.tokens} for k, v in by_model.items()},
        "by_caller": {str(k): {"calls": v.calls, **v.tokens} for k, v in by_caller.items()},
        "messages": [{"id": m.message_id, "type": m.type, "content": m.data.get("content")} for m in page.messages],
        "more_messages": page.has_more,
    }


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Rows as aligned text columns."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def print_runs(runs: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    rows = [
        (
            r["run_id"], r["thread_id"], r["assistant_id"], r["status"], f"{r['total_tokens']:,}",
            f"{r['duration_s']:.2f}s" if r["duration_s"] is not None else "-", (r["created_at"] or "")[:19],
        )
        for r in runs
    ]
    out.write(table(rows, ["RUN", "THREAD", "ASSISTANT", "STATUS", "TOKENS", "DURATION", "CREATED"]) + "\n")


def _who(actor: dict[str, Any] | None) -> str:
    """An actor as one line: identity and permissions; "-" when authentication was off."""
    if actor is None:
        return "-"
    permissions = actor.get("permissions") or []
    return f"{actor.get('identity')} ({', '.join(map(str, permissions))})" if permissions else str(actor.get("identity"))


def print_run(run: dict[str, Any], out: TextIO = sys.stdout) -> None:
    duration = f"{run['duration_s']:.2f} s" if run["duration_s"] is not None else "-"
    summary = [
        ("run", run["run_id"]), ("thread", run["thread_id"]), ("assistant", run["assistant_id"]), ("status", run["status"]),
        ("created", run["created_at"]), ("created by", _who(run["created_by"])), ("duration", duration), ("events", run["events"]),
        ("hash chain", "intact" if run["chain_ok"] else "BROKEN"),
    ]
    if run["error"]:
        summary.append(("error", f"{run['error']['type']}: {run['error']['message']}"))
    out.write(table(summary, ["", ""]).split("\n", 1)[1] + "\n\n")
    tokens = run["tokens"]
    out.write(f"tokens: {tokens['total_tokens']:,} total in {counted(tokens['calls'], 'LLM call')}\n")
    rows = [(model, usage["calls"], *(f"{usage[f]:,}" for f in TOKEN_FIELDS)) for model, usage in run["by_model"].items()]
    headers = [f.removesuffix("_tokens").replace("_", " ").upper() for f in TOKEN_FIELDS]
    out.write(table(rows, ["MODEL", "CALLS", *headers]) + "\n\n")
    out.write(f"messages ({len(run['messages'])}{'+' if run['more_messages'] else ''}):\n")
    for message in run["messages"]:
        content = message["content"] if isinstance(message["content"], str) else json.dumps(message["content"])
        out.write(f"  [{message['type']}] {content[:200]}\n")


# -- the access log -----------------------------------------------------------------


async def list_access(
    ledger: Ledger, *, since: datetime | None = None, until: datetime | None = None, identity: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Reads of the record, newest first (see :mod:`graphledger.ledger.access`)."""
    async with ledger.session() as session:
        entries = await session.access.list(since=since, until=until, identity=identity, limit=limit)
    return [{"position": e.position, "ts": _iso(e.ts), **e.data, "hash": e.hash.hex()} for e in entries]


async def verify_access(ledger: Ledger) -> AccessReport:
    """Recompute the access log's chain in one snapshot."""
    async with ledger.transaction(isolation="repeatable_read", readonly=True) as tx:
        return await tx.access.verify()


def print_access(entries: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    rows = [
        (
            e["position"], (e["ts"] or "")[:23], (e["actor"] or {}).get("identity", "-"), e["action"],
            " ".join(f"{k}={v}" for k, v in e["resource"].items()), e["client"] or "-",
        )
        for e in entries
    ]
    out.write(table(rows, ["#", "WHEN", "WHO", "ACTION", "WHAT", "FROM"]) + "\n")


def print_budgets(uses: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """Each budget's use per key, as ``graphledger budgets`` shows it."""
    if not uses:
        out.write("no budgets (graphledger budgets set NAME ... defines one)\n")
        return
    rows = [
        (
            u["budget"], u["per"], u["key"] or "-", u["metric"], u["used"], u["reserved"], u["limit"], u["window"],
            f"{u['percent']}%", u.get("unpriced_calls") or "",
        )
        for u in uses
    ]
    out.write(table(rows, ["BUDGET", "PER", "KEY", "METRIC", "USED", "RESERVED", "LIMIT", "WINDOW", "USE", "UNPRICED"]) + "\n")


def print_refusals(entries: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    rows = [(e["position"], e["ts"][:23], e["identity"] or "-", e["budget"], e["key"], e["used"], e["reserved"], e["limit"], e["run_id"]) for e in entries]
    out.write(table(rows, ["#", "WHEN", "WHO", "BUDGET", "KEY", "USED", "RESERVED", "LIMIT", "RUN"]) + "\n")


# -- the Merkle log -------------------------------------------------------------------


def keygen(directory: Path, name: str = DEFAULT_NAME) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``ledger.key`` (mode 0600, never overwritten) and ``ledger.pub``."""
    signer = Signer.generate(name)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "ledger.key", directory / "ledger.pub"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(signer.encode() + "\n")
    public.write_text(signer.verifier.encode() + "\n")
    return private, public


@dataclass(slots=True)
class _RunState:
    thread_id: UUID
    prefix: bytes  # chain.run_prefix(thread_id, run_id), encoded once per run
    seq: int = 0
    hash: bytes = GENESIS
    terminal: str | None = None


@dataclass(slots=True)
class LogCheck:
    """What ``verify --all --checkpoint`` found: the log today against a checkpoint signed earlier."""

    checkpoint: Checkpoint
    size: int
    root: bytes
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


MAX_FINDINGS = 50


async def check_log(ledger: Ledger, checkpoint: Checkpoint, progress: Progress | None = None) -> LogCheck:
    """Prove that the log today extends the log ``checkpoint`` signed, from the events alone.

    Every event is read in feed order from one snapshot; each run's chain is
    recomputed, the recomputed hashes are the leaves, and the root of the
    first ``checkpoint.size`` of them must be the checkpoint's. Stored leaves
    and tiles are not trusted. When the root differs, the stored leaves
    (once they are shown to match the checkpoint) name what changed.
    """
    findings: list[str] = []
    runs: dict[UUID, _RunState] = {}
    compact = merkle.Compact()
    old_root: bytes | None = merkle.EMPTY_ROOT if checkpoint.size == 0 else None
    async with ledger.transaction(isolation="repeatable_read", readonly=True) as tx:
        async for batch in tx.chain_batches():
            for thread_id, run_id, seq, kind, data, ts, stored in batch:
                state = runs.get(run_id)
                if state is None:
                    state = runs[run_id] = _RunState(thread_id, chain.run_prefix(thread_id, run_id))
                prefix = state.prefix
                if thread_id != state.thread_id:
                    findings.append(f"run {run_id}: seq {seq} is in thread {thread_id}, its earlier events in {state.thread_id}")
                    prefix = chain.run_prefix(thread_id, run_id)
                if seq != state.seq + 1:
                    findings.append(f"run {run_id}: seq {seq} where {state.seq + 1} was expected (events missing or reordered)")
                if state.terminal is not None and not is_note(kind):
                    findings.append(f"run {run_id}: seq {seq} follows its terminal event {state.terminal}")
                digest = chain.link_with(state.hash, prefix, seq, kind, ts, data)
                if digest != stored:
                    findings.append(f"run {run_id}: seq {seq}: stored hash does not match the recomputed chain")
                state.seq, state.hash = seq, digest
                if kind in TERMINAL_KINDS:
                    state.terminal = kind
                compact.append(merkle.leaf_hash(digest))
                if compact.size == checkpoint.size:
                    old_root = compact.root()
                if progress is not None and compact.size % 10_000 == 0:
                    progress(compact.size)
        report = LogCheck(checkpoint, compact.size, compact.root(), findings)
        if old_root is None:
            findings.append(f"the log has {compact.size:,} events in feed order, fewer than the {checkpoint.size:,} the checkpoint covers")
        if old_root != checkpoint.root:
            findings[:0] = await _name_changes(tx, checkpoint, runs)  # what changed first, then each broken chain
    if progress is not None:
        progress.close()
    del report.findings[MAX_FINDINGS:]
    return report


async def _name_changes(tx: Session, checkpoint: Checkpoint, runs: dict[UUID, _RunState]) -> list[str]:
    """What changed under a checkpoint, named from the stored leaves (trusted only once their root is the checkpoint's)."""
    stored: dict[tuple[UUID, int], tuple[int, UUID, bytes]] = {}
    compact = merkle.Compact()
    async for entry in tx.log.entries():
        if compact.size == checkpoint.size or len(entry.leaf_hash) != merkle.HASH_SIZE:
            break
        compact.append(entry.leaf_hash)
        stored[(entry.run_id, entry.seq)] = (entry.leaf_index, entry.thread_id, entry.leaf_hash)
    if compact.size != checkpoint.size or compact.root() != checkpoint.root:
        return ["the tree of the events is not the checkpoint's, and the stored leaves were altered too: the change cannot be named"]
    now: dict[tuple[UUID, int], tuple[int, UUID, bytes]] = {}
    last: dict[UUID, bytes] = {}
    position = 0
    async for batch in tx.chain_batches():  # the rows check_log read, from the same snapshot
        for thread_id, run_id, seq, kind, data, ts, _ in batch:
            digest = chain.link_with(last.get(run_id, GENESIS), chain.run_prefix(thread_id, run_id), seq, kind, ts, data)
            last[run_id] = digest
            now[(run_id, seq)] = (position, thread_id, merkle.leaf_hash(digest))
            position += 1
    found: dict[tuple[UUID, str], str] = {}
    for (run_id, seq), (index, thread_id, digest) in sorted(stored.items(), key=lambda item: item[1][0]):
        current = now.get((run_id, seq))
        if current is None:
            if run_id not in runs:
                found.setdefault((run_id, "deleted"), f"run {run_id} (thread {thread_id}) was deleted: its events under the checkpoint are gone")
            else:
                found.setdefault((run_id, "cut"), f"run {run_id} was cut: its events from seq {seq} on (leaf {index}) are gone")
        elif current[1] != thread_id:
            found.setdefault((run_id, "moved"), f"run {run_id} was moved from thread {thread_id} to thread {current[1]}")
        elif current[2] != digest:
            found.setdefault((run_id, "rewritten"), f"run {run_id} was rewritten from seq {seq} (leaf {index}): events changed, inserted or removed")
        elif current[0] != index:
            found.setdefault((run_id, "reordered"), f"run {run_id} seq {seq} was reordered: leaf {index} under the checkpoint, position {current[0]} now")
    for (run_id, seq), (position, _, _) in now.items():
        if position < checkpoint.size and (run_id, seq) not in stored:
            found.setdefault((run_id, "inserted"), f"run {run_id} seq {seq} was inserted in the past: at position {position}, under the checkpoint")
    return list(found.values()) or ["the tree of the events is not the checkpoint's"]
