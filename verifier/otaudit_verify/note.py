"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures, and their key encodings.

A signed note is a text that ends in a newline, a blank line, then one signature line per
key: an em dash (U+2014), a space, the key name, a space, and the base64 of the 4-byte key
ID followed by the signature over the text::

    This is an example message.

    — example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=

The signed text is ``"This is an example message.\\n"`` (its final newline included, the
blank line not). The key ID of an Ed25519 key is::

    key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]

A verifier key ("vkey") names the key, its ID in hex and the algorithm byte plus the
public key in base64; this one verifies the note above (its key ID is ``530d903a``, the
first four bytes of the signature)::

    example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k

A signer key ("skey") is the same with ``PRIVATE+KEY+`` in front and the 32-byte Ed25519
seed in place of the public key, as in Go's ``golang.org/x/mod/sumdb/note``, whose
documentation has this pair (the base64 may hold a '+'; names never do)::

    PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz
    PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW

Verifying follows the specification: signatures whose (name, key ID) match no known key are
ignored (kept in ``OpenedNote.unverified``); a signature from a known key that fails to
verify rejects the whole note; and a note with no verified signature is rejected.

otaudit signs each tenant's checkpoints with one deployment key under the tenant's origin
as key name: ``Signer(origin, deployment_key)``. The key IDs differ per name, and so do
the vkeys an auditor configures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "NoteError",
    "OpenedNote",
    "Signature",
    "Signer",
    "Verifier",
    "check_key_name",
    "generate_signer",
    "key_id",
    "load_signer_seed",
    "open_note",
    "parse_signer_key",
    "parse_verifier_key",
    "seed_text",
    "sign_note",
    "signatures_of",
]

ALG_ED25519 = 0x01
"""The signature type byte of Ed25519 in key IDs and key encodings."""

MAX_SIGNATURES = 100
"""Signature lines accepted in one note (the specification asks for at least 16)."""

_SIG_PREFIX = "\u2014 "  # em dash, space
_SKEY_PREFIX = "PRIVATE+KEY+"
_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64
_KEY_ID_SIZE = 4
_HEX_ID = re.compile(r"[0-9a-f]{8}")
# ASCII control characters other than newline: forbidden anywhere in a note.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note, signature or key is malformed, or a note does not verify."""


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 section 4): padded, canonical, nothing else."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise NoteError(f"{what} is not valid base64 ({exc}); use standard padded base64 (RFC 4648 section 4)") from None
    if _b64encode(data) != text:
        raise NoteError(f"{what} is not canonical base64; re-encode it with standard padded base64")
    return data


def check_key_name(name: str) -> None:
    """Raise ``NoteError`` unless ``name`` is a valid key name.

    A key name is non-empty and has no Unicode whitespace, no ``+`` and no control
    characters. A schema-less URL such as ``otaudit.example/acme`` is recommended.
    """
    if not name:
        raise NoteError("key name is empty; use a schema-less URL such as 'example.com/log'")
    if "+" in name:
        raise NoteError(f"key name {name!r} contains '+'; key names must not contain '+'")
    for char in name:
        if char.isspace() or ord(char) < 0x20 or char == "\x7f":
            raise NoteError(f"key name {name!r} contains whitespace or a control character ({char!r}); remove it")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"key name {name!r} is not valid Unicode (lone surrogate); fix its encoding") from None


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:_KEY_ID_SIZE]


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)
    _id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != _PUBLIC_KEY_SIZE:
            raise NoteError(f"Ed25519 public key for {self.name!r} has {len(self.public_key)} bytes; it must have 32")
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes(self.public_key))
        except ValueError as exc:
            raise NoteError(f"Ed25519 public key for {self.name!r} is invalid: {exc}") from None
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_id", key_id(self.name, self.public_key))

    @property
    def id(self) -> bytes:
        """The 4-byte key ID."""
        return self._id

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (64 bytes, without the key ID) is this key's over ``text``."""
        if len(signature) != _SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, text)
        except InvalidSignature:
            return False
        return True

    def vkey(self) -> str:
        """The verifier key text: ``name+<hex key ID>+base64(0x01 || public key)``."""
        return f"{self.name}+{self._id.hex()}+{_b64encode(bytes([ALG_ED25519]) + self.public_key)}"


class Signer:
    """A named Ed25519 private key that signs notes.

    The same key may sign under several names (``Signer(other_name, signer.private_key)``):
    each name gives a different key ID and vkey.
    """

    __slots__ = ("_id", "_key", "_name", "_public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self._name = name
        self._key = private_key
        self._public_key = private_key.public_key().public_bytes_raw()
        self._id = key_id(name, self._public_key)

    def __repr__(self) -> str:
        return f"Signer(name={self._name!r}, id={self._id.hex()})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    @property
    def id(self) -> bytes:
        """The 4-byte key ID."""
        return self._id

    def verifier(self) -> Verifier:
        return Verifier(self._name, self._public_key)

    def sign(self, text: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``text`` (without the key ID)."""
        return self._key.sign(text)

    def skey(self) -> str:
        """The signer key text: ``PRIVATE+KEY+name+<hex key ID>+base64(0x01 || 32-byte seed)``."""
        return f"{_SKEY_PREFIX}{self._name}+{self._id.hex()}+{_b64encode(bytes([ALG_ED25519]) + self._key.private_bytes_raw())}"


def generate_signer(name: str) -> Signer:
    """A new Ed25519 key (32 bytes from ``os.urandom``) that signs as ``name``."""
    return Signer(name, Ed25519PrivateKey.from_private_bytes(os.urandom(32)))


def _parse_key_parts(name: str, hex_id: str, b64: str, what: str) -> tuple[bytes, bytes]:
    """Check name, ID and algorithm of a key encoding; return (key ID, 32-byte key material)."""
    check_key_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise NoteError(f"{what} key ID {hex_id!r} is not 8 lowercase hex digits")
    data = _b64decode(b64, f"{what} key material")
    if len(data) != 1 + _PUBLIC_KEY_SIZE:
        raise NoteError(f"{what} key material has {len(data)} bytes; an Ed25519 key has 33 (0x01 and 32 key bytes)")
    if data[0] != ALG_ED25519:
        raise NoteError(f"{what} has signature type 0x{data[0]:02x}; only Ed25519 (0x01) is supported")
    return bytes.fromhex(hex_id), data[1:]


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse ``name+<hex key ID>+base64(0x01 || public key)``; the key ID must match."""
    parts = vkey.strip().split("+", 2)  # names hold no '+'; base64 may
    if len(parts) != 3:
        raise NoteError("a verifier key has three '+'-separated parts: name+<8 hex key ID>+<base64 of 0x01 and the public key>")
    expected_id, public_key = _parse_key_parts(parts[0], parts[1], parts[2], "verifier key")
    verifier = Verifier(parts[0], public_key)
    if verifier.id != expected_id:
        raise NoteError(
            f"verifier key ID {parts[1]} does not match its name and public key (computed {verifier.id.hex()}); "
            "the key was altered or copied incompletely"
        )
    return verifier


def parse_signer_key(skey: str) -> Signer:
    """Parse ``PRIVATE+KEY+name+<hex key ID>+base64(0x01 || seed)``; the key ID must match."""
    text = skey.strip()
    if not text.startswith(_SKEY_PREFIX):
        raise NoteError("a signer key starts with 'PRIVATE+KEY+'; is this a verifier key or a bare seed?")
    parts = text[len(_SKEY_PREFIX) :].split("+", 2)  # names hold no '+'; base64 may
    if len(parts) != 3:
        raise NoteError("a signer key is PRIVATE+KEY+name+<8 hex key ID>+<base64 of 0x01 and the 32-byte seed>")
    expected_id, seed = _parse_key_parts(parts[0], parts[1], parts[2], "signer key")
    signer = Signer(parts[0], Ed25519PrivateKey.from_private_bytes(seed))
    if signer.id != expected_id:
        raise NoteError(
            f"signer key ID {parts[1]} does not match its name and key (computed {signer.id.hex()}); "
            "the key was altered or copied incompletely"
        )
    return signer


def load_signer_seed(text: str) -> Ed25519PrivateKey:
    """An Ed25519 key from a key file's text: a base64 32-byte seed, or a ``PRIVATE+KEY+`` signer key.

    The name in a signer key is ignored: otaudit signs under each tenant's origin.
    """
    text = text.strip()
    if text.startswith(_SKEY_PREFIX):
        return parse_signer_key(text).private_key
    seed = _b64decode(text, "signing key seed")
    if len(seed) != 32:
        raise NoteError(f"signing key seed has {len(seed)} bytes; it must be the base64 of a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def seed_text(key: Ed25519PrivateKey) -> str:
    """The base64 of the key's 32-byte seed: the text ``load_signer_seed`` reads back."""
    return _b64encode(key.private_bytes_raw())


def _check_text(text: str) -> bytes:
    """The UTF-8 of a note text, after checking it may be signed."""
    if not text:
        raise NoteError("note text is empty; a note text is one or more lines, each ending in a newline")
    if not text.endswith("\n"):
        raise NoteError("note text does not end in a newline; append '\\n'")
    bad = _CONTROL.search(text)
    if bad:
        raise NoteError(f"note text contains control character {bad.group()!r} at offset {bad.start()}; only newline is allowed")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note text is not valid Unicode (lone surrogate); fix its encoding") from None


def sign_note(text: str, *signers: Signer) -> str:
    """``text``, a blank line, and one signature line per signer, in the order given."""
    data = _check_text(text)
    if not signers:
        raise NoteError("a signed note needs at least one signer")
    lines = [f"{_SIG_PREFIX}{s.name} {_b64encode(s.id + s.sign(data))}\n" for s in signers]
    return text + "\n" + "".join(lines)


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, 4-byte key ID, and the signature without the ID."""

    name: str
    id: bytes
    signature: bytes


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures from known keys all verified (at least one)."""

    text: str
    verified: tuple[Signature, ...]
    unverified: tuple[Signature, ...]


def signatures_of(note: str | bytes) -> tuple[str, tuple[Signature, ...]]:
    """Split a note into its text and signature lines, without verifying anything."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError(f"note is not valid UTF-8 (byte offset {exc.start}); notes are UTF-8 text") from None
    bad = _CONTROL.search(note)
    if bad:
        raise NoteError(f"note contains control character {bad.group()!r} at offset {bad.start()}; only newline is allowed")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures; a note is text, a blank line, then signature lines")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines after its last blank line")
    if not block.endswith("\n"):
        raise NoteError("note's last signature line does not end in a newline (was the note truncated?)")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines; at most {MAX_SIGNATURES} are accepted")
    signatures: list[Signature] = []
    for number, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"signature line {number} does not start with an em dash (U+2014) and a space: {line[:40]!r}")
        name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not space or not b64:
            raise NoteError(f"signature line {number} is not '— <key name> <base64 signature>'")
        try:
            check_key_name(name)
        except NoteError as exc:
            raise NoteError(f"signature line {number}: {exc}") from None
        raw = _b64decode(b64, f"signature line {number}")
        if len(raw) < _KEY_ID_SIZE + 1:
            raise NoteError(f"signature line {number} has {len(raw)} bytes; it must hold a 4-byte key ID and a signature")
        signatures.append(Signature(name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:]))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note text is not valid Unicode (lone surrogate); fix its encoding") from None
    return text, tuple(signatures)


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> OpenedNote:
    """Parse a note and verify it against trusted keys.

    Raises ``NoteError`` if the note is malformed, if a signature from a known key (same name
    and key ID) fails to verify, if a known key signed twice, or if no known key signed it.
    """
    known: dict[tuple[str, bytes], Verifier] = {}
    for trusted in verifiers:
        other = known.setdefault((trusted.name, trusted.id), trusted)
        if other.public_key != trusted.public_key:
            raise NoteError(f"two trusted keys share name {trusted.name!r} and key ID {trusted.id.hex()}; remove one")
    text, signatures = signatures_of(note)
    data = text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for sig in signatures:
        verifier = known.get((sig.name, sig.id))
        if verifier is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if any(v.name == sig.name and v.id == sig.id for v in verified):
            raise NoteError(f"note has two signatures from key {sig.name!r} ({sig.id.hex()}); a key signs a note once")
        if not verifier.verify(data, sig.signature):
            raise NoteError(
                f"signature by {sig.name!r} (key ID {sig.id.hex()}) does not verify: the note was altered or signed "
                "by a different key with the same name and ID; do not trust it"
            )
        verified.append(sig)
    if not verified:
        names = ", ".join(f"{s.name} ({s.id.hex()})" for s in signatures)
        trusted_keys = ", ".join(f"{name} ({kid.hex()})" for name, kid in known) or "none"
        raise NoteError(f"note is not signed by a trusted key: signed by {names}; trusted: {trusted_keys}")
    return OpenedNote(text, tuple(verified), tuple(unverified))
