"""The Merkle log in the database: every statement on ``merkle_entries``, ``merkle_tiles`` and ``checkpoints``.

Leaves are assigned off the append path, by :meth:`Log.grow`: the gap-safe
global feed (``tx < xmin`` of the current snapshot, ordered by ``(tx,
global_position)``, see :mod:`graphledger.ledger.read`) gives the next events,
numbered after the last leaf. A row enters the feed only when every
transaction older than it has ended, and a transaction that starts later gets
a larger ``tx``, so an event once given a leaf index is never preceded by one
found later: leaf order is feed order, forever. Which event each leaf is
(``merkle_entries``) takes 36 bytes a leaf in rows of at most one level-0
tile, whose hashes are the leaf hashes: a leaf costs no row of its own.

Growers serialise on one transaction-scoped advisory lock. Leaves and the
tiles they change are written in one transaction, so tiles always describe
exactly the leaves. Tiles are a cache for proofs and monitors; a verifier
recomputes from the events (``graphledger.audit``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

from graphledger.ledger import merkle
from graphledger.ledger.errors import LedgerError
from graphledger.ledger.note import Checkpoint, NoteError, Signer, Verifier, read_checkpoint, unsigned_checkpoint
from graphledger.ledger.read import FEED_HASHES_SQL, Connection

GROW_LOCK = 0x67_6C_6D_65_72_6B_6C_65  # "glmerkle": the advisory lock growers take
BATCH = 50_000

LOCK_SQL = "SELECT pg_advisory_xact_lock($1)"
ENTRY_SIZE = 36  # thread_id (16) || run_id (16) || seq (4, big-endian): one leaf's event in merkle_entries.ids
_ENTRY = "uuid_send(thread_id) || uuid_send(run_id) || int4send(seq)"
LAST_LEAF_SQL = (
    "SELECT first_leaf + leaves AS size, last_tx::text AS tx, last_position FROM merkle_entries ORDER BY first_leaf DESC LIMIT 1"
)
# One statement a batch: the feed's next events are numbered after the last
# leaf, written as merkle_entries rows (cut at level-0 tile boundaries), and
# their leaf hashes (RFC 9162: SHA-256(0x00 || entry)) come back as one value,
# in leaf order: hashed by the server and never decoded row by row.
ADD_LEAVES_SQL = f"""
WITH f AS MATERIALIZED (
    SELECT $4::bigint + row_number() OVER (ORDER BY s.tx, s.global_position) - 1 AS leaf, s.*
    FROM ({FEED_HASHES_SQL}) s
), added AS (
    INSERT INTO merkle_entries (first_leaf, leaves, last_tx, last_position, ids)
    SELECT min(leaf), count(*), (array_agg(tx ORDER BY leaf DESC))[1], (array_agg(global_position ORDER BY leaf DESC))[1],
           string_agg({_ENTRY}, ''::bytea ORDER BY leaf)
    FROM f GROUP BY leaf / {merkle.TILE_WIDTH}
    RETURNING leaves
)
SELECT (SELECT coalesce(sum(leaves), 0) FROM added) AS added,
       (SELECT string_agg(sha256('\\x00'::bytea || hash), ''::bytea ORDER BY leaf) FROM f) AS leaf_hashes
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
# The row holding an event's leaf is the first whose last leaf is not before it in the feed;
# its place in the row is where the event's identity is in ``ids`` (36-byte aligned).
_LEAF_OF = """
CROSS JOIN LATERAL (
    SELECT first_leaf, ids FROM merkle_entries m
    WHERE (m.last_tx, m.last_position) >= (e.tx, e.global_position) ORDER BY m.last_tx, m.last_position LIMIT 1
) m
CROSS JOIN LATERAL (SELECT position(uuid_send(e.thread_id) || uuid_send(e.run_id) || int4send(e.seq) IN m.ids) AS at) p
"""
_FOUND = f"p.at % {ENTRY_SIZE} = 1"
_LEAF_INDEX = f"m.first_leaf + (p.at - 1) / {ENTRY_SIZE}"
LEAF_SQL = f"SELECT {_LEAF_INDEX} FROM events e {_LEAF_OF} WHERE e.thread_id = $1 AND e.run_id = $2 AND e.seq = $3 AND {_FOUND}"
RUN_LEAVES_SQL = f"""
SELECT e.seq, {_LEAF_INDEX} AS leaf_index FROM events e {_LEAF_OF}
WHERE e.thread_id = $1 AND e.run_id = $2 AND {_FOUND} ORDER BY e.seq
"""
ENTRY_AT_SQL = "SELECT first_leaf, leaves, last_tx::text AS tx, last_position, ids FROM merkle_entries WHERE first_leaf <= $1 ORDER BY first_leaf DESC LIMIT 1"
EVENT_KEY_SQL = "SELECT tx::text AS tx, global_position FROM events WHERE thread_id = $1 AND run_id = $2 AND seq = $3"
# Leaves are in feed order, so the events a tree holds are those up to its last leaf's feed key.
UNCOVERED_SQL = """
SELECT count(*) FROM unnest($1::uuid[], $2::uuid[]) AS r(thread_id, run_id)
JOIN events e ON e.thread_id = r.thread_id AND e.run_id = r.run_id
WHERE $3::text IS NULL OR (e.tx, e.global_position) > ($3::text::xid8, $4::bigint)
"""
# Each row's identities with the leaf hashes the level-0 tiles hold for it, in leaf order.
ENTRIES_SQL = f"""
SELECT m.first_leaf, m.leaves, m.ids,
       substring(t.hashes FROM (m.first_leaf % {merkle.TILE_WIDTH})::int * {merkle.HASH_SIZE} + 1 FOR m.leaves * {merkle.HASH_SIZE}) AS hashes
FROM merkle_entries m
LEFT JOIN merkle_tiles t ON t.level = 0 AND t.tile_index = m.first_leaf / {merkle.TILE_WIDTH}
ORDER BY m.first_leaf
"""
ADD_CHECKPOINT_SQL = "INSERT INTO checkpoints (tree_size, root_hash, signed_at, note) VALUES ($1, $2, $3, $4)"
LATEST_CHECKPOINT_SQL = "SELECT note FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
CHECKPOINTS_NEWEST_FIRST_SQL = "SELECT note FROM checkpoints ORDER BY checkpoint_id DESC"


def decode_entry(ids: bytes, i: int) -> tuple[UUID, UUID, int]:
    """The ``i``-th ``(thread_id, run_id, seq)`` of a ``merkle_entries.ids`` value."""
    at = i * ENTRY_SIZE
    return UUID(bytes=ids[at : at + 16]), UUID(bytes=ids[at + 16 : at + 32]), int.from_bytes(ids[at + 32 : at + 36], "big")


@dataclass(frozen=True, slots=True)
class Entry:
    """A leaf as the tree recorded it: its index, its event, and its leaf hash (from the level-0 tile; empty if missing)."""

    leaf_index: int
    thread_id: UUID
    run_id: UUID
    seq: int
    leaf_hash: bytes


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
        return 0 if row is None else int(row["size"])

    async def grow(self, batch: int = BATCH, limit: int | None = None) -> Grown:
        """Give leaf indexes to the feed's new events and grow the tiles, ``batch`` leaves per transaction.

        Stops when the feed has nothing more (or after ``limit`` leaves).
        """
        before = after = None
        while True:
            async with self.connection.transaction(isolation="read_committed"):  # reads after the lock see the last grower's
                await self.connection.execute(LOCK_SQL, GROW_LOCK)
                last = await self.connection.fetchrow(LAST_LEAF_SQL)
                size, tx, position = (0, "0", 0) if last is None else (int(last["size"]), last["tx"], last["last_position"])
                before = size if before is None else before
                take = batch if limit is None else min(batch, limit - (size - before))
                added = await self.connection.fetchrow(ADD_LEAVES_SQL, tx, position, take, size) if take > 0 else None
                count = 0 if added is None else int(added["added"])
                if added is not None and count:
                    edge = await self._tiles([(level, index) for level, index, _ in merkle.tiles_for(size)])
                    changed = merkle.grow_tiles(size, edge, added["leaf_hashes"])
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
        edge = await self._feed_key(size - 1) if size > 0 else None
        tx, position = edge if edge is not None else (None, None)
        count: int = await self.connection.fetchval(UNCOVERED_SQL, [t for t, _ in runs], [r for _, r in runs], tx, position)
        return count

    async def _feed_key(self, leaf: int) -> tuple[str, int] | None:
        """The feed key ``(tx, global_position)`` of the event at leaf ``leaf``, if the tree has it."""
        row = await self.connection.fetchrow(ENTRY_AT_SQL, leaf)
        if row is None or leaf >= row["first_leaf"] + row["leaves"]:
            return None
        if leaf == row["first_leaf"] + row["leaves"] - 1:
            return row["tx"], int(row["last_position"])
        thread_id, run_id, seq = decode_entry(bytes(row["ids"]), leaf - row["first_leaf"])
        key = await self.connection.fetchrow(EVENT_KEY_SQL, thread_id, run_id, seq)
        return None if key is None else (key["tx"], int(key["global_position"]))

    async def entries(self, prefetch: int = 200) -> AsyncIterator[Entry]:
        """Every leaf in order, as recorded: the event it was given to and its leaf hash (inside a transaction)."""
        async for row in self.connection.cursor(ENTRIES_SQL, prefetch=prefetch):
            hashes = bytes(row["hashes"] or b"")
            ids = bytes(row["ids"])
            for i in range(row["leaves"]):
                thread_id, run_id, seq = decode_entry(ids, i)
                yield Entry(row["first_leaf"] + i, thread_id, run_id, seq, hashes[i * merkle.HASH_SIZE : (i + 1) * merkle.HASH_SIZE])

    async def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint (a signed note), if any."""
        note: str | None = await self.connection.fetchval(LATEST_CHECKPOINT_SQL)
        return note

    async def _latest_signed_by(self, verifier: Verifier) -> Checkpoint | None:
        """The newest checkpoint whose signature and origin ``verifier`` accepts (others' are passed over)."""
        async for row in self.connection.cursor(CHECKPOINTS_NEWEST_FIRST_SQL, prefetch=16):
            try:
                return read_checkpoint(row["note"], verifier)
            except NoteError:
                continue
        return None

    async def sign(self, signer: Signer, at: datetime | None = None) -> tuple[Checkpoint, str]:
        """Grow the tree, then sign and keep a checkpoint of it.

        The tree signed must extend the latest checkpoint, and the latest one
        this key signed: a consistency proof from each, made from the tiles,
        is checked before anything is signed (:class:`Inconsistent`
        otherwise). Both run under the grow lock, read committed whatever
        the server's default, so that no newer checkpoint can be missed.
        """
        await self.grow()
        async with self.connection.transaction(isolation="read_committed"):
            await self.connection.execute(LOCK_SQL, GROW_LOCK)
            size = await self.size()
            root = await self.root(size)
            previous = await self.latest_checkpoint()
            olds = [] if previous is None else [("the latest checkpoint", unsigned_checkpoint(previous))]
            own = await self._latest_signed_by(signer.verifier)
            if own is not None:
                # A row anyone with the table's INSERT right could have added is not all it is checked against.
                olds.append((f"the latest checkpoint signed by {signer.name}", own))
            for what, old in olds:
                proof = await self.consistency(old.size, size) if old.size <= size else []
                if not merkle.verify_consistency(old.size, size, old.root, root, proof):
                    raise Inconsistent(f"the tree of {size} leaves does not extend {what} ({old.size} leaves)")
            checkpoint = Checkpoint.of(signer.name, size, root, at or datetime.now(timezone.utc))
            note = signer.sign(checkpoint.body())
            await self.connection.execute(ADD_CHECKPOINT_SQL, size, root, datetime.fromisoformat(checkpoint.time), note)
        return checkpoint, note
