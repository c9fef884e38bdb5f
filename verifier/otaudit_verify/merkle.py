"""RFC 6962 / RFC 9162 Merkle trees: hashes, inclusion, consistency and range proofs.

Each tenant's audit events are the leaves of one append-only Merkle tree, as in RFC 6962
section 2.1 (RFC 9162 section 2.1), with SHA-256:

- the hash of leaf entry ``d`` is ``SHA256(0x00 || d)``;
- an interior node is ``SHA256(0x01 || left || right)``;
- the Merkle Tree Hash of ``n`` leaves is ``MTH(D[0:n])``, where for ``n > 1`` the list
  is split at ``k``, the largest power of two smaller than ``n``:
  ``MTH(D[0:n]) = SHA256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``;
- the empty tree's hash is ``SHA256()`` (:data:`EMPTY_ROOT`).

Every function here but :func:`leaf_hash` works on *leaf hashes*, never on entries.

Functions that build proofs do not need the leaves: they take a :data:`HashAt`,
``hash_at(level, index)``, the hash of the complete subtree of ``2**level`` leaves
``[index * 2**level, (index + 1) * 2**level)`` (the tiles of :mod:`otaudit_verify.tiles`
store exactly these). Any ``MTH(D[lo:hi])`` is the right fold of the complete subtrees
of the binary decomposition of ``hi - lo`` (:func:`subtree_hash`), so a proof needs
O(log size) of them.

Proofs:

- inclusion (RFC 6962 2.1.1 ``PATH``): the sibling hashes from the leaf up to the root,
  checked with the algorithm of RFC 9162 2.1.3.2 (:func:`verify_inclusion`);
- consistency (RFC 6962 2.1.2 ``PROOF``): that the tree of ``old`` leaves is a prefix
  of the tree of ``new`` leaves, checked as in RFC 9162 2.1.4.2 (:func:`verify_consistency`);
- range (otaudit's own, :func:`range_proof`): that given leaf hashes are exactly leaves
  ``[lo, hi)`` of the tree.

:class:`TreeBuilder` adds leaves one at a time keeping only the right edge of the tree
(O(log n) hashes), for a verifier that streams millions of leaves.

Errors: a proof that is malformed or does not verify raises :class:`ProofError`;
meaningless arguments when building hashes or proofs (an index outside the tree, a hash
of the wrong length) raise :class:`TreeError`. Both are :class:`ValueError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "HashAt",
    "ProofError",
    "TreeBuilder",
    "TreeError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_proof",
    "root_from_range",
    "root_of",
    "root_of_packed",
    "subtree_hash",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Bytes in a SHA-256 hash."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""The root hash of the empty tree, ``SHA256()``."""

HashAt = Callable[[int, int], bytes]
"""hash_at(level, index): hash of the complete subtree of 2**level leaves [index*2**level, (index+1)*2**level)."""

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof that is malformed or does not verify; the message says which check failed."""


class TreeError(ValueError):
    """Arguments that name no tree, subtree or leaf (an index out of range, a hash of the wrong length)."""


def leaf_hash(entry: bytes) -> bytes:
    """The RFC 6962 hash of a leaf entry: ``SHA256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node: ``SHA256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``): where RFC 6962 splits ``n`` leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise TreeError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of ``leaves``, a sequence of *leaf hashes* (not entries).

    Iterative: hashes the nodes pairwise level by level, carrying an odd last node up
    unchanged, which gives RFC 6962's tree for every size. ``EMPTY_ROOT`` for no leaves.
    """
    level = list(leaves)
    for i, value in enumerate(level):
        if len(value) != HASH_SIZE:
            raise TreeError(f"leaf hash {i} is {len(value)} bytes, not {HASH_SIZE}")
    if not level:
        return EMPTY_ROOT
    sha256 = _sha256
    while len(level) > 1:
        odd = level[-1] if len(level) & 1 else None
        pairs = iter(level)
        level = [sha256(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=False)]
        if odd is not None:
            level.append(odd)
    return level[0]


def root_of_packed(data: bytes, start: int, count: int) -> bytes:
    """``root_of`` of the ``count`` hashes packed one after another in ``data`` from byte
    ``start`` (a tile's, say), ``count`` a power of two. The first level hashes each pair where
    it lies, with no copy of the hashes: this is most of the hashing in a proof from tiles."""
    if count < 1 or count & (count - 1) or start < 0 or start + count * HASH_SIZE > len(data):
        raise TreeError(f"{count} hashes from byte {start} of {len(data)}: not a power of two that fits")
    if count == 1:
        return bytes(data[start : start + HASH_SIZE])
    sha256 = _sha256
    view = memoryview(data)
    pair = 2 * HASH_SIZE
    level = [sha256(b"\x01" + view[j : j + pair]).digest() for j in range(start, start + count * HASH_SIZE, pair)]
    while len(level) > 1:
        pairs = iter(level)
        level = [sha256(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=True)]
    return level[0]


def subtree_hash(lo: int, hi: int, hash_at: HashAt) -> bytes:
    """``MTH(D[lo:hi])``, from the complete subtrees of the binary decomposition of ``hi - lo``.

    ``lo`` must be a multiple of the largest power of two not above ``hi - lo`` (true of
    every node of RFC 6962's recursion) so that those subtrees are aligned. Uses one
    ``hash_at`` call per set bit of ``hi - lo``. ``EMPTY_ROOT`` when ``lo == hi``.
    """
    if lo < 0 or hi < lo:
        raise TreeError(f"[{lo}, {hi}) is not a range of leaves")
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    top = n.bit_length() - 1
    if lo & ((1 << top) - 1):
        raise TreeError(f"[{lo}, {hi}) does not start at a multiple of {1 << top}, so it is not built of aligned subtrees")
    hashes: list[bytes] = []
    start = lo
    for level in range(top, -1, -1):
        if n >> level & 1:
            value = hash_at(level, start >> level)
            _check_hash(value, f"hash_at({level}, {start >> level})")
            hashes.append(value)
            start += 1 << level
    result = hashes.pop()
    while hashes:
        result = node_hash(hashes.pop(), result)
    return result


def tree_root(size: int, hash_at: HashAt) -> bytes:
    """The root hash of the tree of the first ``size`` leaves."""
    return subtree_hash(0, size, hash_at)


def inclusion_proof(index: int, size: int, hash_at: HashAt) -> list[bytes]:
    """RFC 6962 2.1.1 ``PATH(index, D[0:size])``: sibling hashes, the leaf's sibling first."""
    if not 0 <= index < size:
        raise TreeError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(subtree_hash(mid, hi, hash_at))
            hi = mid
        else:
            path.append(subtree_hash(lo, mid, hash_at))
            lo = mid
    path.reverse()
    return path


def consistency_proof(old: int, new: int, hash_at: HashAt) -> list[bytes]:
    """RFC 6962 2.1.2 ``PROOF(old, D[0:new])``: shows the tree of ``old`` leaves is a prefix of the one of ``new``.

    Empty when ``old == 0`` or ``old == new``.
    """
    if not 0 <= old <= new:
        raise TreeError(f"no consistency proof from size {old} to size {new}")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, new, old, True
    # SUBPROOF(m, D[lo:hi], whole), unrolled: each step appends the hash that the
    # recursion would append after the inner SUBPROOF, so the list is reversed at the end.
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(subtree_hash(lo + k, hi, hash_at))
            hi = lo + k
        else:
            proof.append(subtree_hash(lo, lo + k, hash_at))
            lo += k
            m -= k
            whole = False
    if not whole:
        proof.append(subtree_hash(lo, hi, hash_at))
    proof.reverse()
    return proof


def _inclusion_length(index: int, size: int) -> int:
    """How many hashes ``PATH(index, D[0:size])`` has."""
    count, lo, hi = 0, 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        lo, hi = (lo, mid) if index < mid else (mid, hi)
        count += 1
    return count


def _consistency_length(old: int, new: int) -> int:
    """How many hashes ``PROOF(old, D[0:new])`` has (``0 < old < new``)."""
    count, lo, hi, m, whole = 0, 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            hi = lo + k
        else:
            lo, m, whole = lo + k, m - k, False
        count += 1
    return count + (0 if whole else 1)


def _check_proof_hashes(proof: Sequence[bytes], what: str) -> None:
    for i, value in enumerate(proof):
        if len(value) != HASH_SIZE:
            raise ProofError(f"{what} hash {i} is {len(value)} bytes, not {HASH_SIZE}")


def _check_root(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that leaf hash ``leaf`` is leaf ``index`` of the tree of ``size`` whose root is ``root``.

    ``proof`` is an RFC 6962 ``PATH``; the check is RFC 9162 2.1.3.2. Raises :class:`ProofError`.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    _check_root(leaf, "leaf hash")
    _check_root(root, "root hash")
    _check_proof_hashes(proof, "inclusion proof")
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, leaf {index} of a tree of size {size} needs {expected}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofError("inclusion proof has more hashes than the tree has levels")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofError("inclusion proof has fewer hashes than the tree has levels")
    if r != root:
        raise ProofError(f"inclusion proof of leaf {index} leads to root {r.hex()}, not the expected {root.hex()}")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree of ``old`` leaves with root ``old_root`` is a prefix of the tree of ``new`` leaves with root ``new_root``.

    ``proof`` is an RFC 6962 ``PROOF``; the check is RFC 9162 2.1.4.2. When ``old == new``
    the proof must be empty and the roots equal; when ``old == 0`` the proof must be
    empty and ``old_root`` must be :data:`EMPTY_ROOT`. Raises :class:`ProofError`.
    """
    if not 0 <= old <= new:
        raise ProofError(f"a tree of size {old} cannot be a prefix of a tree of size {new}")
    _check_root(old_root, "old root hash")
    _check_root(new_root, "new root hash")
    _check_proof_hashes(proof, "consistency proof")
    if old in (0, new):
        if proof:
            raise ProofError(f"consistency proof from size {old} to size {new} must be empty, it has {len(proof)} hashes")
        if old == 0 and old_root != EMPTY_ROOT:
            raise ProofError(f"old root {old_root.hex()} is not the root of the empty tree")
        if old == new and old_root != new_root:
            raise ProofError(f"trees of the same size {old} have different roots {old_root.hex()} and {new_root.hex()}")
        return
    expected = _consistency_length(old, new)
    if len(proof) != expected:
        raise ProofError(f"consistency proof has {len(proof)} hashes, sizes {old} to {new} need {expected}")
    path = list(proof)
    if old & (old - 1) == 0:  # an exact power of two: the old tree is a node of the new one
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofError("consistency proof has more hashes than the tree has levels")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofError("consistency proof has fewer hashes than the tree has levels")
    if fr != old_root:
        raise ProofError(f"consistency proof leads to old root {fr.hex()}, not the expected {old_root.hex()}")
    if sr != new_root:
        raise ProofError(f"consistency proof leads to new root {sr.hex()}, not the expected {new_root.hex()}")


def range_proof(lo: int, hi: int, size: int, hash_at: HashAt) -> list[bytes]:
    """The hashes proving that leaves ``[lo, hi)`` are part of the tree of ``size`` (``0 <= lo < hi <= size``).

    otaudit's range proof. Recurse over ``[0, size)`` as RFC 6962 does, splitting a node
    of ``n > 1`` leaves at the largest power of two below ``n``. A node that lies inside
    ``[lo, hi)`` is computed from the leaves; a node disjoint from ``[lo, hi)`` (whose
    parent is not) contributes its hash ``MTH`` to the proof, whole, even when it is not a
    power of two wide (the right edge); any other node is split. The proof is those
    hashes in left-to-right order of their leaves: the maximal subtrees of the RFC 6962
    tree outside the range. It has at most two hashes per level, O(log size).

    Example, ``size = 7``, ``[lo, hi) = [2, 5)``: the tree splits ``[0, 7)`` into
    ``[0, 4)`` and ``[4, 7)``, ``[0, 4)`` into ``[0, 2)`` (outside) and ``[2, 4)``
    (inside), ``[4, 7)`` into ``[4, 6)`` and ``[6, 7)`` (outside), ``[4, 6)`` into
    ``[4, 5)`` (inside) and ``[5, 6)`` (outside). The proof is
    ``[MTH(D[0:2]), MTH(D[5:6]), MTH(D[6:7])]``. For one leaf (``hi == lo + 1``) it
    holds the hashes of its inclusion proof, in left-to-right order instead of bottom-up;
    for ``[0, size)`` it is empty.
    """
    if not 0 <= lo < hi <= size:
        raise TreeError(f"[{lo}, {hi}) is not a non-empty range of leaves of a tree of size {size}")
    proof: list[bytes] = []

    def walk(a: int, b: int) -> None:
        if b <= lo or a >= hi:
            proof.append(subtree_hash(a, b, hash_at))
        elif not (lo <= a and b <= hi):
            mid = a + _split(b - a)
            walk(a, mid)
            walk(mid, b)

    walk(0, size)
    return proof


def root_from_range(lo: int, hi: int, size: int, leaves: Sequence[bytes], proof: Sequence[bytes]) -> bytes:
    """The root of the tree of ``size`` whose leaves ``[lo, hi)`` are the leaf hashes ``leaves``, given a :func:`range_proof`.

    The caller compares the result with a trusted root (a checkpoint). Raises
    :class:`ProofError` if the range is not in the tree, ``leaves`` does not hold
    ``hi - lo`` hashes, the proof has too few or too many hashes, or a hash is not 32
    bytes. O(hi - lo + log size) work.
    """
    if not 0 <= lo < hi <= size:
        raise ProofError(f"[{lo}, {hi}) is not a non-empty range of leaves of a tree of size {size}")
    if len(leaves) != hi - lo:
        raise ProofError(f"range [{lo}, {hi}) needs {hi - lo} leaf hashes, got {len(leaves)}")
    for i, value in enumerate(leaves):
        if len(value) != HASH_SIZE:
            raise ProofError(f"leaf hash {lo + i} is {len(value)} bytes, not {HASH_SIZE}")
    _check_proof_hashes(proof, "range proof")
    used = 0

    def walk(a: int, b: int) -> bytes:
        nonlocal used
        if b <= lo or a >= hi:
            if used == len(proof):
                raise ProofError(f"range proof has {len(proof)} hashes, too few for [{lo}, {hi}) in a tree of size {size}")
            used += 1
            return proof[used - 1]
        if lo <= a and b <= hi:
            return root_of(leaves[a - lo : b - lo])
        mid = a + _split(b - a)
        left = walk(a, mid)
        return node_hash(left, walk(mid, b))

    root = walk(0, size)
    if used != len(proof):
        raise ProofError(f"range proof has {len(proof)} hashes, [{lo}, {hi}) in a tree of size {size} needs {used}")
    return root


class TreeBuilder:
    """A Merkle tree grown one leaf hash at a time, keeping only its right edge.

    The *frontier* is the hashes of the complete subtrees that the binary decomposition
    of ``size`` splits the leaves into, largest (leftmost) first: one per set bit of
    ``size``, O(log n) hashes. ``root()`` folds them right to left, which is RFC 6962's
    MTH. Start from an existing tree with ``TreeBuilder(size, frontier)`` or
    :meth:`resume`.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise TreeError(f"tree size {size} is negative")
        if len(frontier) != size.bit_count():
            raise TreeError(f"a tree of size {size} has a frontier of {size.bit_count()} hashes, got {len(frontier)}")
        for i, value in enumerate(frontier):
            _check_hash(value, f"frontier hash {i}")
        self._size = size
        self._frontier = list(frontier)

    @classmethod
    def resume(cls, size: int, hash_at: HashAt) -> TreeBuilder:
        """A builder for the existing tree of ``size``, its frontier read with ``hash_at``."""
        if size < 0:
            raise TreeError(f"tree size {size} is negative")
        frontier: list[bytes] = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                value = hash_at(level, start >> level)
                _check_hash(value, f"hash_at({level}, {start >> level})")
                frontier.append(value)
                start += 1 << level
        return cls(size, frontier)

    @property
    def size(self) -> int:
        """How many leaves the tree has."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """The complete-subtree hashes of the right edge, largest (leftmost) first."""
        return tuple(self._frontier)

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash (not an entry: see :func:`leaf_hash`)."""
        _check_hash(leaf, "leaf hash")
        value, n, frontier = leaf, self._size, self._frontier
        while n & 1:
            value = node_hash(frontier.pop(), value)
            n >>= 1
        frontier.append(value)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Add leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The root hash of the tree so far (``EMPTY_ROOT`` when empty)."""
        if not self._frontier:
            return EMPTY_ROOT
        result = self._frontier[-1]
        for value in reversed(self._frontier[:-1]):
            result = node_hash(value, result)
        return result
