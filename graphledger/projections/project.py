"""The thin writer of the projections: folds appended events into rows, and the SQL that merges them.

The same merge statements serve twice:

- inline, as data-modifying CTEs of the ledger's append statement
  (:meth:`Projector.ctes`), joined to the events that statement inserted, so
  rows of a run whose head moved are never written and a read right after an
  append sees its effect;
- in a rebuild (:func:`rebuild_sql`), over events read back from the log.

Every merge gives the same table whatever order the rows arrive in (see
``run_status``, ``token_usage``, ``messages``): a run's events always arrive
in ``seq`` order, and messages of one thread compare log positions. That is
what makes a rebuild equal to what was applied inline, even though inline rows
arrive in commit order and a rebuild reads them in log order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphledger.ledger.events import (
    LLM_USAGE,
    RUN_CREATED,
    STATUS_AFTER,
    Event,
    RunRef,
    canonical_json,
)
from graphledger.projections import messages as messages_fold
from graphledger.projections import run_status as status_fold
from graphledger.projections import token_usage as usage_fold

RUN_STATUS = "run_status"
TOKEN_USAGE = "token_usage"
MESSAGES = "messages"
ALL = (RUN_STATUS, TOKEN_USAGE, MESSAGES)

KINDS = {
    RUN_STATUS: frozenset(STATUS_AFTER),
    TOKEN_USAGE: frozenset({LLM_USAGE}),
    MESSAGES: messages_fold.MESSAGE_KINDS,
}
"""The event kinds each projection reads; every other event leaves it unchanged."""

COLUMNS = {
    RUN_STATUS: (
        "thread_id", "run_id", "status", "status_seq", "assistant_id", "created_at",
        "started_at", "finished_at", "attempt", "worker", "error_type", "error_message", "identity", "metadata",
    ),
    TOKEN_USAGE: (
        "thread_id", "run_id", "call_id", "seq", "ts", "model", "caller", "usage_known", "input_tokens",
        "output_tokens", "total_tokens", "cache_read", "cache_creation", "reasoning", "latency_ms", "provider", "ttft_ms",
    ),
    MESSAGES: ("thread_id", "run_id", "seq", "pos", "part", "message_id", "type", "data", "echo"),
}
"""The column arrays each projection's merge takes, in order (one parameter each)."""
_ARRAYS = {name: len(columns) for name, columns in COLUMNS.items()}


def param_names(names: Collection[str] = ALL) -> list[str]:
    """The merges' parameter names (``<projection>.<column>``), in the order :meth:`Rows.args` fills them."""
    return [f"{name}.{column}" for name in ALL if name in names for column in COLUMNS[name]]


def _ctes(placeholders: Mapping[str, str], schema: str, inline: bool, names: Collection[str] = ALL) -> str:
    """The merges of ``names`` as CTEs, each parameter written as its placeholder; ``inline``: keep only rows of events the append statement inserted."""
    params = {name: [placeholders[f"{name}.{column}"] for column in COLUMNS[name]] for name in ALL if name in names}
    t = f"{schema}." if schema else ""

    def only_inserted(alias: str, seq: str) -> str:
        if not inline:
            return ""
        return f"JOIN inserted i ON i.thread_id = {alias}.thread_id AND i.run_id = {alias}.run_id AND i.seq = {alias}.{seq}"

    position = "i.global_position" if inline else "m.pos"
    earlier = "(excluded.position, excluded.part) < (m.position, m.part)"
    later = "(excluded.updated_position, excluded.updated_part) > (m.updated_position, m.updated_part)"
    # The later writer (messages.merge): a write that is not an echo beats an echo, else the later one wins;
    # between echoes only, the first.
    writes = (
        "(CASE WHEN excluded.writer_position IS NOT NULL"
        " THEN m.writer_position IS NULL OR (excluded.writer_position, excluded.writer_part) > (m.writer_position, m.writer_part)"
        f" ELSE m.writer_position IS NULL AND {earlier} END)"
    )
    parts = []
    if RUN_STATUS in params:
        s = params[RUN_STATUS]
        status_rows = f"""unnest({s[0]}::uuid[], {s[1]}::uuid[], {s[2]}::text[], {s[3]}::int[], {s[4]}::text[], {s[5]}::timestamptz[],
                {s[6]}::timestamptz[], {s[7]}::timestamptz[], {s[8]}::int[], {s[9]}::text[], {s[10]}::text[], {s[11]}::text[],
                {s[12]}::text[], {s[13]}::text[])
        AS p(thread_id, run_id, status, status_seq, assistant_id, created_at,
             started_at, finished_at, attempt, worker, error_type, error_message, identity, metadata)"""
        parts.append(f"""
status_merged AS (
    -- One patch per run (the fold of its lifecycle events in this batch).
    INSERT INTO {t}run_status AS s (thread_id, run_id, status, status_seq, assistant_id, created_at,
                                    started_at, finished_at, attempt, worker, error_type, error_message, identity, metadata)
    SELECT p.thread_id, p.run_id, p.status, p.status_seq, p.assistant_id, p.created_at,
           p.started_at, p.finished_at, p.attempt, p.worker, p.error_type, p.error_message, p.identity, p.metadata::json
    FROM {status_rows}
    {only_inserted("p", "status_seq")}
    ON CONFLICT (thread_id, run_id) DO UPDATE SET
        status = excluded.status,
        status_seq = excluded.status_seq,
        assistant_id = coalesce(excluded.assistant_id, s.assistant_id),
        created_at = coalesce(excluded.created_at, s.created_at),
        started_at = coalesce(excluded.started_at, s.started_at),
        finished_at = coalesce(excluded.finished_at, s.finished_at),
        attempt = s.attempt + excluded.attempt,
        worker = coalesce(excluded.worker, s.worker),
        error_type = coalesce(excluded.error_type, s.error_type),
        error_message = coalesce(excluded.error_message, s.error_message),
        identity = coalesce(excluded.identity, s.identity),
        metadata = coalesce(excluded.metadata, s.metadata)
    WHERE s.status_seq < excluded.status_seq  -- a patch already folded in changes nothing
)""")
    if TOKEN_USAGE in params:
        c = params[TOKEN_USAGE]
        call_rows = f"""unnest({c[0]}::uuid[], {c[1]}::uuid[], {c[2]}::text[], {c[3]}::int[], {c[4]}::timestamptz[], {c[5]}::text[],
                {c[6]}::text[], {c[7]}::bool[], {c[8]}::bigint[], {c[9]}::bigint[], {c[10]}::bigint[], {c[11]}::bigint[],
                {c[12]}::bigint[], {c[13]}::bigint[], {c[14]}::float8[], {c[15]}::text[], {c[16]}::float8[])
        AS c(thread_id, run_id, call_id, seq, ts, model, caller, usage_known, input_tokens,
             output_tokens, total_tokens, cache_read, cache_creation, reasoning, latency_ms, provider, ttft_ms)"""
        parts.append(f"""
calls_merged AS (
    -- A call reported twice is counted once: its first report (lowest seq) stays.
    INSERT INTO {t}llm_calls AS l (thread_id, run_id, call_id, seq, ts, model, caller, usage_known, input_tokens,
                                   output_tokens, total_tokens, cache_read, cache_creation, reasoning, latency_ms,
                                   provider, ttft_ms)
    SELECT DISTINCT ON (c.thread_id, c.run_id, c.call_id) c.*
    FROM {call_rows}
    {only_inserted("c", "seq")}
    ORDER BY c.thread_id, c.run_id, c.call_id, c.seq
    ON CONFLICT (thread_id, run_id, call_id) DO UPDATE SET
        seq = excluded.seq, ts = excluded.ts, model = excluded.model, caller = excluded.caller,
        usage_known = excluded.usage_known, input_tokens = excluded.input_tokens,
        output_tokens = excluded.output_tokens, total_tokens = excluded.total_tokens,
        cache_read = excluded.cache_read, cache_creation = excluded.cache_creation,
        reasoning = excluded.reasoning, latency_ms = excluded.latency_ms,
        provider = excluded.provider, ttft_ms = excluded.ttft_ms
    WHERE excluded.seq < l.seq
)""")
    if MESSAGES in params:
        m = params[MESSAGES]
        parts.append(f"""
messages_written AS (
    SELECT m.thread_id, m.message_id, {position} AS position, m.part, m.run_id, m.seq, m.type, m.data, m.echo
    FROM unnest({m[0]}::uuid[], {m[1]}::uuid[], {m[2]}::int[], {m[3]}::bigint[], {m[4]}::int[], {m[5]}::text[],
                {m[6]}::text[], {m[7]}::text[], {m[8]}::bool[])
        AS m(thread_id, run_id, seq, pos, part, message_id, type, data, echo)
    {only_inserted("m", "seq")}
), messages_first_last AS (
    -- Writes of one message in this batch: the place of the first, the content of the last.
    SELECT DISTINCT ON (thread_id, message_id)
        thread_id, message_id,
        first_value(position) OVER w AS position, first_value(part) OVER w AS part,
        first_value(run_id) OVER w AS run_id, first_value(seq) OVER w AS seq,
        position AS updated_position, part AS updated_part, type, data,
        first_value(run_id) OVER e AS updated_run_id, first_value(seq) OVER e AS updated_seq,
        first_value(CASE WHEN echo THEN NULL ELSE position END) OVER e AS writer_position,
        first_value(CASE WHEN echo THEN NULL ELSE part END) OVER e AS writer_part
    FROM messages_written
    WINDOW w AS (PARTITION BY thread_id, message_id ORDER BY position, part),
           -- the writer: the last write that is not an echo, else the first echo
           e AS (PARTITION BY thread_id, message_id ORDER BY echo,
                 CASE WHEN echo THEN position END, CASE WHEN echo THEN part END, position DESC, part DESC)
    ORDER BY thread_id, message_id, updated_position DESC, updated_part DESC  -- output names: the write's own place
), messages_merged AS (
    INSERT INTO {t}messages AS m (thread_id, message_id, position, part, run_id, seq,
                                  updated_position, updated_part, type, data, updated_run_id, updated_seq,
                                  writer_position, writer_part)
    SELECT thread_id, message_id, position, part, run_id, seq, updated_position, updated_part, type, data::json,
           updated_run_id, updated_seq, writer_position, writer_part
    FROM messages_first_last
    ON CONFLICT (thread_id, message_id) DO UPDATE SET
        position = CASE WHEN {earlier} THEN excluded.position ELSE m.position END,
        part = CASE WHEN {earlier} THEN excluded.part ELSE m.part END,
        run_id = CASE WHEN {earlier} THEN excluded.run_id ELSE m.run_id END,
        seq = CASE WHEN {earlier} THEN excluded.seq ELSE m.seq END,
        updated_position = CASE WHEN {later} THEN excluded.updated_position ELSE m.updated_position END,
        updated_part = CASE WHEN {later} THEN excluded.updated_part ELSE m.updated_part END,
        type = CASE WHEN {later} THEN excluded.type ELSE m.type END,
        data = CASE WHEN {later} THEN excluded.data ELSE m.data END,
        updated_run_id = CASE WHEN {writes} THEN excluded.updated_run_id ELSE m.updated_run_id END,
        updated_seq = CASE WHEN {writes} THEN excluded.updated_seq ELSE m.updated_seq END,
        writer_position = CASE WHEN {writes} THEN excluded.writer_position ELSE m.writer_position END,
        writer_part = CASE WHEN {writes} THEN excluded.writer_part ELSE m.writer_part END
    WHERE {earlier} OR {later} OR {writes}
)""")
    if inline and RUN_STATUS in params and TOKEN_USAGE in params:
        parts.append(_usage_ctes(status_rows, call_rows, only_inserted("p", "status_seq"), only_inserted("c", "seq")))
    return ",".join(parts)


_USAGE_TOKENS = ("input_tokens", "output_tokens", "total_tokens", "cache_read", "cache_creation", "reasoning")
USAGE_KEY = "hour, model, provider, caller, assistant_id, status, identity"


def _usage_ctes(status_rows: str, call_rows: str, status_inserted: str, calls_inserted: str) -> str:
    """The hourly rollup's merge (inline only; a rebuild recomputes the rollup from the tables it rebuilt).

    It keeps one invariant: every call of ``llm_calls`` is counted once in
    ``usage_hourly``, under its run's current label (status, assistant,
    identity; NULL while the run has no status). Calls new in this statement
    are added under the label their run has after it; the calls already
    recorded of a run whose label this statement changes move from the old
    label to the new. Both read ``llm_calls`` and ``run_status`` as they were
    before the statement (the snapshot of every CTE), so nothing is counted
    twice. Rows are merged in key order, so concurrent flushes lock shared
    rows in one order and cannot deadlock on them; this CTE is the last one,
    so those row locks are the last locks a flush takes.
    """
    tokens = ", ".join(f"n.{name}" for name in _USAGE_TOKENS)
    moved = ", ".join(f"l.{name}" for name in _USAGE_TOKENS)
    sums = ", ".join(f"coalesce(sum(sign * {name}), 0)" for name in _USAGE_TOKENS)
    updates = ", ".join(f"{name} = h.{name} + excluded.{name}" for name in ("calls", "unknown_usage_calls", "runs", *_USAGE_TOKENS))
    return f"""
usage_relabelled AS (
    -- Runs whose status this statement moves: their label before and after.
    SELECT p.thread_id, p.run_id, o.status AS old_status, o.assistant_id AS old_assistant_id, o.identity AS old_identity,
           p.status, coalesce(p.assistant_id, o.assistant_id) AS assistant_id, coalesce(p.identity, o.identity) AS identity
    FROM {status_rows}
    {status_inserted}
    LEFT JOIN run_status o ON o.thread_id = p.thread_id AND o.run_id = p.run_id
    WHERE o.status_seq IS NULL OR o.status_seq < p.status_seq
), usage_new AS (
    -- Calls recorded for the first time (a call reported again is counted once, as in llm_calls).
    SELECT DISTINCT ON (c.thread_id, c.run_id, c.call_id) c.*
    FROM {call_rows}
    {calls_inserted}
    WHERE NOT EXISTS (SELECT 1 FROM llm_calls l WHERE l.thread_id = c.thread_id AND l.run_id = c.run_id AND l.call_id = c.call_id)
    ORDER BY c.thread_id, c.run_id, c.call_id, c.seq
), usage_changes AS (
    -- New calls under their run's label after this statement; a run's first call counts the run.
    SELECT n.ts, n.model, n.provider, n.caller,
           CASE WHEN u.run_id IS NULL THEN o.assistant_id ELSE u.assistant_id END AS assistant_id,
           CASE WHEN u.run_id IS NULL THEN o.status ELSE u.status END AS status,
           CASE WHEN u.run_id IS NULL THEN o.identity ELSE u.identity END AS identity,
           1 AS sign, n.usage_known,
           n.seq = min(n.seq) OVER (PARTITION BY n.thread_id, n.run_id)
               AND NOT EXISTS (SELECT 1 FROM llm_calls f WHERE f.thread_id = n.thread_id AND f.run_id = n.run_id) AS first,
           {tokens}
    FROM usage_new n
    LEFT JOIN usage_relabelled u ON u.thread_id = n.thread_id AND u.run_id = n.run_id
    LEFT JOIN run_status o ON o.thread_id = n.thread_id AND o.run_id = n.run_id
    UNION ALL
    -- Calls already recorded of relabelled runs: out of the old label, into the new.
    SELECT l.ts, l.model, l.provider, l.caller, m.assistant_id, m.status, m.identity, m.sign, l.usage_known,
           l.seq = min(l.seq) OVER (PARTITION BY l.thread_id, l.run_id) AS first,
           {moved}
    FROM usage_relabelled u
    CROSS JOIN LATERAL (VALUES (-1, u.old_status, u.old_assistant_id, u.old_identity),
                               (1, u.status, u.assistant_id, u.identity)) AS m(sign, status, assistant_id, identity)
    JOIN llm_calls l ON l.thread_id = u.thread_id AND l.run_id = u.run_id
    WHERE (u.old_status, u.old_assistant_id, u.old_identity) IS DISTINCT FROM (u.status, u.assistant_id, u.identity)
), usage_merged AS (
    INSERT INTO usage_hourly AS h ({USAGE_KEY}, calls, unknown_usage_calls, runs, {", ".join(_USAGE_TOKENS)})
    SELECT date_trunc('hour', ts, 'UTC'), model, provider, caller, assistant_id, status, identity,
           sum(sign), coalesce(sum(sign) FILTER (WHERE NOT usage_known), 0), coalesce(sum(sign) FILTER (WHERE first), 0),
           {sums}
    FROM usage_changes
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT ON CONSTRAINT usage_hourly_key DO UPDATE SET {updates}
)"""


ROLLUP_SQL = f"""
INSERT INTO {{schema}}usage_hourly ({USAGE_KEY}, calls, unknown_usage_calls, runs, {", ".join(_USAGE_TOKENS)})
SELECT date_trunc('hour', l.ts, 'UTC'), l.model, l.provider, l.caller, s.assistant_id, s.status, s.identity,
       count(*), count(*) FILTER (WHERE NOT l.usage_known), count(*) FILTER (WHERE l.seq = f.seq),
       {", ".join(f"coalesce(sum(l.{name}), 0)" for name in _USAGE_TOKENS)}
FROM {{schema}}llm_calls l
LEFT JOIN {{schema}}run_status s ON s.thread_id = l.thread_id AND s.run_id = l.run_id
JOIN (SELECT thread_id, run_id, min(seq) AS seq FROM {{schema}}llm_calls GROUP BY 1, 2) f ON f.thread_id = l.thread_id AND f.run_id = l.run_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
"""The rollup from scratch: what the inline merges keep (less the rows whose calls all moved away)."""


def rebuild_sql(schema: str, names: Collection[str] = ALL) -> str:
    """One statement that merges rows of ``names`` (positions given) into the tables of ``schema``."""
    numbered = {name: f"${n}" for n, name in enumerate(param_names(names), 1)}
    return f"WITH {_ctes(numbered, schema, False, names)}\nSELECT 1"


@dataclass(slots=True)
class Rows:
    """Projection rows of some events, as the merge statements' column arrays."""

    only: Collection[str] = ALL
    patches: dict[RunRef, status_fold.StatusPatch] = field(default_factory=dict)
    calls: list[list[Any]] = field(default_factory=lambda: [[] for _ in range(_ARRAYS[TOKEN_USAGE])])
    messages: list[list[Any]] = field(default_factory=lambda: [[] for _ in range(_ARRAYS[MESSAGES])])
    count: int = 0

    def add(self, event: Event, *, statuses: bool = True) -> None:
        """Add the rows ``event`` makes (``statuses=False``: leave its status patch to the caller)."""
        kind = event.kind
        if kind in STATUS_AFTER:
            if statuses and RUN_STATUS in self.only:
                patch = status_fold.patch_of(event)
                assert patch is not None
                self.add_patch(patch)
            if kind != RUN_CREATED:
                return
        if kind == LLM_USAGE:
            if TOKEN_USAGE in self.only:
                self._add_call(event)
        elif kind in messages_fold.MESSAGE_KINDS and MESSAGES in self.only:
            self._add_messages(event)

    def add_patch(self, patch: status_fold.StatusPatch) -> None:
        """Fold ``patch`` into its run's patch (patches of one run must come in ``seq`` order)."""
        ref = RunRef(patch.thread_id, patch.run_id)
        earlier = self.patches.get(ref)
        self.patches[ref] = patch if earlier is None else earlier.then(patch)
        self.count += 1

    def _add_call(self, event: Event) -> None:
        call = usage_fold.call_of(event)
        if call is None:
            return
        tokens = call.tokens or {}
        row = (
            call.thread_id, call.run_id, call.call_id, call.seq, call.ts, call.model, call.caller, call.usage_known,
            *(tokens.get(name) for name in usage_fold.TOKEN_FIELDS), call.latency_ms, call.provider, call.ttft_ms,
        )
        for column, value in zip(self.calls, row, strict=True):
            column.append(value)
        self.count += 1

    def _add_messages(self, event: Event) -> None:
        for written in messages_fold.messages_of(event):
            row = (
                event.thread_id, event.run_id, event.seq, event.global_position, written.part,
                written.message_id, written.type, canonical_json(written.data), written.echo,
            )
            for column, value in zip(self.messages, row, strict=True):
                column.append(value)
            self.count += 1

    def args(self) -> list[Any]:
        """The arrays of the projections in ``only``, in the order the merge statements take them."""
        status: list[list[Any]] = [[] for _ in range(_ARRAYS[RUN_STATUS])]
        for p in self.patches.values():
            row = (
                p.thread_id, p.run_id, p.status, p.status_seq, p.assistant_id, p.created_at,
                p.started_at, p.finished_at, p.starts, p.worker, p.error_type, p.error_message, p.identity,
                None if p.metadata is None else canonical_json(p.metadata),
            )
            for column, value in zip(status, row, strict=True):
                column.append(value)
        arrays = {RUN_STATUS: status, TOKEN_USAGE: self.calls, MESSAGES: self.messages}
        return [array for name in ALL if name in self.only for array in arrays[name]]


PROJECTED_KINDS = frozenset().union(*KINDS.values())


class Projector:
    """Projection rows for the events of an append statement (the ledger's ``Projector`` hook)."""

    params: Sequence[str] = tuple(param_names())

    def ctes(self, placeholders: Mapping[str, str]) -> str:
        """The merges as they run inside the ledger's append statement."""
        return _ctes(placeholders, "", inline=True)

    def args(self, events: Iterable[Event]) -> Mapping[str, list[Any]] | None:
        rows = Rows()
        kinds = PROJECTED_KINDS
        for event in events:
            if event.kind in kinds:
                rows.add(event)
        return dict(zip(self.params, rows.args(), strict=True)) if rows.count else None

