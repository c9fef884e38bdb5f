"""otaudit's transparency-log formats, checked by an implementation otaudit did not write.

Python (``otaudit_verify``) writes a tiled log, signs its checkpoints and builds proofs;
Go's ``golang.org/x/mod/sumdb/note`` and ``golang.org/x/mod/sumdb/tlog`` (Debian's
golang-golang-x-mod-dev, driven by ``tests/interop/tlogcheck``, see ``tests/gotlog.py``)
must open the notes, read the tiles against the signed root, accept the proofs, build
byte-identical proofs of their own from the tiles, and reject each kind of tampering.
Each test runs one Go process.

Debian's x/mod (v0.7.0) has Go issue 80744 (CVE-2026-56865): ``tlog.TileHashReader``
leaves some tiles unauthenticated. ``tlogcheck`` therefore checks everything it reads from
tiles with ``tlog.CheckRecord`` / ``tlog.CheckTree`` against the root, and
:func:`test_go_rejects_tampered_tiles` corrupts exactly such tiles (``tile/0/000`` and
``tile/1/000`` of the tree of 70,000).
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gotlog import run_checks

from otaudit_verify.checkpoint import Checkpoint, TlogProof
from otaudit_verify.merkle import HashAt, consistency_proof, inclusion_proof, leaf_hash, root_of
from otaudit_verify.note import Signer, generate_signer, sign_note
from otaudit_verify.tiles import append_leaves, hash_reader, partial_tiles, tile_path, tiles_for

ORIGIN = "otaudit.example/interop-go"

SIZES = (1, 2, 255, 256, 257, 1000, 65536, 70000)
"""The sizes the test log grows through, each with a signed checkpoint.

Edges of the tiling: one leaf; a level-0 tile one short of full; a full level-0 tile
with the level-1 partial tile of width 1; one over; 256**2 (level-2 partial tile of width
1, no partial below it); and 70,000, the spec's example (full and partial tiles at levels
0 and 1, a partial tile at level 2).
"""

BIGGEST = SIZES[-1]
TOKEN = "Bearer interop-go-token"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64s(hashes: list[bytes] | tuple[bytes, ...]) -> list[str]:
    return [b64(h) for h in hashes]


def flip(data: bytes, position: int) -> bytes:
    """``data`` with the bits of one byte inverted."""
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


@dataclass
class Log:
    """A tiled log on disk, grown through :data:`SIZES`, with a signed checkpoint for each size."""

    folder: Path
    signer: Signer
    leaves: list[bytes]
    notes: dict[int, str] = field(default_factory=dict)
    _roots: dict[int, bytes] = field(default_factory=dict)

    @property
    def vkey(self) -> str:
        return self.signer.verifier().vkey()

    def root(self, size: int) -> bytes:
        """The root of the first ``size`` leaves, from the leaf hashes (not from the tiles)."""
        if size not in self._roots:
            self._roots[size] = root_of(self.leaves[:size])
        return self._roots[size]

    def read_tile(self, level: int, index: int, width: int) -> bytes:
        return (self.folder / tile_path(level, index, width)).read_bytes()

    def hash_at(self, size: int) -> HashAt:
        """Python's reader of the tree of ``size``, over the tile files."""
        return hash_reader(size, self.read_tile)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """Appends the leaves batch by batch, as the log would, writing every tile each batch changes."""
    folder = tmp_path_factory.mktemp("tlog")
    tiled = Log(folder, generate_signer(ORIGIN), [leaf_hash(f"event {i}".encode()) for i in range(BIGGEST)])
    contents: dict[tuple[int, int], bytes] = {}
    size = 0
    for new_size in SIZES:
        right = {level: contents[(level, index)] for level, index, _ in partial_tiles(size)}
        changed = append_leaves(size, right, tiled.leaves[size:new_size])
        for (level, index), data in changed.items():
            path = folder / tile_path(level, index, len(data) // 32)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        contents.update(changed)
        size = new_size
        tiled.notes[size] = sign_note(Checkpoint(ORIGIN, size, tiled.root(size)).text(), tiled.signer)
    return tiled


def leaf_indexes(size: int) -> list[int]:
    """Leaves at the tiling's edges, the middle, the last, and a few at random."""
    rng = random.Random(size)
    picks = {0, 1, 255, 256, 257, 999, 65535, 65536, size // 2, size - 1, *(rng.randrange(size) for _ in range(4))}
    return sorted(i for i in picks if 0 <= i < size)


def old_sizes(size: int) -> list[int]:
    """Earlier tree sizes to prove consistency from: every checkpointed one, ``size`` itself, and a few others."""
    rng = random.Random(-size)
    picks = {*SIZES, size - 1, size // 2 + 1, *(rng.randrange(1, size + 1) for _ in range(4))}
    return sorted(old for old in picks if 1 <= old <= size)


def assert_results(named: list[tuple[str, dict[str, Any], bool]]) -> list[dict[str, Any]]:
    """Runs the checks in one Go process; each must pass (True) or fail (False) as expected."""
    results = run_checks([check for _, check, _ in named])
    wrong = [
        f"{name}: expected {'ok' if expected else 'rejection'}, got {'ok' if result['ok'] else result['error']}"
        for (name, _, expected), result in zip(named, results, strict=True)
        if result["ok"] != expected
    ]
    assert not wrong, "\n".join(wrong)
    return results


def test_tile_paths_are_gos_paths_without_the_height() -> None:
    """Python's C2SP tile paths equal Go's tlog.Tile.Path() with its "8/" height segment dropped."""
    coordinates = [
        (level, index, width)
        for level in (0, 1, 2, 63)
        for index in (0, 1, 999, 1000, 1001, 123456, 1234067, 999_999_999, 10**12, 2**55)
        for width in (1, 112, 255, 256)
    ]
    results = assert_results(
        [(str(c), {"kind": "tile-path", "level": c[0], "index": c[1], "width": c[2]}, True) for c in coordinates]
    )
    assert [r["path"] for r in results] == [tile_path(*c) for c in coordinates]
    assert tile_path(1, 1234067, 3) == "tile/1/x001/x234/067.p/3"


@pytest.mark.parametrize("size", SIZES)
def test_go_authenticates_the_tiles_and_builds_the_same_proofs(log: Log, size: int) -> None:
    """Go opens the checkpoint, authenticates the tiles, accepts Python's proofs and builds identical ones."""
    root = log.root(size)
    hash_at = log.hash_at(size)
    indexes = leaf_indexes(size)
    olds = old_sizes(size)
    inclusion = {i: inclusion_proof(i, size, hash_at) for i in indexes}
    consistency = {old: consistency_proof(old, size, hash_at) for old in olds}
    proven = sorted({0, size // 2, size - 1})
    proofs = {i: TlogProof(i, tuple(inclusion[i]), log.notes[size], extra=f"event {i}".encode()).text() for i in proven}
    note = {"kind": "note", "note": log.notes[size], "vkey": log.vkey}
    tiles = {
        "kind": "tiles",
        "dir": str(log.folder),
        "size": size,
        "root": b64(root),
        "leaf_indexes": indexes,
        "consistency_from": olds,
    }
    # The same, with the tree taken from the signed checkpoint that Go verifies first.
    tiles_from_note = {
        "kind": "tiles",
        "dir": str(log.folder),
        "checkpoint": log.notes[size],
        "vkey": log.vkey,
        "leaf_indexes": [size - 1],
    }
    named: list[tuple[str, dict[str, Any], bool]] = [
        ("note", note, True),
        ("tiles", tiles, True),
        ("tiles from note", tiles_from_note, True),
    ]
    named += [
        (
            f"inclusion of {i}",
            {"kind": "inclusion", "index": i, "size": size, "leaf_hash": b64(log.leaves[i]), "proof": b64s(p), "root": b64(root)},
            True,
        )
        for i, p in inclusion.items()
    ]
    named += [
        (
            f"consistency from {old}",
            {
                "kind": "consistency",
                "old": old,
                "new": size,
                "old_root": b64(log.root(old)),
                "new_root": b64(root),
                "proof": b64s(p),
            },
            True,
        )
        for old, p in consistency.items()
    ]
    named += [
        (
            f"tlog-proof of {i}",
            {"kind": "tlog-proof", "text": text, "vkey": log.vkey, "leaf_hash": b64(log.leaves[i]), "origin": ORIGIN},
            True,
        )
        for i, text in proofs.items()
    ]
    results = assert_results(named)

    opened, read, read_from_note = results[:3]
    assert opened["text"] == Checkpoint(ORIGIN, size, root).text()
    assert (opened["signers"], opened["unverified"]) == ([ORIGIN], [])

    assert read["tree_hash"] == b64(root) == read_from_note["tree_hash"]
    assert read["leaf_hashes"] == [b64(log.leaves[i]) for i in indexes]
    assert read_from_note["leaf_hashes"] == [b64(log.leaves[size - 1])]
    assert read["inclusion_proofs"] == [b64s(inclusion[i]) for i in indexes]
    assert read["consistency_proofs"] == [b64s(consistency[old]) for old in olds]
    assert read["old_roots"] == [b64(log.root(old)) for old in olds]
    # Go asked only for tiles that Python's layout has at this size (widths included).
    layout = {tile_path(*t) for t in tiles_for(size)}
    assert set(read["tiles_read"]) <= layout, set(read["tiles_read"]) - layout
    if size == BIGGEST:
        assert {"tile/0/000", "tile/0/273.p/112", "tile/1/000", "tile/1/001.p/17", "tile/2/000.p/1"} <= set(read["tiles_read"])
    if size == 256:
        assert read["tiles_read"] == ["tile/0/000", "tile/1/000.p/1"]

    for i, result in zip(proven, results[-len(proven) :], strict=True):
        assert (result["origin"], result["size"], result["index"]) == (ORIGIN, size, i)
        assert (result["root"], result["extra"], result["signers"]) == (b64(root), b64(f"event {i}".encode()), [ORIGIN])


def test_go_reads_notes_with_other_signatures(log: Log) -> None:
    """A cosigned checkpoint: Go verifies the key it is given and ignores the other signature."""
    witness = generate_signer("witness.example/w1")
    text = Checkpoint(ORIGIN, 1000, log.root(1000)).text()
    cosigned = sign_note(text, log.signer, witness)
    impostor = generate_signer(ORIGIN)  # the log's name, another key
    results = assert_results(
        [
            ("log key", {"kind": "note", "note": cosigned, "vkey": log.vkey}, True),
            ("witness key", {"kind": "note", "note": cosigned, "vkey": witness.verifier().vkey()}, True),
            ("another key of the log's name", {"kind": "note", "note": cosigned, "vkey": impostor.verifier().vkey()}, False),
        ]
    )
    assert (results[0]["text"], results[0]["signers"], results[0]["unverified"]) == (text, [ORIGIN], [witness.name])
    assert (results[1]["signers"], results[1]["unverified"]) == ([witness.name], [ORIGIN])


def tampered_copy(source: Path, target: Path, path: str, change: Callable[[bytes], bytes | None]) -> Path:
    """A copy of the tile folder (hard links) where the file ``path`` is replaced by ``change(its bytes)``, or removed for None."""
    shutil.copytree(source, target, copy_function=os.link)
    victim = target / path
    data = change(victim.read_bytes())
    victim.unlink()  # never write through a hard link into the original
    if data is not None:
        victim.write_bytes(data)
    return target


def test_go_rejects_tampered_tiles(log: Log, tmp_path: Path) -> None:
    """A flipped byte, a short or long file, or a missing file, in each kind of tile the reads of a tree of 70,000 touch."""
    size = BIGGEST
    read = {"kind": "tiles", "size": size, "root": b64(log.root(size)), "leaf_indexes": [0, size - 1], "consistency_from": [1000]}
    changes: dict[str, Callable[[bytes], bytes | None]] = {
        "flipped byte": lambda data: flip(data, len(data) // 2),
        "last byte flipped": lambda data: flip(data, len(data) - 1),
        "short": lambda data: data[:-1],
        "long": lambda data: data + b"\0",
        "missing": lambda data: None,
    }
    named: list[tuple[str, dict[str, Any], bool]] = [("untouched", {**read, "dir": str(log.folder)}, True)]
    for path in ("tile/0/000", "tile/0/273.p/112", "tile/1/000", "tile/1/001.p/17", "tile/2/000.p/1"):
        for what, change in changes.items():
            folder = tampered_copy(log.folder, tmp_path / f"{path.replace('/', '_')}-{what}", path, change)
            named.append((f"{path} {what}", {**read, "dir": str(folder)}, False))
    named.append(("wrong root", {**read, "dir": str(log.folder), "root": b64(flip(log.root(size), 0))}, False))
    # Existing tiles of an earlier size, claimed to be the latest tree's.
    named.append(("root of another size", {**read, "dir": str(log.folder), "size": 65536}, False))
    assert_results(named)


def test_go_rejects_tampered_notes_and_proofs(log: Log) -> None:
    """A flipped byte in a signature, a checkpoint or a proof hash; a proof for another leaf, index or size."""
    size, index = BIGGEST, 12345
    root, leaf, note = log.root(size), log.leaves[index], log.notes[size]
    proof = inclusion_proof(index, size, log.hash_at(size))
    old = 1000
    tree_proof = consistency_proof(old, size, log.hash_at(size))

    text, signature_line = note[: note.index("\n\n") + 1], note[note.index("\n\n") + 2 :]
    name, signature = signature_line.rstrip("\n").removeprefix("\u2014 ").split(" ")
    raw = base64.b64decode(signature)
    forged_signature = f"{text}\n\u2014 {name} {b64(flip(raw, 4 + 10))}\n"  # after the 4-byte key ID
    forged_text = note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
    assert forged_text != note

    def inclusion(p: list[bytes], i: int = index, leaf_hash: bytes = leaf, n: int = size) -> dict[str, Any]:
        return {"kind": "inclusion", "index": i, "size": n, "leaf_hash": b64(leaf_hash), "proof": b64s(p), "root": b64(root)}

    def consistency(p: list[bytes], old_root: bytes = log.root(old)) -> dict[str, Any]:
        return {
            "kind": "consistency",
            "old": old,
            "new": size,
            "old_root": b64(old_root),
            "new_root": b64(root),
            "proof": b64s(p),
        }

    def tlog_proof(
        p: list[bytes], checkpoint: str = note, i: int = index, leaf_hash: bytes = leaf, origin: str = ORIGIN
    ) -> dict[str, Any]:
        text = TlogProof(i, tuple(p), checkpoint).text()
        return {"kind": "tlog-proof", "text": text, "vkey": log.vkey, "leaf_hash": b64(leaf_hash), "origin": origin}

    named: list[tuple[str, dict[str, Any], bool]] = [
        ("note", {"kind": "note", "note": note, "vkey": log.vkey}, True),
        ("note, flipped signature", {"kind": "note", "note": forged_signature, "vkey": log.vkey}, False),
        ("note, changed size", {"kind": "note", "note": forged_text, "vkey": log.vkey}, False),
        (
            "tiles, flipped signature",
            {"kind": "tiles", "dir": str(log.folder), "checkpoint": forged_signature, "vkey": log.vkey, "leaf_indexes": [0]},
            False,
        ),
        ("inclusion", inclusion(proof), True),
        ("inclusion, a hash short", inclusion(proof[:-1]), False),
        ("inclusion, a hash more", inclusion([*proof, proof[0]]), False),
        ("inclusion, next index", inclusion(proof, i=index + 1), False),
        ("inclusion, other leaf", inclusion(proof, leaf_hash=log.leaves[index + 1]), False),
        ("inclusion, other size", inclusion(proof, n=65536), False),
        ("consistency", consistency(tree_proof), True),
        ("consistency, a hash short", consistency(tree_proof[:-1]), False),
        ("consistency, other old root", consistency(tree_proof, old_root=log.root(old + 1)), False),
        ("tlog-proof", tlog_proof(proof), True),
        ("tlog-proof, flipped signature", tlog_proof(proof, checkpoint=forged_signature), False),
        ("tlog-proof, changed size", tlog_proof(proof, checkpoint=forged_text), False),
        ("tlog-proof, next index", tlog_proof(proof, i=index + 1), False),
        ("tlog-proof, other leaf", tlog_proof(proof, leaf_hash=log.leaves[0]), False),
        ("tlog-proof, other origin", tlog_proof(proof, origin="otaudit.example/other"), False),
    ]
    for position in range(len(proof)):
        flipped = [*proof[:position], flip(proof[position], position), *proof[position + 1 :]]
        named.append((f"inclusion, hash {position} flipped", inclusion(flipped), False))
        named.append((f"tlog-proof, hash {position} flipped", tlog_proof(flipped), False))
    for position in range(len(tree_proof)):
        flipped = [*tree_proof[:position], flip(tree_proof[position], 31), *tree_proof[position + 1 :]]
        named.append((f"consistency, hash {position} flipped", consistency(flipped), False))
    results = assert_results(named)
    assert "invalid signature" in results[1]["error"] and "invalid signature" in results[2]["error"]


class _TileHandler(SimpleHTTPRequestHandler):
    """Serves the tile folder to requests that carry :data:`TOKEN`."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != TOKEN:
            self.send_error(401)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def tile_server(log: Log) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_TileHandler, directory=str(log.folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_go_reads_tiles_over_http(log: Log, tile_server: str) -> None:
    """The same tiles from a C2SP URL prefix, with the Authorization header; refused without it."""
    size = BIGGEST
    read = {"kind": "tiles", "url": tile_server, "size": size, "root": b64(log.root(size)), "leaf_indexes": [7, size - 1]}
    results = assert_results([("with token", {**read, "authorization": TOKEN}, True), ("without token", read, False)])
    assert results[0]["leaf_hashes"] == [b64(log.leaves[7]), b64(log.leaves[size - 1])]
    assert "401" in results[1]["error"]
