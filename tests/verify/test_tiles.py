"""otaudit_verify.tiles: C2SP tlog-tiles paths, appending, and reading hashes back."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaudit_verify.merkle import consistency_proof, inclusion_proof, range_proof, root_of, tree_root, verify_inclusion
from otaudit_verify.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileError,
    append_leaves,
    hash_reader,
    parse_tile_path,
    partial_tiles,
    tile_count,
    tile_path,
    tiles_for,
    tiles_for_consistency,
    tiles_for_proof,
    tiles_for_range,
    tiles_for_root,
)

Tiles = dict[tuple[int, int], bytes]

N = 70_000  # the spec's example size: tiles at three levels
LEAVES = [hashlib.sha256(b"\x00" + i.to_bytes(4, "big")).digest() for i in range(N)]


def scratch_tiles(leaves: list[bytes]) -> Tiles:
    """Every tile of the tree of `leaves`, straight from the spec's formula.

    Hash i of tile n at level l is MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l]).
    """
    tiles: Tiles = {}
    level = 0
    while len(leaves) >> (8 * level):
        span = 256**level
        hashes = [root_of(leaves[i * span : (i + 1) * span]) for i in range(len(leaves) // span)]
        for n in range(0, len(hashes), 256):
            tiles[(level, n // 256)] = b"".join(hashes[n : n + 256])
        level += 1
    return tiles


SCRATCH = scratch_tiles(LEAVES)


def grow(sizes: list[int]) -> Tiles:
    """Append LEAVES in chunks ending at each of `sizes`, with append_leaves, keeping every tile."""
    store: Tiles = {}
    size = 0
    for new_size in sizes:
        right = {level: store[(level, index)] for level, index, _ in partial_tiles(size)}
        changed = append_leaves(size, right, LEAVES[size:new_size])
        for key, value in changed.items():
            assert store.get(key) != value, f"tile {key} returned but unchanged"
            assert len(value) % 32 == 0 and 0 < len(value) <= 256 * 32
        store.update(changed)
        size = new_size
        assert {(level, index): 32 * width for level, index, width in tiles_for(size)} == {k: len(v) for k, v in store.items()}
    return store


def reader_for(size: int, tiles: Tiles, calls: list[tuple[int, int, int]] | None = None) -> Callable[[int, int, int], bytes]:
    """A read_tile over `tiles` that checks it is asked only for tiles a tree of `size` has, at their width there."""
    existing = set(tiles_for(size))

    def read_tile(level: int, index: int, width: int) -> bytes:
        assert (level, index, width) in existing, f"tile {(level, index, width)} does not exist at size {size}"
        if calls is not None:
            calls.append((level, index, width))
        return tiles[(level, index)]  # possibly wider than `width`: a tile that grew since

    return read_tile


# --- paths ----------------------------------------------------------------------------------


def test_paths_from_the_spec() -> None:
    assert TILE_HEIGHT == 8 and TILE_WIDTH == 256
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(0, 0) == "tile/0/000"
    assert tile_path(1, 5, 17) == "tile/1/005.p/17"
    assert tile_path(2, 1000) == "tile/2/x001/000"
    assert tile_path(63, 999, 255) == "tile/63/999.p/255"
    assert tile_path(-1, 1234067, 7) == "tile/entries/x001/x234/067.p/7"
    assert tile_path(-1, 273, 112) == "tile/entries/273.p/112"
    assert tile_path(0, 10**9) == "tile/0/x001/x000/x000/000"
    assert parse_tile_path("tile/0/x001/x234/067") == (0, 1234067, 256)
    assert parse_tile_path("tile/entries/x001/x234/067.p/7") == (-1, 1234067, 7)
    assert parse_tile_path("tile/1/005.p/17") == (1, 5, 17)
    assert parse_tile_path("tile/63/999") == (63, 999, 256)


@settings(max_examples=200, deadline=None)
@given(st.integers(-1, 63), st.integers(0, 2**64), st.integers(1, 256))
def test_paths_round_trip(level: int, index: int, width: int) -> None:
    path = tile_path(level, index, width)
    assert parse_tile_path(path) == (level, index, width)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("tile/00/000", "level"),
        ("tile/01/000", "level"),
        ("tile/64/000", "above 63"),
        ("tile/-1/000", "level"),
        ("tile/+1/000", "level"),
        ("tile/x/000", "level"),
        ("tile/١/000", "level"),
        ("tile/Entries/000", "level"),
        ("tile/0/00", "three digits"),
        ("tile/0/0000", "three digits"),
        ("tile/0/0", "three digits"),
        ("tile/0/x001", "three digits"),
        ("tile/0/x001/x234/x067", "three digits"),
        ("tile/0/001/234/067", "'x' and three digits"),
        ("tile/0/x01/234", "'x' and three digits"),
        ("tile/0/X001/234", "'x' and three digits"),
        ("tile/0/x000/001", "zero group"),
        ("tile/0/x000/x001/000", "zero group"),
        ("tile/0/٠٠١", "three digits"),
        ("tile/0/+01", "three digits"),
        ("tile/0/000.p/0", "partial width"),
        ("tile/0/000.p/256", "partial width"),
        ("tile/0/000.p/07", "partial width"),
        ("tile/0/000.p/", "partial width"),
        ("tile/0/000.p/x5", "partial width"),
        ("tile/0/000.p", "three digits"),
        ("tile/0/000.p/5/6", "'x' and three digits"),
        ("tile/0/.p/5", "three digits"),
        ("tile/0/000/", "three digits"),
        ("tile/0//000", "'x' and three digits"),
        ("tile/0", "form"),
        ("tile/entries", "form"),
        ("/tile/0/000", "form"),
        ("tiles/0/000", "form"),
        ("", "form"),
    ],
)
def test_bad_paths_are_refused(path: str, problem: str) -> None:
    with pytest.raises(TileError, match=problem):
        parse_tile_path(path)


def test_bad_coordinates_are_refused() -> None:
    for level, index, width in ((64, 0, 256), (-2, 0, 256), (0, -1, 256), (0, 0, 0), (0, 0, 257)):
        with pytest.raises(TileError):
            tile_path(level, index, width)


# --- tree shape -----------------------------------------------------------------------------


def test_tile_shape_examples_from_the_spec() -> None:
    assert partial_tiles(70_000) == [(0, 273, 112), (1, 1, 17), (2, 0, 1)]
    tiles = tiles_for(70_000)
    assert [t for t in tiles if t[0] == 0 and t[2] == 256] == [(0, i, 256) for i in range(273)]
    assert [t for t in tiles if t[0] > 0 or t[2] < 256] == [(0, 273, 112), (1, 0, 256), (1, 1, 17), (2, 0, 1)]
    assert partial_tiles(256) == [(1, 0, 1)]
    assert tiles_for(256) == [(0, 0, 256), (1, 0, 1)]
    assert tiles_for(0) == [] and partial_tiles(0) == []
    assert tiles_for(1) == [(0, 0, 1)]
    assert partial_tiles(65536) == [(2, 0, 1)]
    assert [tile_count(70_000, level) for level in range(4)] == [70_000, 273, 1, 0]
    with pytest.raises(TileError):
        tile_count(-1, 0)
    with pytest.raises(TileError):
        tile_count(5, -1)
    with pytest.raises(TileError):
        tiles_for(-1)


def test_tiles_of_the_scratch_tree() -> None:
    assert {(level, index): 32 * width for level, index, width in tiles_for(N)} == {k: len(v) for k, v in SCRATCH.items()}


# --- appending ------------------------------------------------------------------------------


def test_append_in_random_chunks_equals_building_from_scratch() -> None:
    rng = random.Random(256)
    sizes = []
    size = 0
    while size < N:
        size = min(N, size + rng.choice([1, 2, 3, 255, 256, 257, rng.randrange(1, 70), rng.randrange(1, 9000)]))
        sizes.append(size)
    assert grow(sizes) == SCRATCH


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=1, max_size=12))
def test_append_in_any_chunks_matches_the_spec(chunks: list[int]) -> None:
    sizes = []
    size = 0
    for chunk in chunks:
        size += chunk
        sizes.append(size)
    store = grow(sizes)
    assert store == scratch_tiles(LEAVES[:size])


def test_append_refuses_wrong_right_edges() -> None:
    size = 70_000
    right = {level: SCRATCH[(level, index)][: 32 * width] for level, index, width in partial_tiles(size)}
    new = LEAVES[:3]
    assert append_leaves(size, right, []) == {}
    with pytest.raises(TileError, match="partial tile at level 1 \\(width 17\\) of a tree of size 70000 is missing"):
        append_leaves(size, {0: right[0], 2: right[2]}, new)
    with pytest.raises(TileError, match="level 0 is 3552 bytes, a tree of size 70000 has 112 hashes there"):
        append_leaves(size, {**right, 0: right[0][:-32]}, new)
    with pytest.raises(TileError, match="level 3, but a tree of size 70000 has no partial tile there"):
        append_leaves(size, {**right, 3: b""}, new)
    with pytest.raises(TileError, match="new leaf hash 1 is 31 bytes"):
        append_leaves(size, right, [new[0], new[1][:31]])
    with pytest.raises(TileError, match="negative"):
        append_leaves(-1, {}, new)


def test_appending_to_a_large_tree_touches_only_the_right_edge() -> None:
    rng = random.Random(5)
    size, k = 5_000_000 + 77, 10_000
    right = {level: rng.randbytes(32 * width) for level, _, width in partial_tiles(size)}
    new = [rng.randbytes(32) for _ in range(k)]
    started = time.perf_counter()
    changed = append_leaves(size, right, new)
    elapsed = time.perf_counter() - started
    expected = set()
    for level in range(4):
        before, after = size >> (8 * level), (size + k) >> (8 * level)
        if after > before:
            expected |= {(level, index) for index in range(before // 256, (after - 1) // 256 + 1)}
    assert set(changed) == expected
    assert changed[(0, size // 256)] == right[0] + b"".join(new[: 256 - len(right[0]) // 32])
    assert {(level, index): len(v) // 32 for (level, index), v in changed.items() if len(v) < 8192} == {
        (level, index): width for level, index, width in partial_tiles(size + k) if (level, index) in changed
    }
    assert (2, 0) not in changed  # no level-1 tile completed: the level-2 tile stays as it was
    assert elapsed < 1, f"appending {k} leaves to a tree of {size} took {elapsed:.2f}s"


# --- reading hashes back --------------------------------------------------------------------


def naive_hash_at(level: int, index: int) -> bytes:
    return root_of(LEAVES[index << level : (index + 1) << level])


def test_hash_reader_gives_every_subtree_hash_of_small_trees() -> None:
    for size in (1, 2, 3, 100, 255, 256, 257, 511, 512, 513, 1000, 1100):
        hash_at = hash_reader(size, reader_for(size, SCRATCH))
        for level in range(size.bit_length()):
            for index in range(size >> level):
                assert hash_at(level, index) == naive_hash_at(level, index), (size, level, index)
        assert tree_root(size, hash_at) == root_of(LEAVES[:size])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_hash_reader_in_the_70000_tree(data: st.DataObject) -> None:
    size = data.draw(st.sampled_from([65535, 65536, 65537, N]) | st.integers(1, N))
    level = data.draw(st.integers(0, size.bit_length() - 1))
    index = data.draw(st.integers(0, (size >> level) - 1))
    hash_at = hash_reader(size, reader_for(size, SCRATCH))
    assert hash_at(level, index) == naive_hash_at(level, index)


def test_hash_reader_proofs_and_roots() -> None:
    rng = random.Random(8)
    for size in (65535, 65536, 65537, N, *[rng.randrange(1, N) for _ in range(6)]):
        hash_at = hash_reader(size, reader_for(size, SCRATCH))
        root = root_of(LEAVES[:size])
        assert tree_root(size, hash_at) == root
        for index in (0, size - 1, rng.randrange(size)):
            verify_inclusion(LEAVES[index], index, size, inclusion_proof(index, size, hash_at), root)


def test_hash_reader_refuses_what_is_not_there() -> None:
    hash_at = hash_reader(300, reader_for(300, SCRATCH))
    with pytest.raises(TileError, match="not complete in a tree of size 300"):
        hash_at(0, 300)
    with pytest.raises(TileError, match="not complete"):
        hash_at(8, 1)
    with pytest.raises(TileError, match="negative"):
        hash_at(-1, 0)
    short = hash_reader(300, lambda level, index, width: b"\x00" * (32 * width - 1))
    with pytest.raises(TileError, match="tile \\(0, 1\\) is 1407 bytes, a tree of size 300 has 44 hashes there"):
        short(0, 299)
    with pytest.raises(TileError):
        hash_reader(-1, reader_for(0, SCRATCH))


def test_tiles_needed_are_exactly_the_tiles_read() -> None:
    rng = random.Random(9)
    sizes = [1, 2, 255, 256, 257, 65535, 65536, 65537, N, *[rng.randrange(1, N) for _ in range(10)]]
    for size in sizes:
        for index in {0, size - 1, rng.randrange(size), rng.randrange(size)}:
            calls: list[tuple[int, int, int]] = []
            proof = inclusion_proof(index, size, hash_reader(size, reader_for(size, SCRATCH, calls)))
            assert set(calls) == tiles_for_proof(index, size)
            assert tiles_for_proof(index, size) <= set(tiles_for(size))
            # Fetched in one go, then read: nothing else is needed.
            fetched = {(level, i): SCRATCH[(level, i)] for level, i, _ in tiles_for_proof(index, size)}
            assert inclusion_proof(index, size, hash_reader(size, reader_for(size, fetched))) == proof

        calls = []
        assert tree_root(size, hash_reader(size, reader_for(size, SCRATCH, calls))) == root_of(LEAVES[:size])
        assert set(calls) == tiles_for_root(size)

        old = rng.randrange(0, size + 1)
        calls = []
        consistency_proof(old, size, hash_reader(size, reader_for(size, SCRATCH, calls)))
        assert set(calls) == tiles_for_consistency(old, size)

        lo = rng.randrange(size)
        hi = rng.randrange(lo + 1, size + 1)
        calls = []
        range_proof(lo, hi, size, hash_reader(size, reader_for(size, SCRATCH, calls)))
        assert set(calls) == tiles_for_range(lo, hi, size)


def test_tiles_for_a_proof_in_a_huge_tree() -> None:
    size = 2**40 + 2**20 + 5
    tiles = tiles_for_proof(2**39 + 12345, size)
    assert len(tiles) <= 2 * 6
    assert all(width == 256 or (level, index, width) in partial_tiles(size) for level, index, width in tiles)
