"""The Merkle tree over the audit log: RFC 6962 / RFC 9162 hashing, proofs and their checks.

The hashing is the standard one (SHA-256, 0x00 leaf and 0x01 node prefixes, the largest power
of two strictly below n on the left), so any RFC 9162 client can check our proofs and roots.
Only leaves and the interior nodes at levels 4, 8, 12... are persisted: about 1/15 of the
leaf count in extra rows, while any other node costs at most one small range read (at most 8
hashes) to rebuild, so proofs and roots need O(log n) reads and never O(n).

The verifiers are deliberately strict (exact hash sizes, exact proof lengths, integer sizes):
a lenient verifier that accepts a falsified proof is how tamper evidence silently fails
(see the immudb advisory GHSA-672p-m5jq-mrh8).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final, Protocol

HASH_SIZE: Final = 32
STORED_LEVEL_STRIDE: Final = 4
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

# RFC 9162 sizes and indices are uint64; the bound also caps the verifiers' loops at 64 steps.
_MAX_SIZE: Final = 2**64 - 1
# Reading a few unneeded hashes is cheaper than one more round trip to the database.
_MERGE_GAP: Final = 1 << STORED_LEVEL_STRIDE
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof that does not verify, with a precise reason."""


def leaf_hash(data: bytes) -> bytes:
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(_NODE_PREFIX + left + right).digest()


class NodeStore(Protocol):
    """Where the hashes of a sequenced log live (the database in production)."""

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaf hashes ``[start, stop)``."""
        ...

    def stored_nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        """Hashes of the perfect subtrees at ``level`` with node indices ``[start, stop)``.

        ``level`` is a positive multiple of STORED_LEVEL_STRIDE; node ``(level, i)`` covers
        leaves ``[i * 2**level, (i + 1) * 2**level)``.
        """
        ...


class MemoryNodeStore:
    """In-memory twin of the database store, for tests and for the offline verifier."""

    __slots__ = ("_leaves", "_nodes")

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._nodes: dict[int, list[bytes]] = {}

    def __repr__(self) -> str:
        return f"MemoryNodeStore(size={len(self._leaves)})"

    @property
    def size(self) -> int:
        return len(self._leaves)

    def append(self, leaf_hashes: Sequence[bytes]) -> None:
        for position, leaf in enumerate(leaf_hashes):
            if not _is_hash(leaf):
                raise ValueError(f"leaf_hashes[{position}] is not a {HASH_SIZE}-byte hash")
        old_size = len(self._leaves)
        self._leaves.extend(leaf_hashes)
        for level, index, digest in new_stored_nodes(self, old_size, len(self._leaves)):
            nodes = self._nodes.setdefault(level, [])
            if index != len(nodes):
                raise AssertionError(f"stored node ({level}, {index}) computed out of order")
            nodes.append(digest)

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        _check_range(start, stop, len(self._leaves), "leaves")
        return self._leaves[start:stop]

    def stored_nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        if level <= 0 or level % STORED_LEVEL_STRIDE:
            raise ValueError(f"level {level} is not a stored level")
        nodes = self._nodes.get(level, [])
        _check_range(start, stop, len(nodes), f"stored nodes at level {level}")
        return nodes[start:stop]


def new_stored_nodes(
    store: NodeStore, old_size: int, new_size: int
) -> list[tuple[int, int, bytes]]:
    """``(level, index, hash)`` of every stored-level node complete at new_size but not at old_size.

    The leaves up to new_size must already be in ``store``. Lower levels are computed first
    and fed to the next level without a round trip, so this costs one leaf read plus at most
    one read per level (the older siblings that complete a node at that level).
    """
    _check_count(old_size, "old_size")
    _check_count(new_size, "new_size")
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} is larger than new_size {new_size}")
    width = 1 << STORED_LEVEL_STRIDE
    found: list[tuple[int, int, bytes]] = []
    level = STORED_LEVEL_STRIDE
    below_start = (old_size >> level) * width
    below = _read(store, 0, below_start, (new_size >> level) * width)
    while (first := old_size >> level) < (last := new_size >> level):
        children_start = first * width
        if children_start < below_start:
            older = _read(store, level - STORED_LEVEL_STRIDE, children_start, below_start)
            children = older + below[: last * width - below_start]
        else:
            children = below[children_start - below_start : last * width - below_start]
        hashes = [_fold(children[i : i + width]) for i in range(0, len(children), width)]
        found.extend((level, first + offset, digest) for offset, digest in enumerate(hashes))
        below, below_start = hashes, first
        level += STORED_LEVEL_STRIDE
    return found


class MerkleTree:
    """Read-side view of the first ``size`` leaves of a NodeStore."""

    __slots__ = ("_size", "_store")

    def __init__(self, store: NodeStore, size: int) -> None:
        _check_count(size, "size")
        self._store = store
        self._size = size

    def __repr__(self) -> str:
        return f"MerkleTree(size={self._size})"

    @property
    def size(self) -> int:
        return self._size

    def root(self) -> bytes:
        """MTH(D[0:size]); EMPTY_ROOT for the empty tree."""
        if self._size == 0:
            return EMPTY_ROOT
        return _range_hashes(self._store, [(0, self._size)])[0]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """RFC 6962 PATH(index, D[0:size]), the deepest sibling first."""
        _check_count(index, "index")
        if index >= self._size:
            raise ValueError(f"index {index} is not in a tree of size {self._size}")
        ranges: list[tuple[int, int]] = []
        start, size = 0, self._size
        while size > 1:
            split = _split(size)
            if index < split:
                ranges.append((start + split, size - split))
                size = split
            else:
                ranges.append((start, split))
                start, index, size = start + split, index - split, size - split
        ranges.reverse()
        return _range_hashes(self._store, ranges)

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """RFC 6962 PROOF(old_size, D[0:size]); empty when old_size == size."""
        _check_count(old_size, "old_size")
        if not 0 < old_size <= self._size:
            raise ValueError(f"old_size {old_size} is not in 1..{self._size}")
        ranges: list[tuple[int, int]] = []
        start, old, size, whole_old_tree = 0, old_size, self._size, True
        while old != size:
            split = _split(size)
            if old <= split:
                ranges.append((start + split, size - split))
                size = split
            else:
                ranges.append((start, split))
                start, old, size, whole_old_tree = start + split, old - split, size - split, False
        if not whole_old_tree:
            ranges.append((start, size))
        ranges.reverse()
        return _range_hashes(self._store, ranges)


class RootAccumulator:
    """Streaming root for the verifier: O(1) amortised per leaf, the prefix root at any time.

    The peaks are the perfect subtrees of the prefix, largest first, like the bits of a
    binary counter: the size's bits give their heights, so only the hashes are kept.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        self._peaks: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def push(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        peaks = self._peaks
        carry = self._size
        self._size = carry + 1
        while carry & 1:
            leaf = _sha256(_NODE_PREFIX + peaks.pop() + leaf).digest()
            carry >>= 1
        peaks.append(leaf)

    def root(self) -> bytes:
        peaks = self._peaks
        if not peaks:
            return EMPTY_ROOT
        accumulated = peaks[-1]
        for peak in reversed(peaks[:-1]):
            accumulated = node_hash(peak, accumulated)
        return accumulated


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` in the tree of ``tree_size`` with ``root``.

    RFC 9162 section 2.1.3.2, with the index arithmetic run before any hashing so that a
    proof of the wrong length is refused by name. The tree size is not hashed into the root:
    the (size, root) pair must come from a signed checkpoint.
    """
    _check_hash(leaf, "leaf")
    _check_hash(root, "root")
    _check_proof_size(index, "index")
    _check_proof_size(tree_size, "tree_size")
    path = _check_path(proof)
    if index >= tree_size:
        raise ProofError(f"index {index} is not in a tree of size {tree_size}")
    sides = _sibling_sides(index, tree_size - 1)
    if len(path) != len(sides):
        raise ProofError(
            f"inclusion proof has {len(path)} hashes, index {index} in a tree of size "
            f"{tree_size} needs exactly {len(sides)}"
        )
    computed = leaf
    for sibling, on_left in zip(path, sides, strict=True):
        computed = node_hash(sibling, computed) if on_left else node_hash(computed, sibling)
    if not hmac.compare_digest(computed, root):
        raise ProofError(f"inclusion proof for index {index} does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 section 2.1.4.2, length checked first as in verify_inclusion. Equal sizes need
    an empty proof and equal roots. The empty tree is a prefix of every tree, so old_size 0
    takes only an empty proof; its root must still be EMPTY_ROOT, since a checkpoint claiming
    another root for the empty tree is false whatever comes after it.
    """
    _check_proof_size(old_size, "old_size")
    _check_proof_size(new_size, "new_size")
    _check_hash(old_root, "old_root")
    _check_hash(new_root, "new_root")
    path = _check_path(proof)
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} is larger than new_size {new_size}")
    if old_size == 0 or old_size == new_size:
        if path:
            raise ProofError(
                f"a consistency proof from size {old_size} to {new_size} is empty, "
                f"not {len(path)} hashes"
            )
        if old_size == 0 and not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise ProofError("old_root is not the root of the empty tree")
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise ProofError(f"two different roots for the same size {old_size}")
        return
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    sides = _sibling_sides(fn, sn)
    seeded = old_size & (old_size - 1) == 0
    expected = len(sides) + (0 if seeded else 1)
    if len(path) != expected:
        raise ProofError(
            f"consistency proof has {len(path)} hashes, sizes {old_size} to {new_size} "
            f"need exactly {expected}"
        )
    if seeded:
        path = [old_root, *path]
    old_computed = new_computed = path[0]
    for sibling, on_left in zip(path[1:], sides, strict=True):
        if on_left:
            old_computed = node_hash(sibling, old_computed)
            new_computed = node_hash(sibling, new_computed)
        else:
            new_computed = node_hash(new_computed, sibling)
    if not hmac.compare_digest(old_computed, old_root):
        raise ProofError(f"consistency proof does not lead to the root at size {old_size}")
    if not hmac.compare_digest(new_computed, new_root):
        raise ProofError(f"consistency proof does not lead to the root at size {new_size}")


def _sibling_sides(fn: int, sn: int) -> list[bool]:
    """RFC 9162's walk up from node fn of last node sn: for each proof hash, is it on the left?"""
    sides = []
    while sn > 0:
        on_left = bool(fn & 1) or fn == sn
        if on_left and not fn & 1:
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        sides.append(on_left)
        fn >>= 1
        sn >>= 1
    return sides


def _split(size: int) -> int:
    """The largest power of two strictly below ``size`` (RFC 6962's k), for size > 1."""
    return 1 << ((size - 1).bit_length() - 1)


def _peaks(start: int, size: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees of leaves [start, start + size), left to right.

    RFC 6962's recursion only forms ranges whose start is a multiple of a power of two at
    least their size, so each peak is an aligned node.
    """
    peaks = []
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            peaks.append((level, start >> level))
            start += 1 << level
    return peaks


def _range_hashes(store: NodeStore, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """MTH of each (start, size) leaf range: its peaks folded right to left."""
    peaks_per_range = [_peaks(start, size) for start, size in ranges]
    hashes = iter(_perfect_hashes(store, [peak for peaks in peaks_per_range for peak in peaks]))
    found = []
    for peaks in peaks_per_range:
        folded = [next(hashes) for _ in peaks]
        accumulated = folded[-1]
        for peak in reversed(folded[:-1]):
            accumulated = node_hash(peak, accumulated)
        found.append(accumulated)
    return found


def _perfect_hashes(store: NodeStore, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
    """Hashes of perfect subtrees, each rebuilt from the nearest stored level at or below it.

    Nearby spans at the same stored level share one range read.
    """
    spans: dict[int, list[tuple[int, int]]] = {}
    for level, index in nodes:
        base, width = _base_and_width(level)
        spans.setdefault(base, []).append((index * width, (index + 1) * width))
    runs: dict[int, list[tuple[int, list[bytes]]]] = {}
    for base, base_spans in spans.items():
        merged: list[list[int]] = []
        for start, stop in sorted(base_spans):
            if merged and start - merged[-1][1] < _MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        runs[base] = [(start, _read(store, base, start, stop)) for start, stop in merged]
    found = []
    for level, index in nodes:
        base, width = _base_and_width(level)
        start = index * width
        run_start, run = next(
            (run_start, run)
            for run_start, run in runs[base]
            if run_start <= start < run_start + len(run)
        )
        found.append(_fold(run[start - run_start : start - run_start + width]))
    return found


def _base_and_width(level: int) -> tuple[int, int]:
    """The stored level (0 for leaves) a node is rebuilt from, and how many nodes it spans."""
    base = level - level % STORED_LEVEL_STRIDE
    return base, 1 << (level - base)


def _read(store: NodeStore, level: int, start: int, stop: int) -> list[bytes]:
    if start >= stop:
        return []
    if level == 0:
        hashes = store.leaf_hashes(start, stop)
    else:
        hashes = store.stored_nodes(level, start, stop)
    if len(hashes) != stop - start or not all(_is_hash(digest) for digest in hashes):
        raise ValueError(
            f"the store returned {len(hashes)} hashes at level {level} for [{start}, {stop}), "
            f"not {stop - start} hashes of {HASH_SIZE} bytes"
        )
    return hashes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """The root of a perfect subtree from its 2**k nodes at one level."""
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _check_count(value: object, name: str) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _check_range(start: int, stop: int, available: int, what: str) -> None:
    if not 0 <= start <= stop <= available:
        raise ValueError(f"[{start}, {stop}) is outside the {available} {what}")


def _check_hash(value: object, name: str) -> None:
    if not _is_hash(value):
        raise ProofError(f"{name} is not a {HASH_SIZE}-byte hash")


def _check_proof_size(value: object, name: str) -> None:
    if type(value) is not int:
        raise ProofError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= _MAX_SIZE:
        raise ProofError(f"{name} {value} is outside 0..2**64-1")


def _check_path(proof: object) -> list[bytes]:
    """A copy of the proof, so that it cannot change between these checks and the hashing."""
    if isinstance(proof, str | bytes | bytearray | memoryview) or not isinstance(proof, Sequence):
        raise ProofError(f"a proof is a sequence of hashes, not {type(proof).__name__}")
    path = list(proof)
    for position, digest in enumerate(path):
        if not _is_hash(digest):
            raise ProofError(f"proof[{position}] is not a {HASH_SIZE}-byte hash")
    return path
