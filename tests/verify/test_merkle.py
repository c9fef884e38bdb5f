"""otaudit_verify.merkle against the RFC 6962 definitions, written here straight from the RFC."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaudit_verify.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    TreeBuilder,
    TreeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_proof,
    root_from_range,
    root_of,
    root_of_packed,
    subtree_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

# --- the reference: RFC 6962 section 2.1, recursively, on ranges of a fixed list of leaves ---


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_split(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


MAX_LEAVES = 4096
LEAVES = [sha256(b"\x00" + f"event {i}".encode()) for i in range(MAX_LEAVES)]


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) of LEAVES."""
    n = hi - lo
    if n == 0:
        return sha256(b"")
    if n == 1:
        return LEAVES[lo]
    k = ref_split(n)
    return sha256(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi])."""
    n = hi - lo
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, lo, lo + k), ref_mth(lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b)."""
    n = hi - lo
    if m == n:
        return [] if b else [ref_mth(lo, hi)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), ref_mth(lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), ref_mth(lo, lo + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[0:n]) (0 < m < n)."""
    return ref_subproof(m, 0, n, True)


def _levels() -> list[list[bytes]]:
    levels = [LEAVES]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([sha256(b"\x01" + below[i] + below[i + 1]) for i in range(0, len(below), 2)])
    return levels


LEVELS = _levels()


def hash_at_for(size: int, calls: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    """A hash_at over the first `size` LEAVES that refuses subtrees outside the tree."""

    def hash_at(level: int, index: int) -> bytes:
        assert level >= 0 and index >= 0
        assert (index + 1) << level <= size, f"asked for ({level}, {index}) outside a tree of size {size}"
        if calls is not None:
            calls.append((level, index))
        return LEVELS[level][index]

    return hash_at


def flip(value: bytes, position: int = 0) -> bytes:
    out = bytearray(value)
    out[position % len(out)] ^= 0x01
    return bytes(out)


# --- a huge but consistent tree: every leaf is the same except a few -------------------------


class SparseTree:
    """Leaves all equal FILL but for `special`; complete subtree hashes are computed lazily."""

    FILL = sha256(b"\x00fill")

    def __init__(self, special: dict[int, bytes]) -> None:
        self.special = special
        self.keys = sorted(special)
        self.uniform = [self.FILL]
        for _ in range(64):
            self.uniform.append(sha256(b"\x01" + self.uniform[-1] + self.uniform[-1]))
        self.memo: dict[tuple[int, int], bytes] = {}

    def any_special(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_left(self.keys, lo)
        return i < len(self.keys) and self.keys[i] < hi

    def leaf(self, i: int) -> bytes:
        return self.special.get(i, self.FILL)

    def hash_at(self, level: int, index: int) -> bytes:
        lo = index << level
        if not self.any_special(lo, lo + (1 << level)):
            return self.uniform[level]
        if level == 0:
            return self.special[lo]
        key = (level, index)
        if key not in self.memo:
            self.memo[key] = node_hash(self.hash_at(level - 1, 2 * index), self.hash_at(level - 1, 2 * index + 1))
        return self.memo[key]

    def mth(self, lo: int, hi: int) -> bytes:
        """RFC 6962 MTH(D[lo:hi]); a run of FILL leaves of power-of-two length is looked up."""
        n = hi - lo
        if n == 0:
            return sha256(b"")
        if n == 1:
            return self.leaf(lo)
        if n & (n - 1) == 0 and not self.any_special(lo, hi):
            return self.uniform[n.bit_length() - 1]
        k = ref_split(n)
        return sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = ref_split(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = ref_split(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


@st.composite
def sparse_trees(draw: st.DrawFn) -> tuple[SparseTree, int]:
    size = draw(st.integers(1, 2**48))
    indexes = draw(st.lists(st.integers(0, size - 1), max_size=4))
    indexes += [draw(st.integers(max(0, size - 300), size - 1))]
    special = {i: sha256(b"\x00" + i.to_bytes(8, "big")) for i in indexes}
    return SparseTree(special), size


# --- known vectors --------------------------------------------------------------------------

# The RFC 6962 test vectors of the Certificate Transparency implementations.
CT_ENTRIES = [
    bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
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
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
CT_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def test_hand_computed_small_trees() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert HASH_SIZE == 32
    a, b, c = (hashlib.sha256(b"\x00" + e).digest() for e in (b"a", b"b", b"c"))
    assert [leaf_hash(e) for e in (b"a", b"b", b"c")] == [a, b, c]
    ab = hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) == ab
    assert root_of([]) == EMPTY_ROOT
    assert root_of([a]) == a
    assert root_of([a, b]) == ab
    assert root_of([a, b, c]) == hashlib.sha256(b"\x01" + ab + c).digest()
    # Not the Bitcoin shape (duplicating c), nor a left-leaning split.
    assert root_of([a, b, c]) != hashlib.sha256(b"\x01" + ab + hashlib.sha256(b"\x01" + c + c).digest()).digest()
    assert root_of([a, b, c]) != hashlib.sha256(b"\x01" + a + hashlib.sha256(b"\x01" + b + c).digest()).digest()


def test_certificate_transparency_vectors() -> None:
    leaves = [leaf_hash(e) for e in CT_ENTRIES]
    builder = TreeBuilder()
    for size in range(len(leaves) + 1):
        assert root_of(leaves[:size]).hex() == CT_ROOTS[size]
        assert builder.root().hex() == CT_ROOTS[size]
        if size < len(leaves):
            builder.append(leaves[size])

    levels = [leaves]
    while len(levels[-1]) > 1:
        levels.append([node_hash(levels[-1][i], levels[-1][i + 1]) for i in range(0, len(levels[-1]), 2)])

    def hash_at(level: int, index: int) -> bytes:
        return levels[level][index]

    for index, size, proof in CT_INCLUSION:
        assert [h.hex() for h in inclusion_proof(index, size, hash_at)] == proof
        verify_inclusion(leaves[index], index, size, [bytes.fromhex(h) for h in proof], bytes.fromhex(CT_ROOTS[size]))
    for old, new, proof in CT_CONSISTENCY:
        assert [h.hex() for h in consistency_proof(old, new, hash_at)] == proof
        verify_consistency(
            old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), [bytes.fromhex(h) for h in proof]
        )


# --- roots ------------------------------------------------------------------------------------


def test_roots_match_the_rfc_for_sizes_up_to_300() -> None:
    builder = TreeBuilder()
    for size in range(301):
        expected = ref_mth(0, size)
        assert root_of(LEAVES[:size]) == expected
        assert tree_root(size, hash_at_for(size)) == expected
        assert builder.root() == expected
        assert builder.size == size
        assert len(builder.frontier) == size.bit_count()
        assert TreeBuilder(size, builder.frontier).root() == expected
        assert TreeBuilder.resume(size, hash_at_for(size)).frontier == builder.frontier
        builder.append(LEAVES[size])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, MAX_LEAVES))
def test_roots_match_the_rfc_for_larger_sizes(size: int) -> None:
    assert root_of(LEAVES[:size]) == ref_mth(0, size)
    assert tree_root(size, hash_at_for(size)) == ref_mth(0, size)
    builder = TreeBuilder()
    builder.extend(LEAVES[:size])
    assert builder.root() == ref_mth(0, size)


@settings(max_examples=40, deadline=None)
@given(sparse_trees())
def test_roots_of_huge_trees(tree_and_size: tuple[SparseTree, int]) -> None:
    tree, size = tree_and_size
    assert tree_root(size, tree.hash_at) == tree.mth(0, size)
    builder = TreeBuilder.resume(size, tree.hash_at)
    assert builder.root() == tree.mth(0, size)
    extra = [sha256(b"\x00" + bytes([i])) for i in range(3)]
    builder.extend(extra)
    tree.special.update({size + i: h for i, h in enumerate(extra)})
    tree.keys = sorted(tree.special)
    tree.memo.clear()
    assert builder.root() == tree.mth(0, size + 3)


def test_subtree_hash_of_every_aligned_range() -> None:
    for lo in range(0, 70):
        for hi in range(lo, 140):
            n = hi - lo
            if n and lo % (1 << (n.bit_length() - 1)):
                with pytest.raises(TreeError, match="multiple of"):
                    subtree_hash(lo, hi, hash_at_for(hi))
            else:
                assert subtree_hash(lo, hi, hash_at_for(hi)) == ref_mth(lo, hi)
    with pytest.raises(TreeError):
        subtree_hash(5, 4, hash_at_for(10))
    with pytest.raises(TreeError, match="bytes"):
        subtree_hash(0, 1, lambda level, index: b"short")


def test_root_of_a_million_leaves() -> None:
    n = (1 << 20) + 12345
    leaves = [i.to_bytes(32, "big") for i in range(n)]  # any 32-byte values will do
    root = root_of(leaves)
    k = 1 << 20  # the RFC's first split: a complete left subtree, the rest on the right
    assert root == node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def test_root_of_packed_hashes_is_the_root_of_the_same_hashes() -> None:
    packed = b"".join(LEAVES)
    for count in (1, 2, 4, 8, 16, 32, 64):
        for first in range(0, len(LEAVES) - count + 1, 7):
            expected = ref_mth(first, first + count)
            assert root_of_packed(packed, first * HASH_SIZE, count) == expected
            assert root_of_packed(bytearray(packed), first * HASH_SIZE, count) == expected
    for count, start in ((3, 0), (0, 0), (2, len(packed) - HASH_SIZE), (1, -1)):
        with pytest.raises(TreeError, match="not a power of two that fits"):
            root_of_packed(packed, start, count)


def test_bad_leaf_hashes_are_refused() -> None:
    with pytest.raises(TreeError, match="leaf hash 1 is 31 bytes"):
        root_of([LEAVES[0], LEAVES[1][:31]])
    builder = TreeBuilder()
    with pytest.raises(TreeError, match="33 bytes"):
        builder.append(LEAVES[0] + b"\x00")
    with pytest.raises(TreeError, match="frontier of 2 hashes"):
        TreeBuilder(3, [LEAVES[0]])
    with pytest.raises(TreeError, match="negative"):
        TreeBuilder(-1)


# --- inclusion proofs -----------------------------------------------------------------------


def test_inclusion_proofs_match_the_rfc_for_sizes_up_to_300() -> None:
    for size in range(1, 301):
        hash_at = hash_at_for(size)
        root = ref_mth(0, size)
        for index in range(size):
            proof = inclusion_proof(index, size, hash_at)
            assert proof == ref_path(index, 0, size), (index, size)
            verify_inclusion(LEAVES[index], index, size, proof, root)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_inclusion_proofs_in_huge_trees(data: st.DataObject) -> None:
    tree, size = data.draw(sparse_trees())
    index = data.draw(st.sampled_from([*tree.special, data.draw(st.integers(0, size - 1))]))
    proof = inclusion_proof(index, size, tree.hash_at)
    assert proof == tree.path(index, 0, size)
    root = tree.mth(0, size)
    verify_inclusion(tree.leaf(index), index, size, proof, root)
    if tree.leaf(index) != tree.FILL:
        with pytest.raises(ProofError):
            verify_inclusion(tree.FILL, index, size, proof, root)


def tampered_lists(proof: list[bytes], extra: bytes) -> list[list[bytes]]:
    """Every proof one change away: a flipped byte in each hash, each hash dropped, a hash added, two swapped."""
    out = []
    for i in range(len(proof)):
        for position in (0, 17, 31):
            out.append([*proof[:i], flip(proof[i], position), *proof[i + 1 :]])
        out.append(proof[:i] + proof[i + 1 :])
        out.append([*proof[:i], extra, *proof[i:]])
        if i + 1 < len(proof) and proof[i] != proof[i + 1]:
            out.append([*proof[:i], proof[i + 1], proof[i], *proof[i + 2 :]])
    out.append([*proof, extra])
    return out


def test_tampered_inclusion_proofs_fail() -> None:
    rng = random.Random(6962)
    for size in [*range(1, 70), 255, 256, 257, 1000, 1023, 1024, 1025, MAX_LEAVES]:
        root = ref_mth(0, size)
        hash_at = hash_at_for(size)
        for index in {0, size - 1, size // 2, rng.randrange(size)}:
            leaf = LEAVES[index]
            proof = inclusion_proof(index, size, hash_at)
            for bad in tampered_lists(proof, LEAVES[-1]):
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, index, size, bad, root)
            for bad_leaf in (flip(leaf), LEAVES[(index + 1) % MAX_LEAVES]):
                with pytest.raises(ProofError):
                    verify_inclusion(bad_leaf, index, size, proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, size, proof, flip(root, 5))
            for other in {index - 1, index + 1} & set(range(size)):
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, other, size, proof, root)
            # (The tree size is not always bound by the proof: leaf 0 of 3 and of 4 hash
            # the same way. The root, from a checkpoint that signs the size, binds it.)


def test_inclusion_errors_say_what_is_wrong() -> None:
    hash_at = hash_at_for(8)
    proof = inclusion_proof(3, 8, hash_at)
    root = ref_mth(0, 8)
    with pytest.raises(ProofError, match="has 2 hashes, leaf 3 of a tree of size 8 needs 3"):
        verify_inclusion(LEAVES[3], 3, 8, proof[:2], root)
    with pytest.raises(ProofError, match="has 4 hashes"):
        verify_inclusion(LEAVES[3], 3, 8, [*proof, root], root)
    with pytest.raises(ProofError, match="hash 1 is 31 bytes"):
        verify_inclusion(LEAVES[3], 3, 8, [proof[0], proof[1][:31], proof[2]], root)
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(LEAVES[4], 3, 8, proof, root)
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        verify_inclusion(LEAVES[3], 8, 8, proof, root)
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        verify_inclusion(LEAVES[3], -1, 8, proof, root)
    with pytest.raises(ProofError, match="root hash is 0 bytes"):
        verify_inclusion(LEAVES[3], 3, 8, proof, b"")
    with pytest.raises(ProofError, match="leaf hash is 5 bytes"):
        verify_inclusion(b"event", 3, 8, proof, root)
    with pytest.raises(TreeError, match="not in a tree of size 8"):
        inclusion_proof(8, 8, hash_at)
    # A tree of one leaf: the proof is empty and the root is the leaf.
    verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    with pytest.raises(ProofError):
        verify_inclusion(LEAVES[0], 0, 1, [LEAVES[1]], LEAVES[0])


# --- consistency proofs ---------------------------------------------------------------------


def test_consistency_proofs_match_the_rfc_for_sizes_up_to_300() -> None:
    for new in range(1, 301):
        hash_at = hash_at_for(new)
        new_root = ref_mth(0, new)
        for old in range(new + 1):
            proof = consistency_proof(old, new, hash_at)
            if old in (0, new):
                assert proof == []
            else:
                assert proof == ref_proof(old, new), (old, new)
            verify_consistency(old, new, ref_mth(0, old), new_root, proof)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_consistency_proofs_in_huge_trees(data: st.DataObject) -> None:
    tree, new = data.draw(sparse_trees())
    old = data.draw(st.sampled_from([k for k in [*tree.special, data.draw(st.integers(1, new))] if 0 < k <= new]))
    proof = consistency_proof(old, new, tree.hash_at)
    if old != new:
        assert proof == tree.subproof(old, 0, new, True)
    verify_consistency(old, new, tree.mth(0, old), tree.mth(0, new), proof)


def test_tampered_consistency_proofs_fail() -> None:
    rng = random.Random(9162)
    pairs = [(old, new) for new in range(2, 40) for old in range(1, new)]
    pairs += [(rng.randrange(1, new), new) for new in (255, 256, 257, 1000, 1024, 1025, MAX_LEAVES) for _ in range(5)]
    pairs += [(256, 257), (512, 1024), (1, MAX_LEAVES), (MAX_LEAVES - 1, MAX_LEAVES)]
    for old, new in pairs:
        proof = consistency_proof(old, new, hash_at_for(new))
        old_root, new_root = ref_mth(0, old), ref_mth(0, new)
        for bad in tampered_lists(proof, LEAVES[-1]):
            with pytest.raises(ProofError):
                verify_consistency(old, new, old_root, new_root, bad)
        with pytest.raises(ProofError):
            verify_consistency(old, new, flip(old_root), new_root, proof)
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, flip(new_root, 9), proof)
        with pytest.raises(ProofError):
            verify_consistency(old, new, new_root, old_root, proof)


def test_consistency_edge_cases() -> None:
    root5 = ref_mth(0, 5)
    verify_consistency(0, 5, EMPTY_ROOT, root5, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(5, 5, root5, root5, [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 5, EMPTY_ROOT, root5, [root5])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(5, 5, root5, root5, [root5])
    with pytest.raises(ProofError, match="not the root of the empty tree"):
        verify_consistency(0, 5, root5, root5, [])
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(5, 5, root5, ref_mth(0, 4), [])
    with pytest.raises(ProofError, match="cannot be a prefix"):
        verify_consistency(6, 5, root5, root5, [])
    with pytest.raises(ProofError, match="has 1 hashes, sizes 3 to 7 need 4"):
        verify_consistency(3, 7, ref_mth(0, 3), ref_mth(0, 7), [root5])
    with pytest.raises(ProofError, match="new root hash is 3 bytes"):
        verify_consistency(3, 7, ref_mth(0, 3), b"abc", [])
    with pytest.raises(ProofError, match="leads to old root"):
        proof = consistency_proof(3, 7, hash_at_for(7))
        verify_consistency(3, 7, ref_mth(0, 2), ref_mth(0, 7), proof)
    with pytest.raises(TreeError):
        consistency_proof(6, 5, hash_at_for(6))
    assert consistency_proof(0, 9, hash_at_for(9)) == []
    assert consistency_proof(9, 9, hash_at_for(9)) == []


# --- range proofs ---------------------------------------------------------------------------


def test_range_proof_example_from_the_docstring() -> None:
    proof = range_proof(2, 5, 7, hash_at_for(7))
    assert proof == [ref_mth(0, 2), ref_mth(5, 6), ref_mth(6, 7)]
    assert root_from_range(2, 5, 7, LEAVES[2:5], proof) == ref_mth(0, 7)
    assert range_proof(4, 7, 7, hash_at_for(7)) == [ref_mth(0, 4)]
    assert range_proof(0, 7, 7, hash_at_for(7)) == []


def test_range_proofs_for_every_range_of_small_trees() -> None:
    for size in range(1, 41):
        root = ref_mth(0, size)
        hash_at = hash_at_for(size)
        for lo in range(size):
            for hi in range(lo + 1, size + 1):
                proof = range_proof(lo, hi, size, hash_at)
                assert len(proof) <= 2 * size.bit_length()
                assert root_from_range(lo, hi, size, LEAVES[lo:hi], proof) == root
                if hi == lo + 1:  # the hashes of the inclusion proof, left to right
                    assert sorted(proof) == sorted(inclusion_proof(lo, size, hash_at))
                leaves = list(LEAVES[lo:hi])
                leaves[(lo * 7 + hi) % len(leaves)] = flip(leaves[(lo * 7 + hi) % len(leaves)])
                assert root_from_range(lo, hi, size, leaves, proof) != root
                if proof:
                    assert root_from_range(lo, hi, size, LEAVES[lo:hi], [flip(proof[0]), *proof[1:]]) != root


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_range_proofs_in_larger_trees(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_LEAVES))
    lo = data.draw(st.integers(0, size - 1))
    hi = data.draw(st.integers(lo + 1, min(size, lo + 600)))
    calls: list[tuple[int, int]] = []
    proof = range_proof(lo, hi, size, hash_at_for(size, calls))
    assert len(proof) <= 2 * size.bit_length()
    assert len(calls) <= 2 * size.bit_length() ** 2
    assert root_from_range(lo, hi, size, LEAVES[lo:hi], proof) == ref_mth(0, size)
    i = data.draw(st.integers(0, hi - lo - 1))
    leaves = list(LEAVES[lo:hi])
    leaves[i] = LEAVES[(lo + i + 1) % MAX_LEAVES]
    assert root_from_range(lo, hi, size, leaves, proof) != ref_mth(0, size)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_range_proofs_in_huge_trees(data: st.DataObject) -> None:
    tree, size = data.draw(sparse_trees())
    lo = data.draw(st.integers(0, size - 1))
    hi = data.draw(st.integers(lo + 1, min(size, lo + 50)))
    proof = range_proof(lo, hi, size, tree.hash_at)
    assert len(proof) <= 2 * size.bit_length()
    leaves = [tree.leaf(i) for i in range(lo, hi)]
    assert root_from_range(lo, hi, size, leaves, proof) == tree.mth(0, size)


def test_range_proof_errors() -> None:
    size, lo, hi = 100, 10, 37
    proof = range_proof(lo, hi, size, hash_at_for(size))
    leaves = LEAVES[lo:hi]
    with pytest.raises(ProofError, match="too few"):
        root_from_range(lo, hi, size, leaves, proof[:-1])
    with pytest.raises(ProofError, match=f"has {len(proof) + 1} hashes, \\[10, 37\\) in a tree of size 100 needs {len(proof)}"):
        root_from_range(lo, hi, size, leaves, [*proof, proof[0]])
    with pytest.raises(ProofError, match="range proof hash 0 is 31 bytes"):
        root_from_range(lo, hi, size, leaves, [proof[0][:31], *proof[1:]])
    with pytest.raises(ProofError, match="needs 27 leaf hashes, got 26"):
        root_from_range(lo, hi, size, leaves[1:], proof)
    with pytest.raises(ProofError, match="leaf hash 12 is 1 bytes"):
        root_from_range(lo, hi, size, [*leaves[:2], b"x", *leaves[3:]], proof)
    for bad_lo, bad_hi in ((5, 5), (-1, 3), (3, 101), (7, 6)):
        with pytest.raises(ProofError, match="not a non-empty range"):
            root_from_range(bad_lo, bad_hi, size, leaves, proof)
        with pytest.raises(TreeError, match="not a non-empty range"):
            range_proof(bad_lo, bad_hi, size, hash_at_for(size))
