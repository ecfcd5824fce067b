"""The Merkle log in the database: every statement on ``merkle_leaves``, ``merkle_tiles`` and ``checkpoints``.

Leaves are assigned off the append path, by :meth:`Log.grow`: the gap-safe
global feed (``tx < xmin`` of the current snapshot, ordered by ``(tx,
global_position)``, see :mod:`graphledger.ledger.read`) gives the next events,
numbered after the last leaf. A row enters the feed only when every
transaction older than it has ended, and a transaction that starts later gets
a larger ``tx``, so an event once given a leaf index is never preceded by one
found later: leaf order is feed order, forever.

Growers serialise on one transaction-scoped advisory lock. Leaves and the
tiles they change are written in one transaction, so tiles always describe
exactly the leaves. Tiles are a cache for proofs and monitors; a verifier
recomputes from the events (``graphledger.audit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

import asyncpg

from graphledger.ledger import merkle
from graphledger.ledger.errors import LedgerError
from graphledger.ledger.note import Checkpoint, Signer, unsigned_checkpoint
from graphledger.ledger.read import FEED_HASHES_SQL, Connection

GROW_LOCK = 0x67_6C_6D_65_72_6B_6C_65  # "glmerkle": the advisory lock growers take
BATCH = 50_000

LOCK_SQL = "SELECT pg_advisory_xact_lock($1)"
LAST_LEAF_SQL = "SELECT leaf_index, tx::text AS tx, global_position FROM merkle_leaves ORDER BY leaf_index DESC LIMIT 1"
# The leaf hashes (RFC 9162: SHA-256(0x00 || entry)) come back as one value, in
# leaf order: hashed by the server and not decoded row by row, which halves
# what a growth costs in Python.
ADD_LEAVES_SQL = f"""
WITH added AS (
    INSERT INTO merkle_leaves (leaf_index, tx, global_position, thread_id, run_id, seq, hash)
    SELECT $4 + row_number() OVER (ORDER BY f.tx, f.global_position) - 1, f.tx, f.global_position, f.thread_id, f.run_id, f.seq, f.hash
    FROM ({FEED_HASHES_SQL}) f
    RETURNING leaf_index, hash
)
SELECT count(*) AS added, string_agg(sha256('\\x00'::bytea || hash), ''::bytea ORDER BY leaf_index) AS leaf_hashes FROM added
"""
TILES_SQL = """
SELECT t.level, t.tile_index, t.hashes FROM unnest($1::smallint[], $2::bigint[]) AS k(level, tile_index)
JOIN merkle_tiles t USING (level, tile_index)
"""
PUT_TILES_SQL = """
INSERT INTO merkle_tiles (level, tile_index, hashes)
SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])
ON CONFLICT (level, tile_index) DO UPDATE SET hashes = EXCLUDED.hashes
"""
TILE_SQL = "SELECT hashes FROM merkle_tiles WHERE level = $1 AND tile_index = $2"
LEAF_SQL = "SELECT leaf_index FROM merkle_leaves WHERE thread_id = $1 AND run_id = $2 AND seq = $3"
RUN_LEAVES_SQL = "SELECT seq, leaf_index FROM merkle_leaves WHERE thread_id = $1 AND run_id = $2 ORDER BY seq"
LEAVES_FROM_SQL = "SELECT leaf_index, thread_id, run_id, seq, hash FROM merkle_leaves WHERE leaf_index >= $1 ORDER BY leaf_index"
UNCOVERED_SQL = """
SELECT count(*) FROM unnest($1::uuid[], $2::uuid[]) AS r(thread_id, run_id)
JOIN events e ON e.thread_id = r.thread_id AND e.run_id = r.run_id
WHERE NOT EXISTS (
    SELECT 1 FROM merkle_leaves l
    WHERE l.thread_id = e.thread_id AND l.run_id = e.run_id AND l.seq = e.seq AND l.leaf_index < $3
)
"""
ADD_CHECKPOINT_SQL = "INSERT INTO checkpoints (tree_size, root_hash, signed_at, note) VALUES ($1, $2, $3, $4)"
LATEST_CHECKPOINT_SQL = "SELECT note FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"


class Inconsistent(LedgerError):
    """The tree in the database does not extend the latest checkpoint: nothing is signed."""


@dataclass(frozen=True, slots=True)
class Grown:
    """What a growth did: the tree's size before and after."""

    before: int
    after: int


class _Needed:
    """A :class:`merkle.Hashes` that only records which tiles a computation reads."""

    def __init__(self) -> None:
        self.tiles: set[tuple[int, int]] = set()

    def subtree(self, height: int, index: int) -> bytes:
        level, rest = divmod(height, merkle.TILE_HEIGHT)
        self.tiles.add((level, (index << rest) // merkle.TILE_WIDTH))
        return bytes(32)


class _Loaded:
    def __init__(self, tiles: dict[tuple[int, int], bytes]) -> None:
        self._tiles = tiles

    def subtree(self, height: int, index: int) -> bytes:
        return merkle.tile_hash(lambda level, i: self._tiles.get((level, i), b""), height, index)


class Log:
    """The Merkle log's statements on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.connection = conn

    async def size(self) -> int:
        row = await self.connection.fetchrow(LAST_LEAF_SQL)
        return 0 if row is None else int(row["leaf_index"]) + 1

    async def grow(self, batch: int = BATCH, limit: int | None = None) -> Grown:
        """Give leaf indexes to the feed's new events and grow the tiles, ``batch`` leaves per transaction.

        Stops when the feed has nothing more (or after ``limit`` leaves).
        """
        before = after = None
        while True:
            async with self.connection.transaction():
                await self.connection.execute(LOCK_SQL, GROW_LOCK)
                last = await self.connection.fetchrow(LAST_LEAF_SQL)
                size, tx, position = (0, "0", 0) if last is None else (int(last["leaf_index"]) + 1, last["tx"], last["global_position"])
                before = size if before is None else before
                take = batch if limit is None else min(batch, limit - (size - before))
                added = await self.connection.fetchrow(ADD_LEAVES_SQL, tx, position, take, size) if take > 0 else None
                count = 0 if added is None else int(added["added"])
                if added is not None and count:
                    blob = bytes(added["leaf_hashes"])
                    hashes = [blob[i : i + merkle.HASH_SIZE] for i in range(0, len(blob), merkle.HASH_SIZE)]
                    edge = await self._tiles([(level, index) for level, index, _ in merkle.tiles_for(size)])
                    changed = merkle.grow_tiles(size, edge, hashes)
                    keys = sorted(changed)
                    await self.connection.execute(
                        PUT_TILES_SQL, [k[0] for k in keys], [k[1] for k in keys], [changed[k] for k in keys]
                    )
                after = size + count
            if count < take or take <= 0:
                return Grown(before, after)

    async def _tiles(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        if not keys:
            return {}
        rows = await self.connection.fetch(TILES_SQL, [k[0] for k in keys], [k[1] for k in keys])
        return {(r["level"], r["tile_index"]): bytes(r["hashes"]) for r in rows}

    async def _loaded(self, plan: _Needed) -> _Loaded:
        return _Loaded(await self._tiles(sorted(plan.tiles)))

    async def root(self, size: int) -> bytes:
        """The root hash of the tree of the first ``size`` leaves, from the tiles."""
        plan = _Needed()
        merkle.root(plan, size)
        return merkle.root(await self._loaded(plan), size)

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        plan = _Needed()
        merkle.inclusion_proof(plan, index, size)
        return merkle.inclusion_proof(await self._loaded(plan), index, size)

    async def consistency(self, old: int, new: int) -> list[bytes]:
        """The RFC 9162 consistency proof from the tree of ``old`` leaves to the tree of ``new``."""
        plan = _Needed()
        merkle.consistency_proof(plan, old, new)
        return merkle.consistency_proof(await self._loaded(plan), old, new)

    async def tile(self, level: int, index: int, width: int) -> bytes | None:
        """The tile's first ``width`` hashes, or None while it has fewer (a full tile never changes)."""
        data = await self.connection.fetchval(TILE_SQL, level, index)
        if data is None or len(data) < width * merkle.HASH_SIZE:
            return None
        return bytes(data[: width * merkle.HASH_SIZE])

    async def leaf(self, thread_id: UUID, run_id: UUID, seq: int) -> int | None:
        """The leaf index of an event, once it has one."""
        found = await self.connection.fetchval(LEAF_SQL, thread_id, run_id, seq)
        return None if found is None else int(found)

    async def run_leaves(self, thread_id: UUID, run_id: UUID) -> dict[int, int]:
        """``seq -> leaf index`` of a run's events that have one."""
        return {r["seq"]: r["leaf_index"] for r in await self.connection.fetch(RUN_LEAVES_SQL, thread_id, run_id)}

    async def uncovered(self, runs: Sequence[tuple[UUID, UUID]], size: int) -> int:
        """How many events of ``runs`` (``(thread_id, run_id)`` pairs) the tree of ``size`` leaves does not hold."""
        if not runs:
            return 0
        count: int = await self.connection.fetchval(UNCOVERED_SQL, [t for t, _ in runs], [r for _, r in runs], size)
        return count

    def leaves_from(self, first: int, prefetch: int = 5_000) -> asyncpg.cursor.CursorFactory[asyncpg.Record]:
        """A cursor over the stored leaves from ``first`` on (inside a transaction)."""
        return self.connection.cursor(LEAVES_FROM_SQL, first, prefetch=prefetch)

    async def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint (a signed note), if any."""
        note: str | None = await self.connection.fetchval(LATEST_CHECKPOINT_SQL)
        return note

    async def sign(self, signer: Signer, at: datetime | None = None) -> tuple[Checkpoint, str]:
        """Grow the tree, then sign and keep a checkpoint of it.

        The tree signed must extend the latest checkpoint: a consistency proof
        from it, made from the tiles, is checked before anything is signed
        (:class:`Inconsistent` otherwise).
        """
        await self.grow()
        async with self.connection.transaction():
            await self.connection.execute(LOCK_SQL, GROW_LOCK)
            size = await self.size()
            root = await self.root(size)
            previous = await self.latest_checkpoint()
            if previous is not None:
                old = unsigned_checkpoint(previous)
                proof = await self.consistency(old.size, size) if old.size <= size else []
                if not merkle.verify_consistency(old.size, size, old.root, root, proof):
                    raise Inconsistent(f"the tree of {size} leaves does not extend the latest checkpoint ({old.size} leaves)")
            checkpoint = Checkpoint.of(signer.name, size, root, at or datetime.now(timezone.utc))
            note = signer.sign(checkpoint.body())
            await self.connection.execute(ADD_CHECKPOINT_SQL, size, root, datetime.fromisoformat(checkpoint.time), note)
        return checkpoint, note
