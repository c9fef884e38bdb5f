"""The C2SP tlog-tiles layout of a Merkle tree: tile coordinates, paths, appending, reading.

A tiled log (https://c2sp.org/tlog-tiles) stores the RFC 6962 tree of
:mod:`otaudit_verify.merkle` as *tiles*: runs of up to 256 consecutive hashes of one
*tile level*. Tile level ``L`` holds the hashes of the complete subtrees of ``256**L``
leaves (Merkle level ``8 * L``), so level 0 holds the leaf hashes, and tile ``N`` of
level ``L`` holds, for ``i`` in ``0..255``::

    MTH(D[(N * 256 + i) * 256**L : (N * 256 + i + 1) * 256**L])

A full tile is 256 hashes (8,192 bytes), and its root (the MTH of its 256 hashes) is a
hash of the tile level above. The rightmost tile of a level may be *partial*, with
``W = floor(size / 256**L) mod 256`` hashes (1..255), and is never hashed into the level
above. Example from the spec: a tree of 70,000 leaves has 273 full level-0 tiles, a
partial level-0 tile of width 112, one full level-1 tile, a partial level-1 tile of width
17 and a partial level-2 tile of width 1.

Paths are ``tile/<L>/<N>[.p/<W>]``, and ``tile/entries/<N>[.p/<W>]`` for the entry bundle
matching level-0 tile ``N`` (level ``-1`` here). ``<L>`` is 0..63 in decimal without
leading zeros, ``<W>`` is 1..255 likewise, and ``<N>`` is split in 3-digit zero-padded
groups, all but the last prefixed with ``x``: index 1234067 is ``x001/x234/067``.

Coordinates are ``(level, index, width)`` triples, ``width`` 256 for a full tile. Nothing
here does I/O: the caller stores and fetches tile bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from .merkle import HASH_SIZE, HashAt, consistency_proof, inclusion_proof, range_proof, root_of_packed, tree_root

__all__ = [
    "ENTRIES_LEVEL",
    "MAX_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileError",
    "append_leaves",
    "hash_reader",
    "parse_tile_path",
    "partial_tiles",
    "tile_count",
    "tile_path",
    "tiles_for",
    "tiles_for_consistency",
    "tiles_for_proof",
    "tiles_for_range",
    "tiles_for_root",
]

TILE_HEIGHT = 8
"""Merkle levels per tile level."""

TILE_WIDTH = 256
"""Hashes in a full tile (``2**TILE_HEIGHT``)."""

MAX_LEVEL = 63
"""The highest tile level a path may name."""

ENTRIES_LEVEL = -1
"""The level that stands for entry bundles (``tile/entries/...``) in coordinates."""

TILE_BYTES = TILE_WIDTH * HASH_SIZE

ReadTile = Callable[[int, int, int], bytes]
"""read_tile(level, index, width): the bytes of that tile (at least ``width`` hashes)."""

_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_GROUP = re.compile(r"x[0-9]{3}")
_LAST_GROUP = re.compile(r"[0-9]{3}")


class TileError(ValueError):
    """A tile path, coordinate or tile contents that is not valid; the message says what is wrong."""


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The path of a tile, ``tile/<L>/<N>[.p/<W>]``, or of an entry bundle when ``level`` is -1."""
    if not ENTRIES_LEVEL <= level <= MAX_LEVEL:
        raise TileError(f"tile level {level} is not between 0 and {MAX_LEVEL} (or -1 for entries)")
    if index < 0:
        raise TileError(f"tile index {index} is negative")
    if not 1 <= width <= TILE_WIDTH:
        raise TileError(f"tile width {width} is not between 1 and {TILE_WIDTH}")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    groups.reverse()
    head = "tile/entries" if level == ENTRIES_LEVEL else f"tile/{level}"
    tail = "" if width == TILE_WIDTH else f".p/{width}"
    return f"{head}/{'/'.join(groups)}{tail}"


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """The ``(level, index, width)`` of a tile path (level -1 for ``tile/entries/``); only canonical paths.

    Rejects, with :class:`TileError`, anything :func:`tile_path` would not produce: a
    level or width with leading zeros or out of range, an index group that is not three
    digits, a missing or extra ``x``, a leading ``x000`` group, empty path elements.
    """
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TileError(f"tile path {path!r} does not have the form tile/<L>/<N>[.p/<W>]")
    if parts[1] == "entries":
        level = ENTRIES_LEVEL
    elif _LEVEL.fullmatch(parts[1]):
        level = int(parts[1])
        if level > MAX_LEVEL:
            raise TileError(f"tile path {path!r}: level {level} is above {MAX_LEVEL}")
    else:
        raise TileError(
            f"tile path {path!r}: level {parts[1]!r} is not 'entries' or a decimal 0..{MAX_LEVEL} without leading zeros"
        )
    groups = parts[2:]
    width = TILE_WIDTH
    if len(groups) >= 2 and groups[-2].endswith(".p"):
        text = groups.pop()
        if not _WIDTH.fullmatch(text) or int(text) >= TILE_WIDTH:
            raise TileError(
                f"tile path {path!r}: partial width {text!r} is not a decimal 1..{TILE_WIDTH - 1} without leading zeros"
            )
        width = int(text)
        groups[-1] = groups[-1][:-2]
    for group in groups[:-1]:
        if not _GROUP.fullmatch(group):
            raise TileError(f"tile path {path!r}: index element {group!r} is not 'x' and three digits")
    if not _LAST_GROUP.fullmatch(groups[-1]):
        raise TileError(f"tile path {path!r}: last index element {groups[-1]!r} is not three digits")
    if len(groups) > 1 and groups[0] == "x000":
        raise TileError(f"tile path {path!r}: index starts with a zero group 'x000'")
    index = 0
    for group in groups:
        index = index * 1000 + int(group.removeprefix("x"))
    return level, index, width


def tile_count(size: int, level: int) -> int:
    """How many hashes tile level ``level`` holds for a tree of ``size`` leaves: ``size >> (8 * level)``."""
    if size < 0:
        raise TileError(f"tree size {size} is negative")
    if not 0 <= level <= MAX_LEVEL:
        raise TileError(f"tile level {level} is not between 0 and {MAX_LEVEL}")
    return size >> (TILE_HEIGHT * level)


def partial_tiles(size: int) -> list[tuple[int, int, int]]:
    """The ``(level, index, width)`` of the partial tile of each tile level that has one, lowest level first."""
    if size < 0:
        raise TileError(f"tree size {size} is negative")
    result: list[tuple[int, int, int]] = []
    level, count = 0, size
    while count:
        if count % TILE_WIDTH:
            result.append((level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
        count >>= TILE_HEIGHT
    return result


def tiles_for(size: int) -> list[tuple[int, int, int]]:
    """Every tile ``(level, index, width)`` of a tree of ``size``: full ones and partial ones, by level then index.

    Entry bundles are the level-0 coordinates with level -1.
    """
    if size < 0:
        raise TileError(f"tree size {size} is negative")
    result: list[tuple[int, int, int]] = []
    level, count = 0, size
    while count:
        result.extend((level, index, TILE_WIDTH) for index in range(count // TILE_WIDTH))
        if count % TILE_WIDTH:
            result.append((level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
        count >>= TILE_HEIGHT
    return result


def append_leaves(size: int, right: Mapping[int, bytes], new_leaves: Sequence[bytes]) -> dict[tuple[int, int], bytes]:
    """The tiles that appending leaf hashes ``new_leaves`` to a tree of ``size`` changes or creates.

    ``right[level]`` is the contents of the current partial tile of each tile level that
    has one, exactly those of :func:`partial_tiles` (``size``). The result maps
    ``(level, index)`` to the tile's whole new contents, ``width * 32`` bytes, where a
    completed tile has 256 hashes; each completed tile's root is appended to the level
    above. O(len(new_leaves) + log size) work.
    """
    expected = {level: width for level, _, width in partial_tiles(size)}
    for level, width in expected.items():
        if level not in right:
            raise TileError(f"the partial tile at level {level} (width {width}) of a tree of size {size} is missing")
        if len(right[level]) != width * HASH_SIZE:
            raise TileError(
                f"the partial tile at level {level} is {len(right[level])} bytes, a tree of size {size} has {width} hashes there ({width * HASH_SIZE} bytes)"
            )
    for level in right:
        if level not in expected:
            raise TileError(f"a tile is given for level {level}, but a tree of size {size} has no partial tile there")
    for i, leaf in enumerate(new_leaves):
        if len(leaf) != HASH_SIZE:
            raise TileError(f"new leaf hash {i} is {len(leaf)} bytes, not {HASH_SIZE}")
    changed: dict[tuple[int, int], bytes] = {}
    pending = list(new_leaves)
    level = 0
    while pending:
        if level > MAX_LEVEL:  # pragma: no cover - needs 2**512 leaves
            raise TileError(f"the tree would need a tile level above {MAX_LEVEL}")
        count = size >> (TILE_HEIGHT * level)
        buffer = right.get(level, b"") + b"".join(pending)
        first = count // TILE_WIDTH
        completed: list[bytes] = []
        for offset in range(0, len(buffer), TILE_BYTES):
            tile = buffer[offset : offset + TILE_BYTES]
            changed[(level, first + offset // TILE_BYTES)] = tile
            if len(tile) == TILE_BYTES:
                completed.append(root_of_packed(tile, 0, TILE_WIDTH))
        pending = completed
        level += 1
    return changed


def _locate(size: int, level: int, index: int) -> tuple[int, int, int, int]:
    """Where the complete subtree ``(level, index)`` of a tree of ``size`` is read from.

    Returns ``(tile_level, tile_index, width, offset)``: its ``2**(level % 8)`` hashes
    start at hash ``offset`` of that tile, of the width it has at this size.
    """
    if level < 0 or index < 0:
        raise TileError(f"subtree ({level}, {index}) has a negative coordinate")
    if (index + 1) << level > size:
        raise TileError(f"subtree of 2**{level} leaves at index {index} is not complete in a tree of size {size}")
    tile_level, rest = divmod(level, TILE_HEIGHT)
    first = index << rest
    tile_index, offset = divmod(first, TILE_WIDTH)
    count = size >> (TILE_HEIGHT * tile_level)
    width = TILE_WIDTH if tile_index < count // TILE_WIDTH else count % TILE_WIDTH
    return tile_level, tile_index, width, offset


def hash_reader(size: int, read_tile: ReadTile) -> HashAt:
    """A :data:`~otaudit_verify.merkle.HashAt` for the tree of ``size`` that reads its tiles with ``read_tile``.

    ``hash_at(8 * t + r, index)`` (``r < 8``) takes the ``2**r`` hashes at tile level ``t``
    that the subtree spans and returns their MTH (the hash itself when ``r == 0``). It
    asks ``read_tile(level, index, width)`` only for tiles that exist at ``size``, with
    the width they have at ``size``; extra trailing hashes in the answer are ignored (a
    stored tile may have grown since). Raises :class:`TileError` for a subtree that is not
    complete in the tree, or a tile that is too short. Nothing is cached: give a caching
    ``read_tile`` if the same tiles are read often.
    """
    if size < 0:
        raise TileError(f"tree size {size} is negative")

    def hash_at(level: int, index: int) -> bytes:
        tile_level, tile_index, width, offset = _locate(size, level, index)
        data = read_tile(tile_level, tile_index, width)
        if len(data) < width * HASH_SIZE:
            raise TileError(
                f"tile ({tile_level}, {tile_index}) is {len(data)} bytes, a tree of size {size} has {width} hashes there ({width * HASH_SIZE} bytes)"
            )
        return root_of_packed(data, offset * HASH_SIZE, 1 << (level % TILE_HEIGHT))

    return hash_at


def _tiles_read(size: int, compute: Callable[[HashAt], object]) -> set[tuple[int, int, int]]:
    """The tiles that ``compute`` reads through a :func:`hash_reader` of the tree of ``size`` (on placeholder hashes)."""
    tiles: set[tuple[int, int, int]] = set()
    placeholder = bytes(HASH_SIZE)

    def hash_at(level: int, index: int) -> bytes:
        tile_level, tile_index, width, _ = _locate(size, level, index)
        tiles.add((tile_level, tile_index, width))
        return placeholder

    compute(hash_at)
    return tiles


def tiles_for_proof(index: int, size: int) -> set[tuple[int, int, int]]:
    """The tiles ``(level, index, width)`` that ``inclusion_proof(index, size, hash_reader(size, ...))`` reads."""
    return _tiles_read(size, lambda hash_at: inclusion_proof(index, size, hash_at))


def tiles_for_consistency(old: int, new: int) -> set[tuple[int, int, int]]:
    """The tiles that ``consistency_proof(old, new, hash_reader(new, ...))`` reads."""
    return _tiles_read(new, lambda hash_at: consistency_proof(old, new, hash_at))


def tiles_for_range(lo: int, hi: int, size: int) -> set[tuple[int, int, int]]:
    """The tiles that ``range_proof(lo, hi, size, hash_reader(size, ...))`` reads."""
    return _tiles_read(size, lambda hash_at: range_proof(lo, hi, size, hash_at))


def tiles_for_root(size: int) -> set[tuple[int, int, int]]:
    """The tiles that ``tree_root(size, hash_reader(size, ...))`` reads."""
    return _tiles_read(size, lambda hash_at: tree_root(size, hash_at))
