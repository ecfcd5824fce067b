"""The Merkle log in the database: leaves in feed order, tiles grown off the append path, proofs, checkpoints."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import asyncpg
import pytest

from graphledger.ledger import Ledger, NewEvent, RunRef, merkle
from graphledger.ledger.note import Checkpoint, Signer, read_checkpoint
from graphledger.ledger.tlog import Inconsistent
from tests.ledger.helpers import new_run


async def feed_hashes(conn: asyncpg.Connection) -> list[bytes]:
    rows = await conn.fetch("SELECT hash FROM events ORDER BY tx, global_position")
    return [merkle.leaf_hash(bytes(r["hash"])) for r in rows]


async def append_some(ledger: Ledger, runs: int, events: int) -> list[RunRef]:
    refs = [await new_run(ledger) for _ in range(runs)]
    for i in range(events):
        await asyncio.gather(*(ledger.append(ref, "stream:messages", [{"content": f"t{i}"}]) for ref in refs))
    return refs


async def test_leaves_follow_the_feed_and_proofs_verify(ledger: Ledger, conn: asyncpg.Connection) -> None:
    await append_some(ledger, 5, 30)
    sizes = []
    async with ledger.session() as session:
        for batch in (1, 7, 256, 1000):
            grown = await session.log.grow(batch=batch, limit=20)
            sizes.append(grown.after)
        grown = await session.log.grow()
        size = grown.after
        leaves = await feed_hashes(conn)
        assert size == len(leaves) == 5 * 31
        tree = merkle.Leaves(leaves)
        for n in (1, 2, 3, 100, 155):
            assert await session.log.root(n) == merkle.root(tree, n)
        for index in (0, 1, 77, size - 1):
            proof = await session.log.inclusion(index, size)
            assert merkle.verify_inclusion(leaves[index], index, size, proof, merkle.root(tree, size))
        for old in (1, 50, 128, size):
            proof = await session.log.consistency(old, size)
            assert merkle.verify_consistency(old, size, merkle.root(tree, old), merkle.root(tree, size), proof)
        assert (await session.log.grow()).after == size  # nothing new: nothing to do
    assert sizes == [20, 40, 60, 80]


async def test_an_event_of_a_transaction_still_running_gets_no_leaf_until_it_commits(ledger: Ledger) -> None:
    ref = await new_run(ledger)
    async with ledger.transaction() as tx:
        (pending,) = await tx.append(ref, [NewEvent.of("stream:messages", ["late"])])
        later = await new_run(ledger)  # a transaction that starts after, and commits first
        async with ledger.session() as session:
            await session.log.grow()
            assert await session.log.leaf(later.thread_id, later.run_id, 1) is None  # held back behind the open one
    async with ledger.session() as session:
        await session.log.grow()
        first = await session.log.leaf(ref.thread_id, ref.run_id, pending.seq)
        second = await session.log.leaf(later.thread_id, later.run_id, 1)
    assert first is not None and second is not None and first < second


async def test_checkpoints_are_signed_kept_and_append_only(ledger: Ledger, conn: asyncpg.Connection) -> None:
    signer = Signer.generate("test.example/log")
    await append_some(ledger, 2, 3)
    async with ledger.session() as session:
        first, note = await session.log.sign(signer)
        assert await session.log.latest_checkpoint() == note
    checkpoint = read_checkpoint(note, signer.verifier)
    assert checkpoint.size == first.size == len(await feed_hashes(conn))
    assert checkpoint.root == merkle.root(merkle.Leaves(await feed_hashes(conn)), checkpoint.size)
    for statement in ("DELETE FROM checkpoints", "UPDATE merkle_entries SET leaves = 2", "DELETE FROM merkle_entries", "TRUNCATE merkle_entries"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
    # A tile altered under the checkpoint: the next one is refused.
    await conn.execute("UPDATE merkle_tiles SET hashes = overlay(hashes placing '\\x00'::bytea from 1) WHERE level = 0 AND tile_index = 0")
    await append_some(ledger, 1, 1)
    async with ledger.session() as session:
        with pytest.raises(Inconsistent, match="latest checkpoint"):
            await session.log.sign(signer)
    # Also when a newer row claims an empty tree (INSERT is all it takes): the key's own last checkpoint still counts.
    forger = Signer.generate("test.example/log")
    fake = forger.sign(Checkpoint.of("test.example/log", 0, merkle.EMPTY_ROOT, datetime.now(timezone.utc)).body())
    await conn.execute("INSERT INTO checkpoints (tree_size, root_hash, signed_at, note) VALUES (0, $1, now(), $2)", merkle.EMPTY_ROOT, fake)
    async with ledger.session() as session:
        with pytest.raises(Inconsistent, match="signed by test.example/log"):
            await session.log.sign(signer)


async def test_each_event_is_found_at_its_leaf_whatever_the_growths_cut(ledger: Ledger, conn: asyncpg.Connection) -> None:
    async with ledger.session() as session:
        base = (await session.log.grow()).after  # what earlier tests left in the log
    refs = await append_some(ledger, 7, 90)  # 637 events: over three level-0 tiles
    async with ledger.session() as session:
        for batch in (3, 250, 256, 100):  # growths that end inside a tile and across tile boundaries
            await session.log.grow(batch=batch, limit=batch)
        await session.log.grow(batch=97)
        size = await session.log.size()
        feed = await conn.fetch("SELECT thread_id, run_id, seq FROM events ORDER BY tx, global_position")
        assert size == len(feed) == base + 7 * 91
        rows = await conn.fetch("SELECT first_leaf, leaves FROM merkle_entries ORDER BY first_leaf")
        assert sum(r["leaves"] for r in rows) == size and len([r for r in rows if r["first_leaf"] >= base]) > 3
        assert all(r["first_leaf"] // merkle.TILE_WIDTH == (r["first_leaf"] + r["leaves"] - 1) // merkle.TILE_WIDTH for r in rows)
        for index, row in enumerate(feed):
            assert await session.log.leaf(row["thread_id"], row["run_id"], row["seq"]) == index
        for ref in refs:
            expected = {r["seq"]: i for i, r in enumerate(feed) if r["run_id"] == ref.run_id}
            assert await session.log.run_leaves(ref.thread_id, ref.run_id) == expected
        pairs = [(ref.thread_id, ref.run_id) for ref in refs]
        for cut in (0, 1, 3, 255, 256, 300, 7 * 91 - 1, 7 * 91):
            assert await session.log.uncovered(pairs, base + cut) == 7 * 91 - cut
        assert await session.log.uncovered(pairs[:1], 0) == 91
        hashes = await feed_hashes(conn)
        async with session.connection.transaction():
            entries = [e async for e in session.log.entries()]
        assert [(e.leaf_index, e.thread_id, e.run_id, e.seq) for e in entries] == [
            (i, r["thread_id"], r["run_id"], r["seq"]) for i, r in enumerate(feed)
        ]
        assert [e.leaf_hash for e in entries][base:] == hashes[base:]  # (an earlier test altered a tile under base)
        assert await session.log.leaf(refs[0].thread_id, refs[0].run_id, 92) is None
    later = await new_run(ledger)  # appended after the growth: no leaf yet, and counted as uncovered
    async with ledger.session() as session:
        assert await session.log.leaf(later.thread_id, later.run_id, 1) is None
        assert await session.log.uncovered([(later.thread_id, later.run_id)], size) == 1


async def test_a_tile_index_past_any_bigint_is_a_bad_value_not_an_outage(ledger: Ledger) -> None:
    """The driver refuses to encode it; that is the caller's value at fault (4xx), never a database away (503)."""
    from graphledger.ledger.errors import InvalidPayload

    with pytest.raises(InvalidPayload, match="cannot take"):
        async with ledger.session() as session:
            await session.log.tile(0, 10**21, merkle.TILE_WIDTH)
