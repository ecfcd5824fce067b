"""The Merkle tree over the whole log, RFC 9162 style, and its tiles (pure; no I/O).

Leaves are the events' chain hashes in global feed order. The tree is
RFC 9162's: ``leaf = SHA-256(0x00 || chain hash)``, ``node = SHA-256(0x01 ||
left || right)``, and a tree of ``n`` leaves splits at the largest power of
two below ``n``. Interior hashes are kept as C2SP tlog-tiles: a tile of level
``L`` holds up to 256 consecutive hashes of height ``8 L`` (level 0: leaf
hashes). Proofs are computed from any :class:`Hashes` (tiles in the database,
a list in memory) and checked by RFC 9162's verification algorithms. See
docs/hash-chain.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""RFC 9162: the hash of an empty tree is the hash of the empty string."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_root(hashes: bytes) -> bytes:
    """The root over a power-of-two number of hashes of one height, concatenated (each pair is ``left || right``)."""
    sha256 = hashlib.sha256
    while len(hashes) > HASH_SIZE:
        hashes = b"".join([sha256(b"\x01" + hashes[i : i + 2 * HASH_SIZE]).digest() for i in range(0, len(hashes), 2 * HASH_SIZE)])
    return hashes


class Hashes(Protocol):
    """Where a tree's hashes come from: the hash of the perfect subtree of ``height`` at ``index``.

    The subtree covers leaves ``[index * 2**height, (index + 1) * 2**height)``.
    """

    def subtree(self, height: int, index: int) -> bytes: ...


def range_hash(hashes: Hashes, start: int, end: int) -> bytes:
    """MTH of leaves ``[start, end)``, where ``start`` is a multiple of the range's largest split (as RFC 9162's recursions ask)."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        height = n.bit_length() - 1
        return hashes.subtree(height, start >> height)
    k = split(n)
    return node_hash(range_hash(hashes, start, start + k), range_hash(hashes, start + k, end))


def root(hashes: Hashes, size: int) -> bytes:
    """The root hash of the tree of the first ``size`` leaves."""
    return range_hash(hashes, 0, size)


def inclusion_proof(hashes: Hashes, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1: the inclusion path of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split(end - start)
        if index < start + k:
            path.append(range_hash(hashes, start + k, end))
            end = start + k
        else:
            path.append(range_hash(hashes, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_proof(hashes: Hashes, old: int, new: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1: the proof that the tree of ``old`` leaves is a prefix of the tree of ``new``."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old == 0 or old == new:
        return []
    proof: list[bytes] = []
    start, end, whole = 0, new, True
    m = old
    while True:
        if m == end - start:
            if not whole:
                proof.append(range_hash(hashes, start, end))
            break
        k = split(end - start)
        if m <= k:
            proof.append(range_hash(hashes, start + k, end))
            end = start + k
        else:
            proof.append(range_hash(hashes, start, start + k))
            start += k
            m -= k
            whole = False
    proof.reverse()
    return proof


def verify_inclusion(entry_hash: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """RFC 9162 §2.1.3.2, with ``entry_hash`` the leaf's hash (already prefixed with 0x00)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, entry_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: whether ``proof`` shows the tree ``(old, old_root)`` is a prefix of ``(new, new_root)``."""
    if not 0 <= old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class Leaves:
    """A tree held in memory as its leaf hashes (tests, offline checks, small trees)."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    def subtree(self, height: int, index: int) -> bytes:
        return self.levels[height][index]


class Compact:
    """A streaming root: the perfect subtrees of a growing tree, leaf by leaf, in O(log n) memory."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        self._stack.append(leaf)
        self.size += 1
        n = self.size
        while n & 1 == 0:
            right = self._stack.pop()
            self._stack[-1] = node_hash(self._stack[-1], right)
            n >>= 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r


# -- tiles ----------------------------------------------------------------------------------


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The C2SP tlog-tiles path of a tile: ``tile/<L>/<N>[.p/<W>]``, ``N`` in x-prefixed 3-digit elements."""
    parts = []
    while True:
        parts.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    elements = "/".join([f"x{p}" for p in reversed(parts[1:])] + [parts[0]])
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{elements}{suffix}"


def parse_tile_path(text: str) -> tuple[int, int, int]:
    """``(level, index, width)`` of a tile path (without ``tile/``'s data tiles); ValueError if it is not one."""
    parts = text.split("/")
    if len(parts) < 3 or parts[0] != "tile" or not parts[1].isdigit() or len(parts[1]) > 2:
        raise ValueError("not a tile path")
    level = int(parts[1])
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        w = rest[-1]
        if not w.isdigit() or w != str(int(w)) or not 1 <= int(w) < TILE_WIDTH:
            raise ValueError("bad partial tile width")
        width = int(w)
        rest = [*rest[:-2], rest[-2][:-2]]
    if not rest:
        raise ValueError("no tile index")
    index = 0
    for i, element in enumerate(rest):
        last = i == len(rest) - 1
        digits = element if last else element[1:]
        if (not last and not element.startswith("x")) or len(digits) != 3 or not digits.isdigit():
            raise ValueError("bad tile index element")
        index = index * 1000 + int(digits)
    if tile_path(level, index, width) != text:
        raise ValueError("not the canonical path of a tile")
    return level, index, width


def tile_count(size: int, level: int) -> int:
    """How many hashes of level ``level``'s height the tree of ``size`` leaves has."""
    return size >> (TILE_HEIGHT * level)


def tiles_for(size: int) -> list[tuple[int, int, int]]:
    """The right edge of the tree of ``size`` leaves: for each level, the last tile ``(level, index, width)`` with hashes."""
    edge = []
    level = 0
    while (count := tile_count(size, level)) > 0:
        if count % TILE_WIDTH:
            edge.append((level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
    return edge


def grow_tiles(size: int, edge: dict[tuple[int, int], bytes], new_leaves: bytes) -> dict[tuple[int, int], bytes]:
    """Append ``new_leaves`` (leaf hashes, concatenated) to a tree of ``size`` leaves whose partial edge tiles are ``edge``.

    ``edge`` maps ``(level, index)`` to the concatenated hashes of each
    partial tile on the right edge (:func:`tiles_for`). Returns every tile
    changed, full or partial, as ``(level, index) -> hashes``; the cost
    follows the new leaves, not the size of the tree: one hash per new leaf
    and level above it, computed on the concatenated bytes (the
    checkpointer runs in the writers' process).
    """
    changed: dict[tuple[int, int], bytes] = {}
    pending = bytes(new_leaves)
    level = 0
    count = size  # the hashes this level held before this growth
    whole = TILE_WIDTH * HASH_SIZE
    while pending:
        first = count // TILE_WIDTH
        data = edge.get((level, first), b"") + pending
        full = len(data) // whole
        promoted = []
        for i in range(full):
            tile = data[i * whole : (i + 1) * whole]
            changed[(level, first + i)] = tile
            promoted.append(perfect_root(tile))
        if len(data) > full * whole:
            changed[(level, first + full)] = data[full * whole :]
        pending = b"".join(promoted)
        count //= TILE_WIDTH
        level += 1
    return changed


def tile_hash(tiles: Callable[[int, int], bytes], height: int, index: int) -> bytes:
    """The hash of the perfect subtree ``(height, index)`` read from tiles (``tiles(level, index)`` gives a tile's hashes)."""
    level, rest = divmod(height, TILE_HEIGHT)
    first = index << rest  # the subtree covers this many hashes of the tile level's height
    count = 1 << rest
    tile, offset = divmod(first, TILE_WIDTH)
    data = tiles(level, tile)
    chunk = data[offset * HASH_SIZE : (offset + count) * HASH_SIZE]
    if len(chunk) != count * HASH_SIZE:
        raise LookupError(f"tile {level}/{tile} holds {len(data) // HASH_SIZE} hashes, not up to {offset + count}")
    return perfect_root(chunk)
