"""Export bundles (``otaudit-bundle/1``): write one, and verify one offline.

An export bundle is a zip file that lets anyone check, without the collector, its
database or the network, that the events it holds are exactly what the log recorded, in
their places in a tenant's tamper-evident log (see :mod:`otaudit_verify.merkle`), whose
root the log signed.

Format ``otaudit-bundle/1``
===========================

A zip file holding these six members at its top level, deflated (the writer stores the
two ``.bin`` members, hashes that do not compress); a reader ignores any other member and
rejects a zip with two members of one of these names.

``manifest.json``
    One UTF-8 JSON object:

    =================== ============================================================
    ``format``          ``"otaudit-bundle/1"``
    ``tenant``          the tenant id (a non-empty string)
    ``origin``          the origin of the tenant's log, as in the checkpoint
                        (``<deployment>/<percent-encoded tenant>``, see
                        :func:`otaudit_verify.checkpoint.origin_for`)
    ``first_seq``       integer >= 1, or ``null`` for an empty export
    ``last_seq``        integer >= ``first_seq``, or ``null`` for an empty export:
                        the bundle covers the leaves of seq ``first_seq`` to
                        ``last_seq`` inclusive (1-based; leaf index = seq - 1)
    ``tree_size``       integer: the size of the checkpoint's tree (>= ``last_seq``)
    ``checkpoint_time`` when the log made the checkpoint (RFC 3339 string), or
                        ``null``; informational: the signature does not cover it
    ``events``          integer: the number of lines of ``events.ndjson``
    ``filters``         object: what the export selected (informational)
    ``created_at``      when the bundle was made (RFC 3339 string)
    =================== ============================================================

``checkpoint.txt``
    The signed checkpoint, verbatim: a C2SP tlog-checkpoint (origin, tree size, base64
    root) as the text of a C2SP signed-note with Ed25519 signatures (see
    :mod:`otaudit_verify.checkpoint` and :mod:`otaudit_verify.note`).

``key.txt``
    The log's verifier key(s), one per line, in the Go ``sumdb/note`` encoding
    ``<name>+<hex key ID>+<base64 of 0x01 and the public key>``; blank lines are
    ignored. A verifier uses them only when the caller gives no key of its own, and then
    says so: a bundle that brings its own key proves only that it is self-consistent.

``events.ndjson``
    UTF-8, one JSON object per line, each line ending in ``\\n``, in increasing ``seq``
    order, exactly these keys::

        {"seq": 17, "id": "<event id>", "received_at": "2025-01-02T03:04:05.000006Z",
         "event": {...the stored event document...},
         "seals": {"/actor/email": {"salt": "<base64>"}, "/actor/name": {"commitment": "<base64>"}}}

    ``seq`` is within ``[first_seq, last_seq]``; ``event["id"]`` is ``id`` and
    ``event["tenant"]`` is the manifest's tenant. ``seals`` holds, for each personal
    value (by JSON pointer), its salt, or its commitment once the value was erased
    (``{}`` when the event has none). An export may be filtered (a category, an actor):
    then some seqs of the range have no line, and show only as leaf hashes.

``leaves.bin``
    The 32-byte RFC 6962 leaf hashes of *every* leaf of seq ``first_seq`` to
    ``last_seq``, concatenated: ``32 * (last_seq - first_seq + 1)`` bytes. The leaf hash
    of an event is ``SHA-256(0x00 || entry)``, its entry made from ``event``,
    ``received_at`` and ``seals`` by :func:`otaudit_verify.entry.entry_hash`.

``range-proof.bin``
    The 32-byte hashes of :func:`otaudit_verify.merkle.range_proof` for leaves
    ``[first_seq - 1, last_seq)`` of the tree of ``tree_size``, concatenated (empty when
    the range is the whole tree).

An empty export (no event) has ``first_seq`` and ``last_seq`` ``null``, ``events`` 0, and
empty ``events.ndjson``, ``leaves.bin`` and ``range-proof.bin``: only its checkpoint is
verified.

Verifying
=========

:func:`verify_bundle` checks, in this order, and raises :class:`BundleError` at the first
failure:

1. the manifest (format, fields and their types) and that every member is present;
2. the checkpoint's signature, with the caller's keys when given (the key is *pinned*),
   else with ``key.txt``'s; that a signature under the checkpoint's origin verified; that
   the origin is the manifest's, and names the manifest's tenant; that ``tree_size`` is
   the checkpoint's size and ``last_seq`` is in the tree;
3. that ``leaves.bin`` holds one hash per seq of the range; then each line of
   ``events.ndjson``: its keys, its seq (in the range, increasing), its tenant and id, and
   that the leaf hash recomputed from it is the one ``leaves.bin`` has at its seq; and that
   there are as many lines as the manifest says;
4. that the leaves and the range proof lead to the checkpoint's root hash
   (:func:`otaudit_verify.merkle.root_from_range`).

What this proves: every exported event is, unaltered, the leaf at its seq of the tree the
log signed. What it cannot show: whether a leaf that was not exported (present only as a
hash) matched the export's filters.

``events.ndjson`` is streamed in blocks of whole lines (memory stays constant apart from
``leaves.bin``). Recomputing leaf hashes is nearly all the work, so for a large bundle the
blocks are checked by one process per CPU, their results taken in file order: the error
reported is the first in the file either way.

:func:`write_bundle` writes a bundle, streaming the events.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from otaudit_verify.checkpoint import CheckpointError, parse_checkpoint, tenant_of
from otaudit_verify.entry import EntryError, entry_hash_owned
from otaudit_verify.merkle import HASH_SIZE, ProofError, root_from_range
from otaudit_verify.note import NoteError, Verifier, open_note, parse_verifier_key, signatures_of

__all__ = [
    "CHECKPOINT",
    "EVENTS",
    "FORMAT",
    "KEYS",
    "LEAVES",
    "MANIFEST",
    "MEMBERS",
    "PROGRESS_EVERY",
    "RANGE_PROOF",
    "BundleError",
    "BundleReport",
    "verify_bundle",
    "write_bundle",
]

FORMAT = "otaudit-bundle/1"
"""The ``format`` of the manifest of the bundles this module writes and reads."""

MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.txt"
KEYS = "key.txt"
EVENTS = "events.ndjson"
LEAVES = "leaves.bin"
RANGE_PROOF = "range-proof.bin"
MEMBERS = (MANIFEST, CHECKPOINT, KEYS, EVENTS, LEAVES, RANGE_PROOF)
"""The zip members of a bundle."""

PROGRESS_EVERY = 10_000
"""Events between two calls of ``verify_bundle``'s progress callback."""

_RECORD_KEYS = ("seq", "id", "received_at", "event", "seals")
_MAX_SMALL = 1 << 20  # manifest, checkpoint and keys: far below this
_MAX_PROOF_HASHES = 2 * 64  # a range proof has at most two hashes per level of a tree of < 2**64 leaves
_MAX_LINE = 16 << 20  # bytes in one line of events.ndjson: an event is far smaller (the collector caps them)
_BLOCK = 1 << 20  # bytes of events.ndjson checked at once (by one worker)
_PARALLEL_FROM = 20_000  # events from which verify_bundle checks them in several processes by default
_WRITE_BATCH = 1 << 16  # bytes of event lines handed to the compressor at once

StrPath = str | os.PathLike[str]


class BundleError(ValueError):
    """The bundle is malformed or does not verify; the message says which check failed (and which event)."""


# -- the report -------------------------------------------------------------------------------


def _range_text(first: int, last: int) -> str:
    return f"seq {first:,}" if first == last else f"seq {first:,} to {last:,}"


@dataclass(frozen=True)
class BundleReport:
    """What :func:`verify_bundle` proved about a bundle."""

    tenant: str
    origin: str
    first_seq: int | None
    """First seq of the leaves covered (1-based), ``None`` for an empty export."""
    last_seq: int | None
    """Last seq of the leaves covered (inclusive), ``None`` for an empty export."""
    events: int
    """Events in the bundle, each checked against its leaf."""
    tree_size: int
    """Leaves in the checkpoint's tree."""
    checkpoint_time: str | None
    """When the log made the checkpoint, as the manifest says (not covered by the signature)."""
    key: str
    """The verifier key (vkey) whose signature on the checkpoint verified."""
    key_pinned: bool
    """True when that key is one the caller gave; False when it came from the bundle's own ``key.txt``."""
    root: bytes
    """The checkpoint's root hash, which the covered leaves lead to."""
    filters: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """What the export selected (informational, from the manifest)."""
    created_at: str | None = field(default=None, compare=False)
    """When the bundle was made (informational, from the manifest)."""

    @property
    def leaves(self) -> int:
        """Leaves covered by the bundle (exported or not)."""
        if self.first_seq is None or self.last_seq is None:
            return 0
        return self.last_seq - self.first_seq + 1

    def summary(self) -> str:
        """Human-readable lines: what was verified, and with which key."""
        lines = [f"OK: otaudit bundle of tenant {self.tenant!r} verified (log {self.origin})"]
        lines.append(f"  checkpoint: tree of {self.tree_size:,} leaves, root {base64.b64encode(self.root).decode('ascii')}")
        if self.checkpoint_time:
            lines.append(f"  checkpoint time: {self.checkpoint_time} (as the log recorded it; not covered by the signature)")
        pinned = "pinned: a key you gave" if self.key_pinned else "NOT pinned: taken from the bundle's own key.txt"
        lines.append(f"  signed by: {self.key} ({pinned})")
        if self.first_seq is None or self.last_seq is None:
            lines.append("  events: none (an empty export: only the checkpoint was verified)")
        else:
            covered = _range_text(self.first_seq, self.last_seq)
            lines.append(
                f"  events: {self.events:,} exported, each unaltered and at its seq in that tree"
                f" ({covered}, leaf index = seq - 1)"
            )
            hidden = self.leaves - self.events
            leaves = f"  leaves: all {self.leaves:,} of {covered} lead to the signed root"
            if hidden:
                leaves += f"; {hidden:,} of them not exported (filtered out: present only as hashes)"
            lines.append(leaves)
        if self.filters:
            lines.append(f"  filters: {json.dumps(self.filters, ensure_ascii=False, sort_keys=True)}")
        if not self.key_pinned:
            lines.append(
                "WARNING: the key came from the bundle itself, so this shows only that the bundle is self-consistent:"
                " anyone can sign a bundle with a key of their own. Verify again with the log's published key"
                " (otaudit-verify --key VKEY)."
            )
        return "\n".join(lines)


# -- reading ----------------------------------------------------------------------------------


@contextmanager
def _zip_errors(name: str) -> Iterator[None]:
    """Turn what a damaged zip member raises into a :class:`BundleError` naming the member."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise BundleError(f"{name} cannot be read from the zip (damaged or unsupported): {exc}") from None


def _read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member's bytes; more than ``limit`` of them is an error."""
    with _zip_errors(name), archive.open(name) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{name} is larger than {limit:,} bytes; it cannot be a valid {name}")
    return data


def _read_text(archive: zipfile.ZipFile, name: str) -> str:
    data = _read_member(archive, name, _MAX_SMALL)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{name} is not UTF-8 (byte {exc.start})") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BundleError(f"{MANIFEST} has the key {key!r} twice")
        result[key] = value
    return result


def _is_int(value: object) -> bool:
    return type(value) is int


@dataclass(frozen=True)
class _Manifest:
    tenant: str
    origin: str
    first_seq: int | None
    last_seq: int | None
    tree_size: int
    checkpoint_time: str | None
    events: int
    filters: dict[str, Any]
    created_at: str


def _parse_manifest(data: bytes) -> _Manifest:
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise BundleError(f"{MANIFEST} is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST} is not a JSON object")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("otaudit-bundle/"):
            raise BundleError(
                f"bundle format {fmt!r} is not supported: this verifier reads {FORMAT!r}; use a newer otaudit-verify"
            )
        raise BundleError(f"{MANIFEST} format is {fmt!r}, not {FORMAT!r}: this is not an otaudit bundle")
    expected = {
        "format",
        "tenant",
        "origin",
        "first_seq",
        "last_seq",
        "tree_size",
        "checkpoint_time",
        "events",
        "filters",
        "created_at",
    }
    missing = sorted(expected - manifest.keys())
    if missing:
        raise BundleError(f"{MANIFEST} lacks {', '.join(missing)}")
    tenant, origin = manifest["tenant"], manifest["origin"]
    for name, value in (("tenant", tenant), ("origin", origin), ("created_at", manifest["created_at"])):
        if not isinstance(value, str) or not value:
            raise BundleError(f"{MANIFEST} {name} is {value!r}, not a non-empty string")
    time = manifest["checkpoint_time"]
    if time is not None and not isinstance(time, str):
        raise BundleError(f"{MANIFEST} checkpoint_time is {time!r}, not a string or null")
    if not isinstance(manifest["filters"], dict):
        raise BundleError(f"{MANIFEST} filters is {manifest['filters']!r}, not an object")
    tree_size, events = manifest["tree_size"], manifest["events"]
    for name, value in (("tree_size", tree_size), ("events", events)):
        if not _is_int(value) or value < 0:
            raise BundleError(f"{MANIFEST} {name} is {value!r}, not an integer >= 0")
    first, last = manifest["first_seq"], manifest["last_seq"]
    if first is None or last is None:
        if first is not None or last is not None:
            raise BundleError(f"{MANIFEST} first_seq is {first!r} and last_seq {last!r}: both are null (no event) or neither")
        if events:
            raise BundleError(f"{MANIFEST} says {events:,} events but covers no seq (first_seq and last_seq are null)")
    else:
        if not _is_int(first) or first < 1:
            raise BundleError(f"{MANIFEST} first_seq is {first!r}, not an integer >= 1")
        if not _is_int(last) or last < first:
            raise BundleError(f"{MANIFEST} last_seq is {last!r}, not an integer >= first_seq ({first})")
        if events > last - first + 1:
            raise BundleError(f"{MANIFEST} says {events:,} events, more than the {last - first + 1:,} seqs it covers")
    return _Manifest(tenant, origin, first, last, tree_size, time, events, manifest["filters"], manifest["created_at"])


def _parse_keys(text: str, what: str) -> list[Verifier]:
    keys: list[Verifier] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                keys.append(parse_verifier_key(line))
            except NoteError as exc:
                raise BundleError(f"{what} line {number} is not a verifier key: {exc}") from None
    return keys


def _tenant_binding(origin: str, tenant: str) -> None:
    """Check that ``origin`` is the log of ``tenant``: ``<deployment>/<percent-encoded tenant>``."""
    deployment, slash, _ = origin.rpartition("/")
    try:
        if not slash:
            raise CheckpointError(f"origin {origin!r} has no '/<tenant>'")
        named = tenant_of(origin, deployment)
    except CheckpointError as exc:
        raise BundleError(f"checkpoint origin {origin!r} does not name a tenant's log: {exc}") from None
    if named != tenant:
        raise BundleError(f"checkpoint origin {origin!r} is the log of tenant {named!r}, but the manifest says tenant {tenant!r}")


def _open_checkpoint(note: str, trusted: list[Verifier], bundled: list[Verifier]) -> tuple[str, Verifier]:
    """Verify the note; return its text and the key whose signature under the note's origin verified."""
    verifiers = trusted or bundled
    try:
        opened = open_note(note, verifiers)
    except NoteError as exc:
        if trusted:
            try:
                open_note(note, bundled)
            except NoteError:
                pass
            else:
                keys = ", ".join(k.vkey() for k in bundled)
                raise BundleError(
                    f"{CHECKPOINT} is not signed by any key you gave, but by the bundle's own key ({keys}):"
                    " the bundle is not from the log you trust (or the log's key changed: then pass its new key too)"
                ) from None
            raise BundleError(f"{CHECKPOINT} is not signed by any key you gave: {exc}") from None
        raise BundleError(f"{CHECKPOINT} does not verify with the bundle's {KEYS}: {exc}") from None
    try:
        checkpoint = parse_checkpoint(opened.text)
    except CheckpointError as exc:
        raise BundleError(f"{CHECKPOINT} is not a checkpoint: {exc}") from None
    for signature in opened.verified:
        if signature.name == checkpoint.origin:
            key = next(v for v in verifiers if v.name == signature.name and v.id == signature.id)
            return opened.text, key
    names = ", ".join(s.name for s in opened.verified)
    raise BundleError(
        f"{CHECKPOINT} is signed by {names}, not under its origin {checkpoint.origin!r}: otaudit signs each log's"
        " checkpoints with a key named by the log's origin"
    )


def _describe_line(number: int, line: str, record: object) -> str:
    """Why line ``number`` of events.ndjson is not an event record."""
    where = f"{EVENTS} line {number:,}"
    if record is None:
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            return f"{where} is not JSON ({exc.msg} at column {exc.colno})"
        return f"{where} is not a JSON object"
    if not isinstance(record, dict):
        return f"{where} is {type(record).__name__} JSON, not an object"
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        return f"{where} lacks {', '.join(missing)}"
    extra = sorted(k for k in record if k not in _RECORD_KEYS)
    if extra:
        return f"{where} has keys an event line does not have: {', '.join(extra)}"
    return f"{where} is not an event record"


def _check_types(where: str, record: dict[str, Any]) -> None:
    if not isinstance(record["id"], str):
        raise BundleError(f"{where}: id is {record['id']!r}, not a string")
    if not isinstance(record["received_at"], str):
        raise BundleError(f"{where}: received_at is {record['received_at']!r}, not a string")
    if not isinstance(record["event"], dict):
        raise BundleError(f"{where}: event is not a JSON object")
    if not isinstance(record["seals"], dict):
        raise BundleError(f"{where}: seals is not a JSON object")


def verify_bundle(
    path: StrPath | IO[bytes],
    *,
    trusted_keys: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> BundleReport:
    """Verify the bundle at ``path`` (or an open binary file) offline; return what it proved.

    ``trusted_keys``: the log's verifier keys (vkeys) as the caller knows them, e.g. from
    the log's published key. When given, the checkpoint must verify with one of them
    (``key_pinned``); when not, the bundle's own ``key.txt`` is used, which proves only
    that the bundle is self-consistent. ``progress(done, total)`` is called every
    :data:`PROGRESS_EVERY` events and once at the end. ``workers``: processes that
    recompute the events' leaf hashes; by default one per CPU (up to 16) for a bundle of
    20,000 events or more, else none: all in this process, as with ``workers=1``.

    Raises :class:`BundleError` at the first check that fails (see the module docstring
    for the checks), ``OSError`` when the file cannot be read.
    """
    trusted: list[Verifier] = []
    for vkey in trusted_keys:
        try:
            trusted.append(parse_verifier_key(vkey))
        except NoteError as exc:
            raise BundleError(f"trusted key {vkey.strip()[:80]!r} is not a verifier key: {exc}") from None
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"not a zip file ({exc}): an otaudit bundle is a zip") from None
    with archive:
        return _verify(archive, trusted, progress, workers)


def _verify(
    archive: zipfile.ZipFile,
    trusted: list[Verifier],
    progress: Callable[[int, int], None] | None,
    workers: int | None,
) -> BundleReport:
    # 1. manifest and members
    names = archive.namelist()
    seen: set[str] = set()
    for name in names:
        if name in seen and name in MEMBERS:
            raise BundleError(f"the zip holds two members named {name}")
        seen.add(name)
    missing = [name for name in MEMBERS if name not in seen]
    if missing:
        raise BundleError(f"the bundle lacks {', '.join(missing)}")
    manifest = _parse_manifest(_read_member(archive, MANIFEST, _MAX_SMALL))

    # 2. the checkpoint and its signature
    bundled = _parse_keys(_read_text(archive, KEYS), KEYS)
    if not bundled and not trusted:
        raise BundleError(f"{KEYS} holds no verifier key, and no key was given")
    note_text, key = _open_checkpoint(_read_text(archive, CHECKPOINT), trusted, bundled)
    checkpoint = parse_checkpoint(note_text)
    if checkpoint.origin != manifest.origin:
        raise BundleError(f"the checkpoint is for log {checkpoint.origin!r}, but the manifest says origin {manifest.origin!r}")
    _tenant_binding(checkpoint.origin, manifest.tenant)
    if checkpoint.size != manifest.tree_size:
        raise BundleError(
            f"the checkpoint's tree has {checkpoint.size:,} leaves, but the manifest says tree_size {manifest.tree_size:,}"
        )
    first, last = manifest.first_seq, manifest.last_seq
    if last is not None and last > checkpoint.size:
        raise BundleError(f"the manifest covers up to seq {last:,}, beyond the checkpoint's tree of {checkpoint.size:,} leaves")
    report = BundleReport(
        tenant=manifest.tenant,
        origin=checkpoint.origin,
        first_seq=first,
        last_seq=last,
        events=manifest.events,
        tree_size=checkpoint.size,
        checkpoint_time=manifest.checkpoint_time,
        key=key.vkey(),
        key_pinned=bool(trusted),
        root=checkpoint.root,
        filters=manifest.filters,
        created_at=manifest.created_at,
    )

    # 3. the leaves, and each event against its leaf
    expected = HASH_SIZE * (last - first + 1) if first is not None and last is not None else 0
    stated = archive.getinfo(LEAVES).file_size
    if stated != expected:
        raise BundleError(f"{LEAVES} is {stated:,} bytes; {_coverage(first, last)} needs {expected:,} (32 per leaf)")
    blob = _read_member(archive, LEAVES, expected)
    if len(blob) != expected:
        raise BundleError(f"{LEAVES} is {len(blob):,} bytes; {_coverage(first, last)} needs {expected:,} (32 per leaf)")
    scope = _Scope(manifest.tenant, first or 1, last or 0, blob)
    if workers is None:
        workers = _default_workers() if manifest.events >= _PARALLEL_FROM else 1
    count = _check_events(archive, scope, manifest.events, progress, workers)
    if count != manifest.events:
        raise BundleError(
            f"{EVENTS} has {count:,} events, but the manifest says {manifest.events:,}: an event line was removed or added"
        )

    # 4. the leaves lead to the signed root
    proof_bytes = _read_member(archive, RANGE_PROOF, _MAX_PROOF_HASHES * HASH_SIZE)
    if len(proof_bytes) % HASH_SIZE:
        raise BundleError(f"{RANGE_PROOF} is {len(proof_bytes):,} bytes, not a multiple of 32: it was truncated or altered")
    proof = [proof_bytes[i : i + HASH_SIZE] for i in range(0, len(proof_bytes), HASH_SIZE)]
    if first is None or last is None:
        if proof:
            raise BundleError(f"{RANGE_PROOF} holds {len(proof)} hashes, but an empty export has none")
        return report
    leaves = [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
    try:
        root = root_from_range(first - 1, last, checkpoint.size, leaves, proof)
    except ProofError as exc:
        raise BundleError(
            f"{RANGE_PROOF} does not fit {_coverage(first, last)} in a tree of {checkpoint.size:,}: {exc}"
        ) from None
    if root != checkpoint.root:
        raise BundleError(
            f"the leaves of {_coverage(first, last)} and the range proof lead to root {base64.b64encode(root).decode()},"
            f" not the checkpoint's {base64.b64encode(checkpoint.root).decode()}: {LEAVES} or {RANGE_PROOF} was altered"
        )
    return report


def _coverage(first: int | None, last: int | None) -> str:
    if first is None or last is None:
        return "an empty export"
    return _range_text(first, last)


@dataclass(frozen=True)
class _Scope:
    """What checking lines of events.ndjson needs: the tenant, the seq range and its leaf hashes."""

    tenant: str
    first: int
    last: int
    leaves: bytes


@dataclass(frozen=True)
class _Chunk:
    """The result of checking consecutive lines: how many passed, their first and last seq, the first error."""

    lines: int
    first_seq: int | None
    first_id: object
    last_seq: int
    error: str | None


def _check_chunk(scope: _Scope, start_line: int, data: bytes) -> _Chunk:
    """Check the lines in ``data`` (which follow line ``start_line``) against ``scope``, up to the first error.

    Each line must be an event record (its keys, their types), its seq in the range and
    above the previous line's in ``data``, its tenant and id those of the bundle and the
    line, and its recomputed leaf hash the one ``scope.leaves`` has at its seq. That the
    first seq is above the previous chunk's is the caller's to check.
    """
    late_error: str | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut = data.rfind(b"\n", 0, exc.start) + 1
        text = data[:cut].decode("utf-8")
        bad_line = start_line + data.count(b"\n", 0, cut) + 1
        late_error = f"{EVENTS} line {bad_line:,} is not UTF-8 ({exc.reason})"
    lines = text.split("\n")
    tail = lines.pop()  # what follows the last newline: nothing, unless the file does not end in one
    tenant, first, last, leaves = scope.tenant, scope.first, scope.last, scope.leaves
    loads = json.loads
    previous = first - 1
    first_seq: int | None = None
    first_id: object = None
    count = 0
    try:
        for line in lines:
            number = start_line + count + 1
            record: Any = None
            try:
                record = loads(line)
                seq = record["seq"]
                event_id = record["id"]
                received_at = record["received_at"]
                event = record["event"]
                seals = record["seals"]
            except (ValueError, KeyError, TypeError):
                raise BundleError(_describe_line(number, line, record)) from None
            if len(record) != len(_RECORD_KEYS):
                raise BundleError(_describe_line(number, line, record))
            if type(event) is not dict or type(seals) is not dict or type(received_at) is not str or type(event_id) is not str:
                _check_types(f"{EVENTS} line {number:,}, {_event_name(seq, event_id)}", record)
            if type(seq) is not int or not previous < seq <= last:
                _raise_bad_seq(number, seq, previous, first, last, event_id)
            if not count:
                first_seq, first_id = seq, event_id
            if event.get("tenant") != tenant or event.get("id") != event_id:
                _raise_bad_identity(seq, event_id, event, tenant)
            try:
                leaf = entry_hash_owned(event, received_at, seals)  # the record is not used after
            except (EntryError, ValueError, TypeError) as exc:
                raise BundleError(f"{_event_name(seq, event_id)}: its leaf entry cannot be made: {exc}") from None
            offset = (seq - first) * HASH_SIZE
            if not leaves.startswith(leaf, offset):
                _raise_altered(seq, event_id, leaf, leaves, first)
            previous = seq
            count += 1
        if tail:
            raise BundleError(f"{EVENTS} line {start_line + count + 1:,} does not end in a newline (was the file truncated?)")
        if late_error:
            raise BundleError(late_error)
    except BundleError as exc:
        return _Chunk(count, first_seq, first_id, previous, str(exc))
    return _Chunk(count, first_seq, first_id, previous, None)


_worker_scope: _Scope | None = None


def _init_worker(scope: _Scope) -> None:
    """Keep the scope for :func:`_worker_chunk`; leave Ctrl-C to the parent, which stops the pool."""
    global _worker_scope
    _worker_scope = scope
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_chunk(start_line: int, data: bytes) -> _Chunk:
    if _worker_scope is None:  # pragma: no cover - set by the pool's initializer
        raise RuntimeError("worker started without its scope")
    return _check_chunk(_worker_scope, start_line, data)


def _blocks(archive: zipfile.ZipFile) -> Iterator[tuple[int, bytes]]:
    """events.ndjson in blocks of whole lines: (lines before the block, its bytes)."""
    line = 0
    tail = b""
    with _zip_errors(EVENTS):
        member = archive.open(EVENTS)
    with member:
        while True:
            with _zip_errors(EVENTS):
                block = member.read(_BLOCK)
            if not block:
                break
            data = tail + block if tail else block
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if len(tail) > _MAX_LINE:
                raise BundleError(f"{EVENTS} line {line + 1:,} is longer than {_MAX_LINE:,} bytes; no event is that large")
            if cut:
                chunk = data[:cut]
                yield line, chunk
                line += chunk.count(b"\n")
    if tail:
        yield line, tail


def _default_workers() -> int:
    """One process per CPU this process may use, at most 16."""
    if hasattr(os, "sched_getaffinity"):
        return min(len(os.sched_getaffinity(0)), 16)
    return min(os.cpu_count() or 1, 16)  # pragma: no cover - not on Linux


def _check_events(
    archive: zipfile.ZipFile,
    scope: _Scope,
    total: int,
    progress: Callable[[int, int], None] | None,
    workers: int,
) -> int:
    """Check every line of events.ndjson; return how many there are.

    With ``workers > 1``, blocks of lines are checked by that many processes, and their
    results taken in order: the error reported is the first in the file, as when checking
    in this process.
    """
    count = 0
    previous = scope.first - 1
    next_progress = PROGRESS_EVERY

    def take(chunk: _Chunk) -> None:
        nonlocal count, previous, next_progress
        if chunk.first_seq is not None and chunk.first_seq <= previous:
            _raise_bad_seq(count + 1, chunk.first_seq, previous, scope.first, scope.last, chunk.first_id)
        if chunk.error is not None:
            raise BundleError(chunk.error)
        if chunk.lines:
            count += chunk.lines
            previous = chunk.last_seq
        if progress is not None and count >= next_progress and count < total:
            progress(count, total)
            next_progress = (count // PROGRESS_EVERY + 1) * PROGRESS_EVERY

    if progress is not None:
        progress(0, total)
    if workers <= 1:
        for start, data in _blocks(archive):
            take(_check_chunk(scope, start, data))
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(scope,)) as pool:
            pending: deque[Future[_Chunk]] = deque()
            try:
                for start, data in _blocks(archive):
                    pending.append(pool.submit(_worker_chunk, start, data))
                    if len(pending) > 2 * workers:
                        take(pending.popleft().result())
                while pending:
                    take(pending.popleft().result())
            finally:
                for future in pending:
                    future.cancel()
    if progress is not None:
        progress(count, total)
    return count


def _event_name(seq: object, event_id: object) -> str:
    return f"event {event_id} (seq {seq})"


def _raise_bad_seq(number: int, seq: object, previous: int, first: int, last: int, event_id: object) -> None:
    where = f"{EVENTS} line {number:,}, {_event_name(seq, event_id)}"
    if type(seq) is not int:
        raise BundleError(f"{where}: seq is not an integer")
    if not first <= seq <= last:
        raise BundleError(f"{where}: seq {seq} is outside the bundle's range {_range_text(first, last)}")
    raise BundleError(
        f"{where}: seq {seq} does not come after the previous line's seq {previous} (lines must be in increasing seq order)"
    )


def _raise_bad_identity(seq: int, event_id: object, event: dict[str, Any], tenant: str) -> None:
    where = _event_name(seq, event_id)
    if event.get("tenant") != tenant:
        raise BundleError(f"{where} belongs to tenant {event.get('tenant')!r}, not the bundle's tenant {tenant!r}")
    raise BundleError(f"{where}: the line says id {event_id!r} but the event's own id is {event.get('id')!r}")


def _raise_altered(seq: int, event_id: object, leaf: bytes, leaves: bytes, first: int) -> None:
    message = f"{_event_name(seq, event_id)} was altered: its leaf hash does not match the leaf of seq {seq} in {LEAVES}"
    position = leaves.find(leaf)
    while position >= 0 and position % HASH_SIZE:
        position = leaves.find(leaf, position + 1)
    if position >= 0:
        message += f"; it is the leaf of seq {first + position // HASH_SIZE}: events were moved or their seqs swapped"
    raise BundleError(message)


# -- writing ----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_bundle(
    out: IO[bytes] | StrPath,
    *,
    tenant: str,
    origin: str,
    checkpoint_note: str,
    keys: Sequence[str],
    events: Iterable[Mapping[str, Any]],
    first_seq: int | None,
    last_seq: int | None,
    tree_size: int,
    leaves: bytes,
    range_proof: bytes,
    checkpoint_time: str | None,
    filters: Mapping[str, Any],
    created_at: str | None = None,
) -> None:
    """Write an ``otaudit-bundle/1`` zip to ``out`` (a path, or a binary file open for writing).

    ``events`` yields ``{"seq", "id", "received_at", "event", "seals"}`` mappings in
    increasing seq order within ``[first_seq, last_seq]``; they are streamed into
    ``events.ndjson`` (memory stays constant apart from ``leaves``). ``leaves`` is the 32-byte
    leaf hashes of every seq of the range, ``range_proof`` the hashes of
    ``merkle.range_proof(first_seq - 1, last_seq, tree_size, ...)``, both concatenated.
    ``checkpoint_note`` is the signed checkpoint (its origin and size must be ``origin``
    and ``tree_size``), ``keys`` the log's verifier keys. ``created_at`` defaults to now.

    Raises :class:`BundleError` when the arguments cannot make a valid bundle (checked as
    far as is cheap: the leaves are not recomputed); a file written at ``out``'s path is
    then removed.
    """
    _check_write_arguments(tenant, origin, checkpoint_note, keys, first_seq, last_seq, tree_size, leaves, range_proof)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "tenant": tenant,
        "origin": origin,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "tree_size": tree_size,
        "checkpoint_time": checkpoint_time,
        "events": 0,  # counted while writing them
        "filters": dict(filters),
        "created_at": created_at or _now(),
    }
    members = {CHECKPOINT: checkpoint_note.encode("utf-8"), KEYS: "".join(k.strip() + "\n" for k in keys).encode("utf-8")}
    if not isinstance(out, str | os.PathLike):
        _write(out, manifest, members, events, leaves, range_proof)
        return
    try:
        with open(out, "wb") as file:
            _write(file, manifest, members, events, leaves, range_proof)
    except BaseException:
        try:
            os.unlink(out)
        except OSError:
            pass
        raise


def _check_write_arguments(
    tenant: str,
    origin: str,
    checkpoint_note: str,
    keys: Sequence[str],
    first_seq: int | None,
    last_seq: int | None,
    tree_size: int,
    leaves: bytes,
    range_proof: bytes,
) -> None:
    if not tenant:
        raise BundleError("tenant is empty")
    try:
        text, _ = signatures_of(checkpoint_note)
        checkpoint = parse_checkpoint(text)
    except (NoteError, CheckpointError) as exc:
        raise BundleError(f"checkpoint_note is not a signed checkpoint: {exc}") from None
    if checkpoint.origin != origin or checkpoint.size != tree_size:
        raise BundleError(
            f"checkpoint_note is for {checkpoint.origin!r} at size {checkpoint.size}, not {origin!r} at size {tree_size}"
        )
    if not keys:
        raise BundleError("no verifier key for key.txt")
    for vkey in keys:
        try:
            parse_verifier_key(vkey)
        except NoteError as exc:
            raise BundleError(f"key {vkey[:80]!r} is not a verifier key: {exc}") from None
    if first_seq is None or last_seq is None:
        if first_seq is not None or last_seq is not None or leaves or range_proof:
            raise BundleError("an empty export has first_seq and last_seq None, and no leaves or range proof")
        return
    if not 1 <= first_seq <= last_seq <= tree_size:
        raise BundleError(f"seq {first_seq} to {last_seq} is not a range of leaves of a tree of size {tree_size}")
    if len(leaves) != HASH_SIZE * (last_seq - first_seq + 1):
        raise BundleError(
            f"leaves is {len(leaves):,} bytes; seq {first_seq} to {last_seq} needs {HASH_SIZE * (last_seq - first_seq + 1):,}"
        )
    if len(range_proof) % HASH_SIZE or len(range_proof) > _MAX_PROOF_HASHES * HASH_SIZE:
        raise BundleError(f"range_proof is {len(range_proof):,} bytes, not a range proof's hashes")


def _write(
    file: IO[bytes],
    manifest: dict[str, Any],
    members: Mapping[str, bytes],
    events: Iterable[Mapping[str, Any]],
    leaves: bytes,
    range_proof: bytes,
) -> None:
    """Write the zip: the small members, the hashes, the events streamed, then the manifest with their count."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    first, last = manifest["first_seq"], manifest["last_seq"]
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        # Hashes do not compress: stored, not deflated.
        archive.writestr(LEAVES, leaves, compress_type=zipfile.ZIP_STORED)
        archive.writestr(RANGE_PROOF, range_proof, compress_type=zipfile.ZIP_STORED)
        count = 0
        previous = (first or 1) - 1
        with archive.open(EVENTS, "w", force_zip64=True) as member:
            batch: list[str] = []
            size = 0
            for item in events:
                seq = item["seq"]
                if type(seq) is not int or not previous < seq <= (last or 0):
                    raise BundleError(f"event {item.get('id')} has seq {seq!r}: not increasing within seq {first} to {last}")
                previous = seq
                record = {"seq": seq, "id": item["id"], "received_at": item["received_at"], "event": item["event"]}
                record["seals"] = item["seals"] or {}
                line = encode(record)
                batch.append(line)
                size += len(line)
                count += 1
                if size >= _WRITE_BATCH:
                    member.write(("\n".join(batch) + "\n").encode("utf-8"))
                    batch, size = [], 0
            if batch:
                member.write(("\n".join(batch) + "\n").encode("utf-8"))
        manifest["events"] = count
        archive.writestr(MANIFEST, (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
