"""The Merkle tree and its proofs against a reference written straight from RFC 9162's definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphledger.ledger import merkle

# -- the reference: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1, recursively, with hashlib alone ------------------


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_consistency(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True) if 0 < m < len(d) else []


def entries(n: int) -> list[bytes]:
    return [hashlib.sha256(f"event {i}".encode()).digest() for i in range(n)]


def tree(d: list[bytes]) -> merkle.Leaves:
    return merkle.Leaves(merkle.leaf_hash(e) for e in d)


SIZES = range(1, 301)


@pytest.mark.parametrize("n", SIZES)
def test_roots_and_inclusion_proofs_match_the_rfc_for_every_size(n: int) -> None:
    d = entries(n)
    t = tree(d)
    root = merkle.root(t, n)
    assert root == ref_mth(d)
    for m in range(n):
        proof = merkle.inclusion_proof(t, m, n)
        assert proof == ref_path(m, d)
        assert merkle.verify_inclusion(merkle.leaf_hash(d[m]), m, n, proof, root)
        assert not merkle.verify_inclusion(merkle.leaf_hash(d[m]), (m + 1) % n, n, proof, root) or n == 1
        assert not merkle.verify_inclusion(merkle.leaf_hash(b"other"), m, n, proof, root)


@pytest.mark.parametrize("n", SIZES)
def test_consistency_proofs_match_the_rfc_for_every_pair(n: int) -> None:
    d = entries(n)
    t = tree(d)
    new_root = merkle.root(t, n)
    for m in range(0, n + 1):
        proof = merkle.consistency_proof(t, m, n)
        assert proof == ref_consistency(m, d)
        old_root = ref_mth(d[:m])
        assert merkle.verify_consistency(m, n, old_root, new_root, proof)
        if 0 < m < n:
            assert not merkle.verify_consistency(m, n, ref_mth(entries(m + 1)[1:]), new_root, proof)
            assert not merkle.verify_consistency(m, n, old_root, new_root, proof[:-1])


def test_an_empty_tree_and_the_compact_root() -> None:
    assert merkle.root(merkle.Leaves(), 0) == hashlib.sha256(b"").digest() == merkle.Compact().root()
    d = entries(77)
    compact = merkle.Compact()
    for i, e in enumerate(d, start=1):
        compact.append(merkle.leaf_hash(e))
        assert compact.root() == ref_mth(d[:i])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_proofs_verify_and_forgeries_do_not(n: int, data: st.DataObject) -> None:
    d = entries(n)
    t = tree(d)
    root = merkle.root(t, n)
    m = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(t, m, n)
    assert merkle.verify_inclusion(merkle.leaf_hash(d[m]), m, n, proof, root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        forged = [*proof[:i], bytes(32), *proof[i + 1 :]]
        assert not merkle.verify_inclusion(merkle.leaf_hash(d[m]), m, n, forged, root)
    old = data.draw(st.integers(1, n))
    cproof = merkle.consistency_proof(t, old, n)
    assert merkle.verify_consistency(old, n, ref_mth(d[:old]), root, cproof)
    if old < n:
        changed = list(d)
        changed[data.draw(st.integers(0, old - 1))] = b"tampered"
        assert not merkle.verify_consistency(old, n, ref_mth(changed[:old]), root, cproof)


class Tiles:
    """Tiles grown batch by batch, read back as a :class:`merkle.Hashes`."""

    def __init__(self) -> None:
        self.size = 0
        self.tiles: dict[tuple[int, int], bytes] = {}

    def grow(self, leaf_hashes: list[bytes]) -> None:
        edge = {(lv, ix): self.tiles[(lv, ix)] for lv, ix, _ in merkle.tiles_for(self.size)}
        self.tiles.update(merkle.grow_tiles(self.size, edge, b"".join(leaf_hashes)))
        self.size += len(leaf_hashes)

    def subtree(self, height: int, index: int) -> bytes:
        return merkle.tile_hash(lambda level, i: self.tiles.get((level, i), b""), height, index)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=8))
def test_tiles_grown_in_any_batches_give_the_same_tree(batches: list[int]) -> None:
    total = sum(batches)
    d = entries(total)
    tiles = Tiles()
    done = 0
    for b in batches:
        tiles.grow([merkle.leaf_hash(e) for e in d[done : done + b]])
        done += b
        if done:
            assert merkle.root(tiles, done) == ref_mth(d[:done])
    for lv, ix, w in merkle.tiles_for(total):
        assert len(tiles.tiles[(lv, ix)]) == 32 * w
    if total:
        m = total // 3
        assert merkle.inclusion_proof(tiles, m, total) == ref_path(m, d)


def test_a_tree_of_65_537_leaves_has_level_2_tiles() -> None:
    n = 256 * 256 + 1
    d = [i.to_bytes(8, "big") for i in range(n)]
    tiles = Tiles()
    tiles.grow([merkle.leaf_hash(e) for e in d[:1000]])
    tiles.grow([merkle.leaf_hash(e) for e in d[1000:]])
    assert (2, 0) in tiles.tiles and len(tiles.tiles[(1, 0)]) == 256 * 32
    assert merkle.root(tiles, n) == merkle.root(tree(d), n)
    assert merkle.inclusion_proof(tiles, n - 1, n) == merkle.inclusion_proof(tree(d), n - 1, n)


@pytest.mark.parametrize(
    ("level", "index", "width", "path"),
    [
        (0, 0, 256, "tile/0/000"),
        (0, 1234067, 256, "tile/0/x001/x234/067"),
        (1, 5, 17, "tile/1/005.p/17"),
        (2, 1000, 256, "tile/2/x001/000"),
    ],
)
def test_tile_paths_follow_tlog_tiles(level: int, index: int, width: int, path: str) -> None:
    assert merkle.tile_path(level, index, width) == path
    assert merkle.parse_tile_path(path) == (level, index, width)


@pytest.mark.parametrize("path", ["tile/0/1", "tile/0/x000/001", "tile/0/001.p/256", "tile/0/001.p/0", "tile/0/001.p/01", "tile/entries/000", "tile/0/"])
def test_bad_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        merkle.parse_tile_path(path)
