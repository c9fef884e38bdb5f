"""C2SP checkpoints (c2sp.org/tlog-checkpoint), tenant origins, and C2SP tlog proofs (c2sp.org/tlog-proof).

A checkpoint is the text of a signed note (see ``note``): the log's origin, its tree size
in decimal, and the base64 of its RFC 6962 root hash, one per line, then optional
extension lines::

    example.com/behind-the-sofa
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

otaudit keeps one log per tenant. Its origin is the deployment's name, a slash, and the
tenant id percent-encoded (every character outside ``A-Z a-z 0-9 . _ ~ -`` becomes the
``%XX`` of its UTF-8 bytes, hex in upper case), so that an origin is a valid key name (no
space, no ``+``) and maps back to exactly one tenant::

    origin_for("otaudit.example", "acme")        == "otaudit.example/acme"
    origin_for("otaudit.example", "Ann's team")  == "otaudit.example/Ann%27s%20team"
    origin_for("otaudit.example", "a+b/ç")       == "otaudit.example/a%2Bb%2F%C3%A7"

A tlog proof is an offline proof that entry ``index`` is in the tree of a signed
checkpoint: a header line, an optional ``extra`` line (unauthenticated base64 data), the
index, the inclusion proof's hashes in base64 one per line (from the leaf's sibling up),
an empty line, and the signed checkpoint note verbatim. For a tree of the two entries
``hello`` and ``world``, the proof of ``world`` is the leaf hash of ``hello``
(``SHA-256(0x00 || "hello")``), the root is ``SHA-256(0x01 || that || SHA-256(0x00 ||
"world"))``, and the checkpoint is signed by the Ed25519 key whose seed is 32 zero bytes
(vkey ``otaudit.example/acme+06ffdeba+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop``)::

    c2sp.org/tlog-proof@v1
    index 1
    iipcm3aIJ95alVLDigRMZpWcaPbS8htSYK9U0vh9uCc=

    otaudit.example/acme
    2
    JCMzOarc7fKH0mJBPwPAKOuNs5ft0yooeAkRUbmb8g8=

    — otaudit.example/acme Bv/eusSeInB393SG5EVZG1cWmk0x52TloxfYZ6Su1HAlGvI31LQgKAdYD4mMkFt4TmGPN0ft9mC5WykW5N25IKdefQc=

Parsing is strict: anything the specifications do not allow raises ``CheckpointError``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from otaudit_verify.note import NoteError, signatures_of

__all__ = [
    "HASH_SIZE",
    "MAX_SIZE",
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "CheckpointError",
    "TlogProof",
    "origin_for",
    "parse_checkpoint",
    "parse_tlog_proof",
    "tenant_of",
]

HASH_SIZE = 32
"""Bytes in a SHA-256 root or proof hash."""

MAX_SIZE = 2**63 - 1
"""The largest tree size or index accepted (a signed 64-bit integer, as in PostgreSQL)."""

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"

_MAX_PROOF_HASHES = 63  # a tree of at most 2**63 - 1 leaves is at most 63 levels deep
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-")
_ESCAPED = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+")


class CheckpointError(ValueError):
    """A checkpoint, origin or tlog proof is malformed."""


def _b64hash(text: str, what: str) -> bytes:
    """Decode strict, canonical, padded base64 of exactly one 32-byte hash."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise CheckpointError(f"{what} {text[:60]!r} is not valid base64; use standard padded base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise CheckpointError(f"{what} {text[:60]!r} is not canonical base64; re-encode it")
    if len(data) != HASH_SIZE:
        raise CheckpointError(f"{what} decodes to {len(data)} bytes; a SHA-256 hash has 32")
    return data


def _decimal(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise CheckpointError(f"{what} {text[:30]!r} is not a decimal number without leading zeros")
    value = int(text)
    if value > MAX_SIZE:
        raise CheckpointError(f"{what} {text[:30]} is larger than {MAX_SIZE}")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """An origin, a tree size and a root hash: the text a log signs."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin:
            raise CheckpointError("checkpoint origin is empty; the origin names the log, e.g. 'example.com/log'")
        for line, what in [(self.origin, "origin"), *((e, "extension line") for e in self.extensions)]:
            if not line:
                raise CheckpointError("checkpoint extension lines must be non-empty")
            if "\n" in line or _CONTROL.search(line):
                raise CheckpointError(f"checkpoint {what} {line[:60]!r} contains a newline or control character")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size <= MAX_SIZE:
            raise CheckpointError(f"checkpoint size {self.size!r} is not an integer from 0 to {MAX_SIZE}")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root has {len(self.root)} bytes; a SHA-256 hash has 32")

    def text(self) -> str:
        """The note text: origin, size, base64 root and extension lines, each ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (not the whole signed note: open it with ``note.open_note`` first)."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end in a newline; pass the note text, e.g. OpenedNote.text")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint has {len(lines)} lines; it needs origin, tree size and root hash")
    origin, size, root, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin (line 1) is empty")
    for number, line in enumerate(extensions, 4):
        if not line:
            raise CheckpointError(
                f"checkpoint line {number} is empty; extension lines must be non-empty (was a signed note passed "
                "instead of its text?)"
            )
    return Checkpoint(
        origin,
        _decimal(size, "checkpoint tree size (line 2)"),
        _b64hash(root, "checkpoint root hash (line 3)"),
        tuple(extensions),
    )


def _check_deployment(deployment: str) -> None:
    if not deployment:
        raise CheckpointError("deployment name is empty; use a schema-less URL such as 'audit.example.com'")
    if deployment.endswith("/"):
        raise CheckpointError(f"deployment name {deployment!r} ends in '/'; remove it (the origin adds '/<tenant>')")
    if "+" in deployment:
        raise CheckpointError(f"deployment name {deployment!r} contains '+'; origins are key names, which cannot contain '+'")
    for char in deployment:
        if char.isspace() or ord(char) < 0x20 or char == "\x7f":
            raise CheckpointError(f"deployment name {deployment!r} contains whitespace or a control character; remove it")
    try:
        deployment.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"deployment name {deployment!r} is not valid Unicode (lone surrogate)") from None


def _escape(tenant: str) -> str:
    if tenant.isascii() and all(c in _UNRESERVED for c in tenant):
        return tenant
    parts: list[str] = []
    for char in tenant:
        if char in _UNRESERVED:
            parts.append(char)
        else:
            parts.extend(f"%{b:02X}" for b in char.encode("utf-8"))
    return "".join(parts)


def origin_for(deployment: str, tenant: str) -> str:
    """The origin (and key name) of a tenant's log: ``deployment/<percent-encoded tenant>``."""
    _check_deployment(deployment)
    if not tenant:
        raise CheckpointError("tenant id is empty; every log belongs to a tenant")
    try:
        tenant.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"tenant id {tenant!r} is not valid Unicode (lone surrogate)") from None
    return f"{deployment}/{_escape(tenant)}"


def tenant_of(origin: str, deployment: str) -> str:
    """The tenant whose log has ``origin``: the inverse of ``origin_for``."""
    _check_deployment(deployment)
    prefix = deployment + "/"
    if not origin.startswith(prefix):
        raise CheckpointError(f"origin {origin!r} is not a tenant log of deployment {deployment!r} (expected {prefix}<tenant>)")
    escaped = origin[len(prefix) :]
    if not _ESCAPED.fullmatch(escaped):
        raise CheckpointError(
            f"origin {origin!r}: {escaped!r} is not a percent-encoded tenant id (only A-Z a-z 0-9 . _ ~ - and %XX with upper-case hex)"
        )
    raw = bytearray()
    position = 0
    while position < len(escaped):
        if escaped[position] == "%":
            raw.append(int(escaped[position + 1 : position + 3], 16))
            position += 3
        else:
            raw.append(ord(escaped[position]))
            position += 1
    try:
        tenant = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"origin {origin!r}: the percent-encoded tenant id is not UTF-8") from None
    if _escape(tenant) != escaped:
        raise CheckpointError(f"origin {origin!r}: the tenant id is not encoded canonically (expected {_escape(tenant)!r})")
    return tenant


@dataclass(frozen=True)
class TlogProof:
    """A C2SP tlog proof: an entry index, its inclusion proof, and the signed checkpoint note."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint: str
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or isinstance(self.index, bool) or not 0 <= self.index <= MAX_SIZE:
            raise CheckpointError(f"tlog proof index {self.index!r} is not an integer from 0 to {MAX_SIZE}")
        if len(self.proof) > _MAX_PROOF_HASHES:
            raise CheckpointError(f"tlog proof has {len(self.proof)} hashes; a tree of at most 2**63 leaves needs at most 63")
        for number, node in enumerate(self.proof):
            if len(node) != HASH_SIZE:
                raise CheckpointError(f"tlog proof hash {number} has {len(node)} bytes; a SHA-256 hash has 32")
        if self.extra is not None and not self.extra:
            raise CheckpointError("tlog proof extra data is empty; pass None to omit the extra line")
        try:
            text, _ = signatures_of(self.checkpoint)
        except NoteError as exc:
            raise CheckpointError(f"tlog proof checkpoint is not a signed note: {exc}") from None
        parse_checkpoint(text)

    def text(self) -> str:
        """The ``.tlog-proof`` text."""
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode("ascii"))
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(node).decode("ascii") for node in self.proof)
        return "\n".join(lines) + "\n\n" + self.checkpoint


def parse_tlog_proof(text: str) -> TlogProof:
    """Parse a ``.tlog-proof`` text. The checkpoint is checked for shape only, not verified."""
    head, separator, checkpoint = text.partition("\n\n")
    if not separator:
        raise CheckpointError("tlog proof has no empty line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise CheckpointError(f"tlog proof starts with {lines[0][:40]!r}; expected {TLOG_PROOF_HEADER!r}")
    position = 1
    extra: bytes | None = None
    if position < len(lines) and lines[position].startswith("extra "):
        b64 = lines[position][len("extra ") :]
        try:
            extra = base64.b64decode(b64.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise CheckpointError("tlog proof extra line is not valid base64") from None
        if base64.b64encode(extra).decode("ascii") != b64:
            raise CheckpointError("tlog proof extra line is not canonical base64; re-encode it")
        if not extra:
            raise CheckpointError("tlog proof extra line is empty; omit the line when there is no extra data")
        position += 1
    if position >= len(lines) or not lines[position].startswith("index "):
        raise CheckpointError("tlog proof has no 'index N' line after its header (and optional extra line)")
    index = _decimal(lines[position][len("index ") :], "tlog proof index")
    proof = tuple(_b64hash(line, f"tlog proof hash {number}") for number, line in enumerate(lines[position + 1 :]))
    return TlogProof(index, proof, checkpoint, extra)
