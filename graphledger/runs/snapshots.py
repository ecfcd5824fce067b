"""Snapshot documents: the JSON of a checkpoint's state, kept so that state and history reads need no LangGraph.

Rendering a state the way LangGraph does (``aget_state``, ``aget_state_history``)
reads the checkpoint with its blobs, turns every message into a pydantic
object, prepares the next tasks, and is then turned back into JSON. For a
page of 50 states that is hundreds of milliseconds. A document is the final
JSON text of one snapshot as the routes answer it (:func:`dumps` of
:func:`~graphledger.runs.state.snapshot_json`), stored in ``thread_snapshots``
beside the checkpointer's tables; a page is then one indexed read of those
texts, joined into the answer without parsing them.

Documents are a cache, never the record. Each row is served only while it
still is what LangGraph would render:

- it is read joined to ``langgraph.checkpoints``: a document whose checkpoint
  is gone (a rollback, a deleted thread) is never served, even if its row
  were left behind;
- it names the ``graph`` that rendered it, which must be the graph the thread
  is read through now (the graph of its latest run);
- it carries the ``version`` of what it was rendered from: the checkpoint
  row's ``xmin`` and the ``xmin`` of each of the checkpoint's pending writes.
  A new pending write (a run resuming from the checkpoint, an interrupt, a
  finished task) or an upserted one changes it. The version is read *before*
  rendering, in the same statement as the page, so a write that lands while
  rendering makes the stored version old, never the stored text.

A checkpoint has two renderings: ``history`` (a history entry, and
``GET .../state/{checkpoint_id}``) and ``latest`` (``GET .../state`` while it
is the thread's latest: LangGraph then applies its finished tasks' pending
writes to the values). Only the subgraph namespace ``""`` is kept; reads of a
subgraph's namespace, a ``checkpoint_map`` or ``subgraphs=true`` are rendered
live.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from graphledger.ledger.read import Connection
from graphledger.runs.checkpoint import SCHEMA

TABLE = "thread_snapshots"

VERSION_SQL = f"""c.xmin::text || coalesce((
    SELECT ':' || string_agg(w.xmin::text, ',' ORDER BY w.task_id, w.idx) FROM {SCHEMA}.checkpoint_writes w
    WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id
), '')"""
"""What a document was rendered from: the checkpoint row's version and its pending writes' (alias ``c``)."""


def _page_sql(column: str, before: bool, metadata: bool, checkpoint: bool) -> str:
    """Checkpoints of a thread's root namespace, newest first, each with its version and its stored document.

    Parameters: $1 thread id, $2 limit, then ``before``, ``metadata`` (jsonb
    text) and ``checkpoint`` id, each when asked. The same predicates as
    LangGraph's ``alist`` (``checkpoint_id <``, ``metadata @>``,
    ``checkpoint_id =``), on the same index (the checkpoints' primary key).
    The page's pending writes are read in one range of their primary key
    (from the page's oldest checkpoint to its newest), not once per checkpoint;
    the version is the one :data:`VERSION_SQL` computes.
    """
    number = itertools.count(3)
    where = ["c.thread_id = $1", "c.checkpoint_ns = ''"]
    if before:
        where.append(f"c.checkpoint_id < ${next(number)}")
    if metadata:
        where.append(f"c.metadata @> ${next(number)}::jsonb")
    if checkpoint:
        where.append(f"c.checkpoint_id = ${next(number)}")
    return f"""
WITH page AS (
    SELECT c.checkpoint_id, c.xmin::text AS row_version FROM {SCHEMA}.checkpoints c
    WHERE {" AND ".join(where)}
    ORDER BY c.checkpoint_id DESC
    LIMIT $2
), writes AS (
    SELECT w.checkpoint_id, string_agg(w.xmin::text, ',' ORDER BY w.task_id, w.idx) AS write_versions
    FROM {SCHEMA}.checkpoint_writes w
    WHERE w.thread_id = $1 AND w.checkpoint_ns = ''
      AND w.checkpoint_id BETWEEN (SELECT min(checkpoint_id) FROM page) AND (SELECT max(checkpoint_id) FROM page)
    GROUP BY w.checkpoint_id
)
SELECT p.checkpoint_id, p.row_version || coalesce(':' || w.write_versions, '') AS version, s.graph, s.version AS stored, s.{column} AS document
FROM page p
LEFT JOIN writes w ON w.checkpoint_id = p.checkpoint_id
LEFT JOIN {TABLE} s ON s.thread_id = $1 AND s.checkpoint_ns = '' AND s.checkpoint_id = p.checkpoint_id
ORDER BY p.checkpoint_id DESC
"""


def _fresh(row: Any, graph: str) -> tuple[str, str, str | None]:
    """``(checkpoint_id, version, document)``, the document None unless rendered by ``graph`` from this version."""
    fresh = row["graph"] == graph and row["stored"] == row["version"]
    return row["checkpoint_id"], row["version"], row["document"] if fresh else None


HISTORY_SQL = {flags: _page_sql("history", *flags) for flags in itertools.product((False, True), repeat=3)}
"""Pages of ``history`` documents, by (before, metadata, checkpoint) given."""
LATEST_SQL = _page_sql("latest", False, False, False)
"""The thread's latest checkpoint with its ``latest`` document."""

STORE_SQL = f"""
INSERT INTO {TABLE} AS s (thread_id, checkpoint_ns, checkpoint_id, graph, version, history, latest)
SELECT $1, '', d.checkpoint_id, $2, d.version, d.history, d.latest
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS d (checkpoint_id, version, history, latest)
WHERE EXISTS (
    SELECT 1 FROM {SCHEMA}.checkpoints c WHERE c.thread_id = $1 AND c.checkpoint_ns = '' AND c.checkpoint_id = d.checkpoint_id
)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
    history = coalesce(EXCLUDED.history, CASE WHEN s.graph = EXCLUDED.graph AND s.version = EXCLUDED.version THEN s.history END),
    latest = coalesce(EXCLUDED.latest, CASE WHEN s.graph = EXCLUDED.graph AND s.version = EXCLUDED.version THEN s.latest END),
    graph = EXCLUDED.graph, version = EXCLUDED.version, rendered_at = now()
"""
# A document rendered from an older version may overwrite one rendered from a newer: it is then
# not served (its version no longer matches) and rendered again on the next read. Never stale.
# The EXISTS keeps a checkpoint deleted while it was rendered from getting a row; one that is
# deleted between the check and the commit leaves a row no read can reach (reads join the
# checkpoints), removed with the thread or by ``graphledger rebuild --snapshots``. Rollbacks and thread
# deletions delete documents with their checkpoints, in the same statement or transaction
# (:data:`graphledger.runs.checkpoint.ROLLBACK_SQL`, ``FORGET_SQL``).

DROP_SQL = f"TRUNCATE {TABLE}"


def dumps(value: Any) -> str:
    """JSON text exactly as the routes' ``JSONResponse`` renders ``value``."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def joined(documents: Sequence[str]) -> str:
    """A JSON array of documents, without parsing them."""
    return "[" + ",".join(documents) + "]"


async def history_page(
    conn: Connection, thread_id: str, graph: str, limit: int, *, before: str | None = None,
    metadata: dict[str, Any] | None = None, checkpoint_id: str | None = None,
) -> list[tuple[str, str, str | None]]:
    """``(checkpoint_id, version, document or None)`` of a page of the thread's history, newest first."""
    args: list[Any] = [thread_id, limit]
    if before is not None:
        args.append(before)
    if metadata:
        args.append(json.dumps(metadata))
    if checkpoint_id is not None:
        args.append(checkpoint_id)
    sql = HISTORY_SQL[(before is not None, bool(metadata), checkpoint_id is not None)]
    return [_fresh(row, graph) for row in await conn.fetch(sql, *args)]


async def latest(conn: Connection, thread_id: str, graph: str) -> tuple[str, str, str | None] | None:
    """``(checkpoint_id, version, document or None)`` of the thread's latest checkpoint (None: it has none)."""
    row = await conn.fetchrow(LATEST_SQL, thread_id, 1)
    return None if row is None else _fresh(row, graph)


async def store(
    conn: Connection, thread_id: str, graph: str, rendered: Sequence[tuple[str, str, str | None, str | None]]
) -> None:
    """Keep ``(checkpoint_id, version, history, latest)`` documents (None: keep the stored one if its version matches)."""
    if not rendered:
        return
    ids, versions, history, latest = (list(column) for column in zip(*rendered, strict=True))
    await conn.execute(STORE_SQL, thread_id, graph, ids, versions, history, latest)


async def drop(conn: Connection) -> None:
    """Delete every document: they are rendered again as they are read."""
    await conn.execute(DROP_SQL)
