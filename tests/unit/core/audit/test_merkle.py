"""The audit Merkle tree against RFC 6962 itself: a naive transcription of section 2.1,
the published Certificate Transparency vectors, and tampered proofs that must all be refused."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from operator import methodcaller
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.core.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    STORED_LEVEL_STRIDE,
    MemoryNodeStore,
    MerkleTree,
    NodeStore,
    ProofError,
    RootAccumulator,
    leaf_hash,
    new_stored_nodes,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def power_of_two_below(n: int) -> int:
    """RFC 6962's k: the largest power of two smaller than n (n > 1), by counting."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """RFC 6962 section 2.1 transcribed: MTH, PATH and PROOF over D[lo:hi] (MTH memoised)."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.leaves = [sha256(b"\x00" + entry) for entry in entries]
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return sha256(b"")
        if n == 1:
            return self.leaves[lo]
        if (lo, hi) not in self._mth:
            k = power_of_two_below(n)
            self._mth[lo, hi] = sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))
        return self._mth[lo, hi]

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = power_of_two_below(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self.subproof(m, 0, n, True)

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = power_of_two_below(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def path_shape(m: int, n: int) -> list[bool]:
    """PATH's siblings, deepest first: True where the sibling is on the left."""
    if n == 1:
        return []
    k = power_of_two_below(n)
    if m < k:
        return [*path_shape(m, k), False]
    return [*path_shape(m - k, n - k), True]


def proof_shape(m: int, n: int, b: bool = True) -> tuple[bool, list[bool]]:
    """PROOF's structure: whether the old root is the implicit seed, then each hash's side."""
    if m == n:
        return b, []
    k = power_of_two_below(n)
    if m <= k:
        seeded, sides = proof_shape(m, k, b)
        return seeded, [*sides, False]
    seeded, sides = proof_shape(m - k, n - k, False)
    return seeded, [*sides, True]


MAX_LEAVES = 4200  # past 4096, so level 12 is stored
REFERENCE = Reference([i.to_bytes(4, "big") + b"entry" * (i % 3) for i in range(MAX_LEAVES)])
STORE = MemoryNodeStore()
STORE.append(REFERENCE.leaves)


class ReferenceStore:
    """Only leaves: stored nodes come from the reference, and only if complete within
    ``node_limit`` leaves; nothing past ``limit`` leaves exists. Every read is recorded."""

    def __init__(self, limit: int, node_limit: int | None = None) -> None:
        self.limit = limit
        self.node_limit = limit if node_limit is None else node_limit
        self.reads: list[tuple[int, int, int]] = []

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        assert 0 <= start < stop <= self.limit, f"leaves [{start}, {stop}) of {self.limit}"
        self.reads.append((0, start, stop))
        return REFERENCE.leaves[start:stop]

    def stored_nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        assert level > 0
        assert level % STORED_LEVEL_STRIDE == 0
        assert 0 <= start < stop
        assert stop << level <= self.node_limit, f"({level}, {stop - 1}) is not complete"
        self.reads.append((level, start, stop))
        return [REFERENCE.mth(i << level, (i + 1) << level) for i in range(start, stop)]


class SyntheticStore:
    """A huge log of made-up hashes: counts what proofs read, and refuses reads past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reads: list[tuple[int, int, int]] = []

    def _hashes(self, level: int, start: int, stop: int) -> list[bytes]:
        assert 0 <= start < stop
        assert stop << level <= self.limit
        self.reads.append((level, start, stop))
        return [sha256(f"{level}/{i}".encode()) for i in range(start, stop)]

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        return self._hashes(0, start, stop)

    def stored_nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        assert level % STORED_LEVEL_STRIDE == 0
        return self._hashes(level, start, stop)


def flip(digest: bytes, bit: int) -> bytes:
    changed = bytearray(digest)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def refused(verify: Callable[..., None], *arguments: object) -> bool:
    try:
        verify(*arguments)
    except ProofError:
        return True
    return False


# RFC 6962 test data as published by Certificate Transparency / Trillian
# (transparency-dev/merkle, proof/verify_test.go), whose leaves are numbered from 1, not 0.
CT_ENTRIES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]  # fmt: skip
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (1, 1, []),
]  # fmt: skip


@pytest.fixture(scope="module")
def ct_store() -> MemoryNodeStore:
    store = MemoryNodeStore()
    store.append([leaf_hash(entry) for entry in CT_ENTRIES])
    return store


def test_hashing_is_rfc_6962s() -> None:
    left, right = sha256(b"left"), sha256(b"right")
    assert (HASH_SIZE, STORED_LEVEL_STRIDE) == (32, 4)
    assert leaf_hash(b"abc") == sha256(b"\x00abc")
    assert node_hash(left, right) == sha256(b"\x01" + left + right)
    assert node_hash(left, right) != node_hash(right, left)
    assert sha256(b"") == EMPTY_ROOT


def test_published_roots(ct_store: MemoryNodeStore) -> None:
    for size, root in enumerate(CT_ROOTS):
        assert MerkleTree(ct_store, size).root().hex() == root
    accumulator = RootAccumulator()
    assert accumulator.root().hex() == CT_ROOTS[0]
    for size, entry in enumerate(CT_ENTRIES, start=1):
        accumulator.push(leaf_hash(entry))
        assert accumulator.root().hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_published_inclusion_proofs(
    ct_store: MemoryNodeStore, index: int, size: int, proof: list[str]
) -> None:
    path = MerkleTree(ct_store, size).inclusion_proof(index)
    assert [digest.hex() for digest in path] == proof
    root = bytes.fromhex(CT_ROOTS[size])
    verify_inclusion(leaf_hash(CT_ENTRIES[index]), index, size, path, root)


@pytest.mark.parametrize(("old_size", "new_size", "proof"), CT_CONSISTENCY)
def test_published_consistency_proofs(
    ct_store: MemoryNodeStore, old_size: int, new_size: int, proof: list[str]
) -> None:
    path = MerkleTree(ct_store, new_size).consistency_proof(old_size)
    assert [digest.hex() for digest in path] == proof
    old_root, new_root = bytes.fromhex(CT_ROOTS[old_size]), bytes.fromhex(CT_ROOTS[new_size])
    verify_consistency(old_size, new_size, old_root, new_root, path)


def check_tree_against_reference(tree: MerkleTree, size: int, indices: Sequence[int]) -> None:
    root = REFERENCE.mth(0, size)
    assert tree.size == size
    assert tree.root() == root
    for index in indices:
        if index < size:
            path = tree.inclusion_proof(index)
            assert path == REFERENCE.path(index, 0, size), (size, index)
            verify_inclusion(REFERENCE.leaves[index], index, size, path, root)
        if 0 < index <= size:
            proof = tree.consistency_proof(index)
            assert proof == REFERENCE.proof(index, size), (index, size)
            verify_consistency(index, size, REFERENCE.mth(0, index), root, proof)


def exact_memory_store(size: int) -> MemoryNodeStore:
    store = MemoryNodeStore()
    store.append(REFERENCE.leaves[:size])
    return store


STORES: dict[str, Callable[[int], NodeStore]] = {
    "memory store of exactly the tree": exact_memory_store,
    "prefix of a larger memory store": lambda size: STORE,
    "leaves only, nothing past the tree": ReferenceStore,
}


@pytest.mark.parametrize("make_store", STORES.values(), ids=list(STORES))
def test_every_proof_of_small_trees_is_the_rfcs(make_store: Callable[[int], NodeStore]) -> None:
    for size in range(71):
        tree = MerkleTree(make_store(size), size)
        check_tree_against_reference(tree, size, range(size + 1))


@pytest.mark.parametrize("size", [127, 128, 129, 255, 256, 257, 300, 1000, 4095, 4096, 4097, 4200])
@pytest.mark.parametrize("make_store", STORES.values(), ids=list(STORES))
def test_larger_trees_agree_with_the_rfc(make_store: Callable[[int], NodeStore], size: int) -> None:
    picked = random.Random(size).sample(range(1, size), 25)
    edges = [0, 1, 15, 16, 17, 255, 256, 257, 4095, 4096, size - 1, size]
    indices = sorted({*picked, *(edge for edge in edges if edge <= size)})
    check_tree_against_reference(MerkleTree(make_store(size), size), size, indices)


def test_small_trees_never_read_stored_nodes() -> None:
    for size in range(1, 1 << STORED_LEVEL_STRIDE):
        store = ReferenceStore(size, node_limit=0)
        check_tree_against_reference(MerkleTree(store, size), size, range(size + 1))


def test_proofs_of_a_huge_tree_take_few_small_reads() -> None:
    size = (1 << 40) + 12_345
    bands = size.bit_length() // STORED_LEVEL_STRIDE + 1
    for index in [0, 1, 12_344, size // 3, size - 12_346, size - 1]:
        for call, reads_allowed in [
            (methodcaller("inclusion_proof", index), 2 * bands),
            (methodcaller("consistency_proof", index + 1), 2 * bands),
            (methodcaller("root"), bands),
        ]:
            store = SyntheticStore(size)
            call(MerkleTree(store, size))
            assert len(store.reads) <= reads_allowed, store.reads
            assert sum(stop - start for _, start, stop in store.reads) <= 32 * reads_allowed


def test_root_accumulator_matches_every_prefix() -> None:
    accumulator = RootAccumulator()
    assert (accumulator.size, accumulator.root()) == (0, EMPTY_ROOT)
    for size in range(1, 600):
        accumulator.push(REFERENCE.leaves[size - 1])
        assert accumulator.size == size
        assert accumulator.root() == REFERENCE.mth(0, size) == MerkleTree(STORE, size).root()
    with pytest.raises(ValueError, match="32"):
        accumulator.push(b"\x00" * 31)
    assert accumulator.size == 599


def brute_force_stored_nodes(old_size: int, new_size: int) -> list[tuple[int, int, bytes]]:
    return [
        (level, index, REFERENCE.mth(index << level, (index + 1) << level))
        for level in range(STORED_LEVEL_STRIDE, new_size.bit_length(), STORED_LEVEL_STRIDE)
        for index in range(old_size >> level, new_size >> level)
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, MAX_LEAVES).flatmap(
        lambda new: (
            st.tuples(st.integers(0, new), st.just(new))
            | st.tuples(st.integers(max(0, new - 40), new), st.just(new))
        )
    )
)
def test_new_stored_nodes_are_exactly_the_newly_completed_ones(sizes: tuple[int, int]) -> None:
    old_size, new_size = sizes
    store = ReferenceStore(new_size, node_limit=old_size)
    assert new_stored_nodes(store, old_size, new_size) == brute_force_stored_nodes(
        old_size, new_size
    )
    levels = [level for level, _, _ in store.reads]
    assert len(levels) == len(set(levels)), store.reads


def test_new_stored_nodes_refuses_a_shrinking_log() -> None:
    with pytest.raises(ValueError, match="larger"):
        new_stored_nodes(STORE, 20, 19)
    with pytest.raises(TypeError):
        new_stored_nodes(STORE, False, 19)
    assert new_stored_nodes(STORE, 17, 17) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 700), max_size=12))
def test_appending_in_chunks_stores_the_same_nodes(chunks: list[int]) -> None:
    store = MemoryNodeStore()
    for chunk in chunks:
        store.append(REFERENCE.leaves[store.size : store.size + chunk])
    size = store.size
    assert store.leaf_hashes(0, size) == STORE.leaf_hashes(0, size)
    for level in range(STORED_LEVEL_STRIDE, 13, STORED_LEVEL_STRIDE):
        count = size >> level
        assert store.stored_nodes(level, 0, count) == STORE.stored_nodes(level, 0, count)
        with pytest.raises(ValueError, match="outside"):
            store.stored_nodes(level, 0, count + 1)


def test_memory_store_refuses_bad_input() -> None:
    store = MemoryNodeStore()
    with pytest.raises(ValueError, match="leaf_hashes"):
        store.append([sha256(b"a"), b"short"])
    assert store.size == 0
    store.append(REFERENCE.leaves[:20])
    with pytest.raises(ValueError, match="outside"):
        store.leaf_hashes(0, 21)
    with pytest.raises(ValueError, match="stored level"):
        store.stored_nodes(3, 0, 1)


def test_tree_refuses_bad_arguments() -> None:
    tree = MerkleTree(STORE, 10)
    with pytest.raises(ValueError, match="not in a tree"):
        tree.inclusion_proof(10)
    with pytest.raises(TypeError):
        tree.inclusion_proof(True)
    for old_size in [0, 11]:
        with pytest.raises(ValueError, match=r"1\.\.10"):
            tree.consistency_proof(old_size)
    assert tree.consistency_proof(10) == []
    with pytest.raises(ValueError, match="negative"):
        MerkleTree(STORE, -1)
    with pytest.raises(ValueError, match="outside the 5 leaves"):
        MerkleTree(exact_memory_store(5), 6).root()


class ForgetfulStore:
    """Answers every range read with one hash too few, as a buggy query would."""

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        return REFERENCE.leaves[start : stop - 1]

    def stored_nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        return STORE.stored_nodes(level, start, stop - 1)


def test_a_short_answer_from_the_store_is_an_error_not_a_root() -> None:
    for size in [1, 5, 16, 300]:
        with pytest.raises(ValueError, match="store returned"):
            MerkleTree(ForgetfulStore(), size).root()
    with pytest.raises(ValueError, match="store returned"):
        MerkleTree(ForgetfulStore(), 300).inclusion_proof(7)
    with pytest.raises(ValueError, match="store returned"):
        new_stored_nodes(ForgetfulStore(), 0, 300)


# Tampering. The tree size is not hashed into the root (RFC 9162 binds it by signing the
# checkpoint), so a changed size whose proof has exactly the same shape is indistinguishable
# and accepted; every other change must be refused.

HUGE_SIZES = [0, 2**63, 2**64 - 1, 2**64, 10**30]
sizes = st.integers(1, 300) | st.integers(4090, MAX_LEAVES)


def assert_inclusion_tamperings_refused(
    index: int, size: int, path: list[bytes], draw: Callable[[st.SearchStrategy[int]], int]
) -> None:
    leaf, root = REFERENCE.leaves[index], REFERENCE.mth(0, size)
    verify_inclusion(leaf, index, size, path, root)

    def bad(leaf: Any = leaf, index: Any = index, size: Any = size, path: Any = path) -> None:
        assert refused(verify_inclusion, leaf, index, size, path, root)

    def bad_root(root: Any) -> None:
        assert refused(verify_inclusion, leaf, index, size, path, root)

    bit = draw(st.integers(0, 8 * HASH_SIZE - 1))
    bad(leaf=flip(leaf, bit))
    bad_root(flip(root, bit))
    bad_root(REFERENCE.mth(0, size - 1))
    bad_root(root[:-1])
    bad(leaf=REFERENCE.leaves[(index + 1) % MAX_LEAVES])
    if path:
        position = draw(st.integers(0, len(path) - 1))
        changed = list(path)
        changed[position] = flip(changed[position], bit)
        bad(path=changed)
        bad(path=path[:position] + path[position + 1 :])
        bad(path=[*path[:position], path[position], *path[position:]])
        other = draw(st.integers(0, len(path) - 1))
        if path[other] != path[position]:
            swapped = list(path)
            swapped[position], swapped[other] = swapped[other], swapped[position]
            bad(path=swapped)
        bad(path=[*path[:position], path[position][:-1], *path[position + 1 :]])
        bad(path=[*path[:position], bytearray(path[position]), *path[position + 1 :]])
        bad(path=b"".join(path))
        bad(path=[*path[:position], path[position].hex(), *path[position + 1 :]])
    bad(path=[*path, draw(st.sampled_from([root, leaf, sha256(b"x"), EMPTY_ROOT]))])
    bad(path=[sha256(b"x"), *path])
    if list(reversed(path)) != path:
        bad(path=list(reversed(path)))
    other_index = draw(st.integers(0, size + 2))
    if other_index != index:
        bad(index=other_index)
    bad(index=size)
    bad(index=-1)
    bad(size=index)
    bad(index=float(index))
    bad(size=str(size))
    bad(leaf=leaf + b"\x00")
    bad(leaf=bytearray(leaf))
    shape = path_shape(index, size)
    for other_size in {size - 1, size + 1, *HUGE_SIZES, draw(st.integers(1, 2**64))}:
        same_shape = index < other_size < 2**64 and path_shape(index, other_size) == shape
        outcome = refused(verify_inclusion, leaf, index, other_size, path, root)
        assert outcome is not same_shape, (index, size, other_size)


@settings(max_examples=300, deadline=None)
@given(sizes.flatmap(lambda size: st.tuples(st.integers(0, size - 1), st.just(size))), st.data())
def test_inclusion_proofs_verify_and_tampered_ones_do_not(
    case: tuple[int, int], data: st.DataObject
) -> None:
    index, size = case
    path = MerkleTree(STORE, size).inclusion_proof(index)
    assert_inclusion_tamperings_refused(index, size, path, data.draw)


def test_every_bit_of_an_inclusion_proof_matters() -> None:
    index, size = 6, 13
    leaf, root = REFERENCE.leaves[index], REFERENCE.mth(0, size)
    path = MerkleTree(STORE, size).inclusion_proof(index)
    assert len(path) == 4
    for bit in range(8 * HASH_SIZE):
        assert refused(verify_inclusion, flip(leaf, bit), index, size, path, root)
        assert refused(verify_inclusion, leaf, index, size, path, flip(root, bit))
        for position in range(len(path)):
            changed = list(path)
            changed[position] = flip(changed[position], bit)
            assert refused(verify_inclusion, leaf, index, size, changed, root)


def assert_consistency_tamperings_refused(
    old_size: int, size: int, proof: list[bytes], draw: Callable[[st.SearchStrategy[int]], int]
) -> None:
    old_root, root = REFERENCE.mth(0, old_size), REFERENCE.mth(0, size)
    verify_consistency(old_size, size, old_root, root, proof)

    def bad(
        old_size: Any = old_size,
        size: Any = size,
        old_root: Any = old_root,
        root: Any = root,
        proof: Any = proof,
    ) -> None:
        assert refused(verify_consistency, old_size, size, old_root, root, proof)

    bit = draw(st.integers(0, 8 * HASH_SIZE - 1))
    bad(old_root=flip(old_root, bit))
    bad(root=flip(root, bit))
    bad(old_root=old_root[:-1])
    bad(root=bytearray(root))
    bad(old_size=size + 1)
    bad(size=old_size - 1)
    bad(old_size=-1)
    bad(old_size=float(old_size))
    bad(size=str(size))
    bad(proof=[*proof, draw(st.sampled_from([root, old_root, sha256(b"x"), EMPTY_ROOT]))])
    if not proof:
        # Another tree's root (one leaf fewer, or two for a one-leaf tree): the reference
        # holds MAX_LEAVES leaves, so "one more" would not exist at the largest size.
        bad(old_root=REFERENCE.mth(0, old_size - 1 if old_size > 1 else 2))
        return
    bad(old_root=root, root=old_root)
    bad(proof=[])
    bad(proof=[old_root, *proof])
    bad(proof=b"".join(proof))
    position = draw(st.integers(0, len(proof) - 1))
    changed = list(proof)
    changed[position] = flip(changed[position], bit)
    bad(proof=changed)
    bad(proof=proof[:position] + proof[position + 1 :])
    bad(proof=[*proof[:position], proof[position], *proof[position:]])
    bad(proof=[*proof[:position], proof[position][:16], *proof[position + 1 :]])
    other = draw(st.integers(0, len(proof) - 1))
    if proof[other] != proof[position]:
        swapped = list(proof)
        swapped[position], swapped[other] = swapped[other], swapped[position]
        bad(proof=swapped)
    shape = proof_shape(old_size, size)
    for other_old in {0, 1, old_size - 1, old_size + 1, size, draw(st.integers(0, size))}:
        same_shape = 0 < other_old < size and proof_shape(other_old, size) == shape
        outcome = refused(verify_consistency, other_old, size, old_root, root, proof)
        assert outcome is not same_shape, (old_size, other_old, size)
    for other_size in {size - 1, size + 1, *HUGE_SIZES, draw(st.integers(1, 2**64))}:
        same_shape = old_size < other_size < 2**64 and proof_shape(old_size, other_size) == shape
        outcome = refused(verify_consistency, old_size, other_size, old_root, root, proof)
        assert outcome is not same_shape, (old_size, size, other_size)


@settings(max_examples=300, deadline=None)
@given(sizes.flatmap(lambda size: st.tuples(st.integers(1, size), st.just(size))), st.data())
def test_consistency_proofs_verify_and_tampered_ones_do_not(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old_size, size = case
    proof = MerkleTree(STORE, size).consistency_proof(old_size)
    assert_consistency_tamperings_refused(old_size, size, proof, data.draw)


def test_the_empty_tree_is_consistent_with_every_tree_and_only_with_an_empty_proof() -> None:
    root = REFERENCE.mth(0, 5)
    verify_consistency(0, 5, EMPTY_ROOT, root, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert refused(verify_consistency, 0, 5, EMPTY_ROOT, root, [root])
    assert refused(verify_consistency, 0, 5, root, root, [])
    assert refused(verify_consistency, 0, 0, EMPTY_ROOT, root, [])
    assert refused(verify_consistency, 5, 0, root, EMPTY_ROOT, [])
    assert refused(verify_consistency, 5, 5, root, flip(root, 0), [])
    assert refused(verify_inclusion, EMPTY_ROOT, 0, 0, [], EMPTY_ROOT)


def test_sizes_must_be_ints_not_bools() -> None:
    one, two = REFERENCE.leaves[:2]
    root = node_hash(one, two)
    verify_inclusion(two, 1, 2, [one], root)
    verify_consistency(1, 2, one, root, [two])
    verify_inclusion(one, 0, 1, [], one)
    for index, size in [(True, 2), (1, 2.0), (1.0, 2)]:
        with pytest.raises(ProofError, match="must be an int"):
            verify_inclusion(two, index, size, [one], root)  # type: ignore[arg-type]
    for old_size, size in [(True, 2), (1, 2.0), (1, 2**70)]:
        with pytest.raises(ProofError, match=r"must be an int|outside"):
            verify_consistency(old_size, size, one, root, [two])  # type: ignore[arg-type]
    with pytest.raises(ProofError, match="tree_size must be an int, not bool"):
        verify_inclusion(one, 0, True, [], one)
    with pytest.raises(ProofError, match="index must be an int, not bool"):
        verify_inclusion(one, False, 1, [], one)


def test_refusals_name_their_reason() -> None:
    path = MerkleTree(STORE, 8).inclusion_proof(3)
    leaf, root = REFERENCE.leaves[3], REFERENCE.mth(0, 8)
    with pytest.raises(ProofError, match=r"has 4 hashes.*needs exactly 3"):
        verify_inclusion(leaf, 3, 8, [*path, root], root)
    with pytest.raises(ProofError, match=r"proof\[1\] is not a 32-byte hash"):
        verify_inclusion(leaf, 3, 8, [path[0], path[1][:5], path[2]], root)
    with pytest.raises(ProofError, match="does not lead to the root"):
        verify_inclusion(leaf, 3, 8, list(reversed(path)), root)
    proof = MerkleTree(STORE, 7).consistency_proof(5)
    with pytest.raises(ProofError, match="root at size 5"):
        verify_consistency(5, 7, REFERENCE.mth(0, 4), REFERENCE.mth(0, 7), proof)
