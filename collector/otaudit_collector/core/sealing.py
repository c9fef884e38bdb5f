"""An event sealed for the log at ingest: its stored JSON, its seals and its leaf hash.

The leaf entry (``otaudit_verify.entry``) is the RFC 8785 JSON of the event with each
personal value replaced by ``null``, beside the salted commitments of those values. Built
naively, that is a second serialization of every event besides the one stored. Here the
event is serialized once, canonically, with a placeholder where each personal value
goes; the stored text puts the values back in place of the placeholders and the entry
puts ``null``. ``tests/integrity/test_sealing.py`` holds this to ``entry.leaf_entry`` byte
for byte.

A placeholder is a string of a NUL, its number and a NUL: the canonical JSON escapes a
NUL as ``\\u0000``, and no stored value holds one (``prepare`` rejects them), so the
placeholder's quoted text cannot occur anywhere else in the serialization.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from otaudit_verify.entry import ENTRY_VERSION, canonical_json, commitment, personal_pointers

__all__ = ["Sealed", "seal_event", "SALT_BYTES"]

SALT_BYTES = 16
"""Random bytes of each salt: 128 bits, so that a commitment cannot be reversed by guessing its value."""

_OPEN = b'"\\u0000'  # how the canonical JSON begins a placeholder ...
_CLOSE = b'\\u0000"'  # ... and ends it
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_encode_string: Callable[[str], str] = json.encoder.encode_basestring  # C-accelerated


@dataclass(frozen=True, slots=True)
class Sealed:
    text: str
    """The event as stored (JSON; not canonical, any key order)."""
    seals: str | None
    """The seals column as JSON text, or None when the event has no personal value."""
    leaf: bytes
    """The event's RFC 6962 leaf hash: SHA-256(0x00 || entry)."""


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _parent(doc: Any, pointer: str) -> tuple[Any, Any]:
    """The container holding ``pointer``'s value, and its key or index in it."""
    parts = [_unescape(part) for part in pointer.split("/")[1:]]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    return node, last


def _envelope_places(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(pointer, container, key) of the envelope's personal values in ``doc``, in pointer order:
    what ``entry.personal_pointers`` finds without a catalog's own pointers, by direct lookups
    (its general walk costs as much as the rest of sealing)."""
    found: list[tuple[str, dict[str, Any], str]] = []
    actor = doc.get("actor")
    if type(actor) is dict:
        if actor.get("email") is not None:
            found.append(("/actor/email", actor, "email"))
        actor_id = actor.get("id")
        if type(actor_id) is str and "@" in actor_id:
            found.append(("/actor/id", actor, "id"))
        if actor.get("name") is not None:
            found.append(("/actor/name", actor, "name"))
    client = doc.get("client")
    if type(client) is dict:
        if client.get("address") is not None:
            found.append(("/client/address", client, "address"))
        if client.get("user_agent") is not None:
            found.append(("/client/user_agent", client, "user_agent"))
    return found


def _json(value: Any) -> str:
    """A value as stored JSON: a string by json's C escaper (the usual case), anything else by the encoder."""
    return _encode_string(value) if type(value) is str else _dumps(value)


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def seal_event(
    doc: dict[str, Any],
    received_at: str,
    extra_pointers: Iterable[str] = (),
    random: Callable[[int], bytes] = os.urandom,
) -> Sealed:
    """Seal ``doc`` (not changed: values are swapped out and back in place) received at ``received_at``
    (as stored: RFC 3339 UTC with microseconds). ``extra_pointers``: what its catalog marks as personal."""
    extra = tuple(extra_pointers)
    places = [(p, *_parent(doc, p)) for p in personal_pointers(doc, extra)] if extra else _envelope_places(doc)
    received = canonical_json(received_at)
    if not places:
        canonical = canonical_json(doc)
        entry = b'{"committed":{},"event":' + canonical + b',"received_at":' + received + b',"v":1}'
        return Sealed(canonical.decode("utf-8"), None, hashlib.sha256(b"\x00" + entry).digest())
    salts = random(SALT_BYTES * len(places))
    values = [node[key] for _, node, key in places]
    try:
        for number, (_, node, key) in enumerate(places):
            node[key] = f"\x00{number}\x00"
        canonical = canonical_json(doc)
    finally:
        for (_, node, key), value in zip(places, values, strict=True):
            node[key] = value
    # One split at the placeholders (each is '"\u0000' N '\u0000"'; their order is the keys'):
    # the entry's event puts null in their place, the stored text the values.
    pieces = canonical.split(_OPEN)
    event_parts = [pieces[0]]
    text_parts = [pieces[0]]
    encoded = [_json(value).encode("utf-8") for value in values]
    for piece in pieces[1:]:
        end = piece.index(_CLOSE)
        rest = piece[end + len(_CLOSE) :]
        event_parts += (b"null", rest)
        text_parts += (encoded[int(piece[:end])], rest)
    event = b"".join(event_parts)
    text = b"".join(text_parts).decode("utf-8")
    seals = []
    committed: dict[str, str] = {}
    for number, ((pointer, _, _), value) in enumerate(zip(places, values, strict=True)):
        salt = salts[number * SALT_BYTES : (number + 1) * SALT_BYTES]
        seals.append(f'{_json(pointer)}:{{"salt":"{_b64(salt)}"}}')
        committed[pointer] = _b64(commitment(salt, value))
    if extra:  # a catalog's pointers may hold what JSON escapes, in any order
        committed_json = canonical_json(committed)
    else:  # the envelope's: ASCII, in JCS order already; base64 needs no escaping
        committed_json = ("{" + ",".join(f'"{p}":"{c}"' for p, c in committed.items()) + "}").encode("ascii")
    entry = (
        b'{"committed":'
        + committed_json
        + b',"event":'
        + event
        + b',"received_at":'
        + received
        + b',"v":'
        + str(ENTRY_VERSION).encode("ascii")
        + b"}"
    )
    return Sealed(text, "{" + ",".join(seals) + "}", hashlib.sha256(b"\x00" + entry).digest())
