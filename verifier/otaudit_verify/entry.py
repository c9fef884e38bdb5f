"""The leaf entry of an audit event: RFC 8785 canonical JSON, with personal values as salted commitments.

Each stored event is a JSON document ``doc`` and the time the collector received it. Its
leaf in the tenant's Merkle tree is the RFC 6962 leaf hash ``SHA-256(0x00 || entry)`` of::

    entry = canonical_json({
        "v": 1,
        "event": doc, with the value at every sealed pointer replaced by null,
        "received_at": received_at,
        "committed": {pointer: base64(SHA-256(salt || canonical_json(value)))},
    })

``canonical_json`` is RFC 8785 (JCS). Personal values (``PERSONAL_POINTERS``, an actor id
that looks like an email address, and pointers a catalog names) enter the leaf only as
salted commitments. The salts are stored beside the event as its *seals*,
``{pointer: {"salt": base64(16 random bytes)}}``. Erasing a person's value replaces it in
the document with a placeholder and its seal with ``{"commitment": base64(...)}``: the
value and its salt are gone, and every leaf, and so every Merkle proof, stays the same.

Worked example (a zero salt for readability; real salts are random)::

    doc = {"id": "e-1", "tenant": "acme", "event": "login",
           "actor": {"type": "user", "email": "ann@acme.test"}}
    received_at = "2026-01-02T03:04:05Z"
    seals = {"/actor/email": {"salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}

The commitment is ``SHA-256(16 zero bytes || b'"ann@acme.test"')``, in base64
``S1kUk2oHkjWQ9vGShWoR5Vl0BIb1fGtZSTAjnF9pKiw=``::

    $ (head -c 16 /dev/zero; printf '"ann@acme.test"') | sha256sum
    4b5914936a07923590f6f192856a11e559740486f57c6b594930239c5f692a2c  -

The entry is these 210 bytes (keys sorted, no whitespace, the email now null)::

    {"committed":{"/actor/email":"S1kUk2oHkjWQ9vGShWoR5Vl0BIb1fGtZSTAjnF9pKiw="},"event":{"actor":{"email":null,"type":"user"},"event":"login","id":"e-1","tenant":"acme"},"received_at":"2026-01-02T03:04:05Z","v":1}

and its leaf hash, with ``ENTRY`` set to them::

    $ (printf '\\0'; printf '%s' "$ENTRY") | sha256sum
    e8acb7be8e9383686b12f7830bf52deebb89a3e13e472d05e605597def13138b  -

After ``erase(doc, seals, "/actor/email")`` the document says ``"email": "[erased]"``, the
seal is ``{"commitment": "S1kUk2oHkjWQ9vGShWoR5Vl0BIb1fGtZSTAjnF9pKiw="}``, and the entry
and the hash are the same.

``tests/verify/test_entry.py`` asserts these bytes and this hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

__all__ = [
    "ENTRY_VERSION",
    "PERSONAL_POINTERS",
    "SALT_SIZE",
    "EntryError",
    "canonical_json",
    "commitment",
    "entry_hash",
    "entry_hash_owned",
    "erase",
    "leaf_entry",
    "leaf_entry_owned",
    "personal_pointers",
    "seal",
]

ENTRY_VERSION = 1

PERSONAL_POINTERS = ("/actor/email", "/actor/name", "/client/address", "/client/user_agent")
"""Committed whenever present and not null; so is ``/actor/id`` when it is a string with '@'."""

SALT_SIZE = 16

_SAFE_INTEGER = 2**53


class EntryError(ValueError):
    """A value is not canonical JSON, or a pointer or seal does not fit the event."""


# --- RFC 8785 canonical JSON --------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False, sort_keys=True, separators=(",", ":"))
_encode_string = encode_basestring  # json.dumps(ensure_ascii=False) escaping, the same as JSON.stringify

# The fast path's number check runs on the output bytes at C speed. In json's compact
# output a float (repr: 1.5, 1e+16, 2.5e-07) or an integer beyond 2**53 (16 or more digits)
# is a token between one of ':,[' and one of ',]}'. With the digits deleted, '-' read as
# '+' and every closer read as ',', a float's token ends in '.,' or 'e+,'; with the digits
# read as '0', a long integer's ends in sixteen zeros and ','. Text inside strings can
# look the same ("10.0.0.1, "): then a regular expression for whole tokens decides, and
# only a string that holds one (":1.5,") costs the full serializer.
_NO_DIGITS = bytes.maketrans(b"-]}", b"+,,")
_ZERO_DIGITS = bytes.maketrans(b"123456789]}", b"000000000,,")
_NUMBER_TOKEN = re.compile(rb"[:,\[]-?(?:[0-9]+(?:\.[0-9]+)?e[+-][0-9]+|[0-9]+\.[0-9]+|[0-9]{16,})[,\]}]")
# UTF-16 order differs from code point order only between a character in U+E000-U+FFFF
# (UTF-8 lead byte 0xEE or 0xEF) and one beyond U+FFFF (0xF0-0xF4; an emoji, say): the
# fast path needs output without one or the other. Deleting these bytes keeps the rest.
_ALL_BUT_EE_EF = bytes(range(0xEE)) + bytes(range(0xF0, 0x100))
_ALL_BUT_F0_F4 = bytes(range(0xF0)) + bytes(range(0xF5, 0x100))


def _numbers_are_plain(data: bytes) -> bool:
    """No float and no integer beyond 2**53 in json's compact output (false negatives allowed)."""
    skeleton = data.translate(_NO_DIGITS, b"0123456789")
    if b".," in skeleton or b"e+," in skeleton or b"0000000000000000," in data.translate(_ZERO_DIGITS):
        return _NUMBER_TOKEN.search(data) is None
    return True


def _fast(value: Any) -> bytes | None:
    """The JCS of a dict or list by json's C encoder, or None where that would not be JCS."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return None  # not JSON: the full serializer says what is wrong
    data = _utf8(text)
    if not _numbers_are_plain(data):
        return None
    if not text.isascii() and data.translate(None, _ALL_BUT_EE_EF) and data.translate(None, _ALL_BUT_F0_F4):
        return None  # perhaps keys that UTF-16 orders differently
    return data


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EntryError(
            f"string contains a lone surrogate (U+{ord(text[exc.start]):04X}); JSON text must be valid Unicode"
        ) from None


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) serialization of a JSON value, as UTF-8.

    ``value`` is JSON data as ``json.loads`` returns it: dicts with string keys, lists (or
    tuples), strings, ints, floats, booleans and None. Object keys are sorted by their
    UTF-16 code units; numbers are written as ECMAScript writes the IEEE double (so an
    integer beyond 2**53 becomes its double's form, and 1.0 is ``1``); strings are escaped
    as ``JSON.stringify`` does. NaN, infinities, lone surrogates and other types raise
    ``EntryError``.

    The fast path is ``json``'s C encoder, whose output is JCS whenever the value has no
    float, no integer beyond 2**53, and not both a character in U+E000-U+FFFF and one
    beyond U+FFFF (the only pairs that UTF-16 and code point order sort differently). Its
    output bytes tell, at C speed, without a walk over the value; otherwise the full
    serializer runs. Keys must be strings: the fast path, like ``json.dumps``, would write
    an int key 1 as "1" where the full serializer raises ``EntryError``.
    """
    if isinstance(value, (dict, list, tuple)):
        data = _fast(value)
        if data is not None:
            return data
    elif isinstance(value, str):
        return _utf8(_encode_string(value))
    parts: list[str] = []
    try:
        _serialize(value, parts)
    except RecursionError:
        raise EntryError("value is nested too deeply (or contains itself); JSON values must be finite trees") from None
    return _utf8("".join(parts))


def _number(number: float) -> str:
    """ECMAScript Number.prototype.toString of a finite double."""
    if not math.isfinite(number):
        raise EntryError(f"number {number!r} is not finite; JSON has no NaN or Infinity")
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    stripped = digits.rstrip("0")
    # value = int(stripped) * 10 ** scale; ECMAScript's n is scale + k, k = number of digits
    scale = int(exponent or "0") - len(fraction) + (len(digits) - len(stripped))
    digits, k = stripped, len(stripped)
    n = scale + k
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    mark = "+" if e >= 0 else "-"
    if k == 1:
        return f"{sign}{digits}e{mark}{abs(e)}"
    return f"{sign}{digits[0]}.{digits[1:]}e{mark}{abs(e)}"


def _utf16(key: str) -> bytes:
    try:
        return key.encode("utf-16-be")
    except UnicodeEncodeError:
        raise EntryError(f"object key {key!r} contains a lone surrogate; JSON text must be valid Unicode") from None


def _serialize(value: Any, out: list[str]) -> None:
    """The full serializer, for what the fast path cannot do."""
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
            out.append(int.__repr__(value))
        else:
            try:
                out.append(_number(float(value)))
            except OverflowError:
                raise EntryError(f"integer {value} is beyond the largest IEEE double; JSON numbers are doubles") from None
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[]")
            return
        out.append("[")
        for item in value:
            _serialize(item, out)
            out.append(",")
        out[-1] = "]"
    elif isinstance(value, (dict, Mapping)):
        if not value:
            out.append("{}")
            return
        keys = list(value)
        try:
            joined = "".join(keys)
        except TypeError:
            bad = next(key for key in keys if not isinstance(key, str))
            raise EntryError(f"object key {bad!r} is a {type(bad).__name__}; JSON object keys are strings") from None
        # Code point order is UTF-16 order for ASCII keys (and for most others: see _fast).
        keys.sort(key=None if joined.isascii() else _utf16)
        out.append("{")
        for key in keys:
            out.append(_encode_string(key))
            out.append(":")
            _serialize(value[key], out)
            out.append(",")
        out[-1] = "}"
    else:
        raise EntryError(f"{type(value).__name__} value {value!r:.60} is not JSON; convert it to a string, number, list or dict")


# --- JSON pointers ------------------------------------------------------------------------

_BAD_ESCAPE = re.compile(r"~(?![01])")
_INDEX = re.compile(r"0|[1-9][0-9]*")


def _tokens(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 pointer (not the root pointer "")."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise EntryError(f"pointer {pointer!r} does not start with '/'; use an RFC 6901 JSON pointer such as '/actor/email'")
    if "~" not in pointer:
        return pointer[1:].split("/")
    if _BAD_ESCAPE.search(pointer):
        raise EntryError(f"pointer {pointer!r} has a '~' not followed by 0 or 1; write '~' as '~0' and '/' as '~1'")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _escape_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _child(container: Any, token: str) -> tuple[bool, Any]:
    """(found, value) of one step into a dict or list."""
    if isinstance(container, (dict, Mapping)):  # dict first: the ABC check is slow
        if token in container:
            return True, container[token]
    elif isinstance(container, (list, tuple)) and _INDEX.fullmatch(token) and int(token) < len(container):
        return True, container[int(token)]
    return False, None


def _resolve(doc: Any, pointer: str) -> tuple[bool, Any]:
    value = doc
    for token in _tokens(pointer):
        found, value = _child(value, token)
        if not found:
            return False, None
    return True, value


def _expand(doc: Any, pattern: str) -> list[str]:
    """The pointers a pattern names in doc, a '*' token matching every key or index."""
    matches: list[tuple[str, Any]] = [("", doc)]
    for token in _tokens(pattern):
        following: list[tuple[str, Any]] = []
        for prefix, value in matches:
            if token == "*":
                if isinstance(value, (dict, Mapping)):
                    following.extend((f"{prefix}/{_escape_token(k)}", v) for k, v in value.items())
                elif isinstance(value, (list, tuple)):
                    following.extend((f"{prefix}/{i}", v) for i, v in enumerate(value))
            else:
                found, child = _child(value, token)
                if found:
                    following.append((f"{prefix}/{_escape_token(token)}", child))
        matches = following
    return [pointer for pointer, value in matches if value is not None]


def _outermost(pointers: Iterable[str]) -> list[str]:
    """Sorted, unique, without pointers inside another one (its commitment covers them)."""
    result: list[str] = []
    for pointer in sorted(set(pointers)):
        # In sorted order a pointer's descendants follow it, though not always directly.
        if not any(pointer.startswith(outer + "/") for outer in result):
            result.append(pointer)
    return result


def personal_pointers(doc: Mapping[str, Any], extra: Iterable[str] = ()) -> list[str]:
    """The pointers in ``doc`` whose values are to be committed, sorted and unique.

    ``PERSONAL_POINTERS``, ``/actor/id`` when it is a string with '@', and each ``extra``
    pattern (a catalog's, where a ``*`` token matches every key of an object or every
    index of an array), whenever the value is present and not null. A pointer inside
    another selected one is left out: the outer value's commitment covers it.
    """
    found = [pointer for pointer in PERSONAL_POINTERS if _resolve(doc, pointer)[1] is not None]
    actor_id = _resolve(doc, "/actor/id")[1]
    if isinstance(actor_id, str) and "@" in actor_id:
        found.append("/actor/id")
    for pattern in extra:
        found.extend(_expand(doc, pattern))
    return _outermost(found)


def _check_disjoint(pointers: Iterable[str]) -> None:
    """Refuse a pointer inside another: replacing the outer value would remove the inner one."""
    known = set(pointers)
    for pointer in known:
        slash = pointer.find("/", 1)
        while slash > 0:
            if pointer[:slash] in known:
                raise EntryError(f"sealed pointers {pointer[:slash]!r} and {pointer!r} overlap; seal only the outer one")
            slash = pointer.find("/", slash + 1)


def _substitute(doc: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of doc with the value at each pointer replaced, and the values replaced.

    Only the containers on the pointers' paths are copied; doc is not changed.
    """
    if not isinstance(doc, (dict, Mapping)):
        raise EntryError(f"event document is a {type(doc).__name__}; it must be a JSON object")
    root: dict[str, Any] = dict(doc)
    copies: dict[tuple[str, ...], Any] = {(): root}
    old: dict[str, Any] = {}
    for pointer, new in values.items():
        tokens = _tokens(pointer)
        container: Any = root
        for depth, token in enumerate(tokens):
            found, child = _child(container, token)
            if not found:
                raise EntryError(f"sealed pointer {pointer!r} is not in the event; seal only values the event has")
            key: str | int = token if isinstance(container, dict) else int(token)
            if depth == len(tokens) - 1:
                old[pointer] = child
                container[key] = new
                break
            path = tuple(tokens[: depth + 1])
            copy = copies.get(path)
            if copy is None:
                if isinstance(child, (dict, Mapping)):
                    copy = dict(child)
                elif isinstance(child, (list, tuple)):
                    copy = list(child)
                else:
                    raise EntryError(f"sealed pointer {pointer!r} is not in the event; seal only values the event has")
                copies[path] = copy
                container[key] = copy
            container = copy
    return root, old


# --- seals, commitments, entries ----------------------------------------------------------


def _b64decode(text: Any, size: int, what: str) -> bytes:
    """Strict, canonical, padded base64 of exactly size bytes."""
    if isinstance(text, str) and text.isascii():
        encoded = text.encode("ascii")
        try:
            data = binascii.a2b_base64(encoded, strict_mode=True)
        except binascii.Error:
            pass
        else:
            if len(data) == size and binascii.b2a_base64(data, newline=False) == encoded:
                return data
    raise EntryError(f"{what} is not the standard base64 of {size} bytes")


def seal(
    doc: Mapping[str, Any], pointers: Sequence[str], random: Callable[[int], bytes] = os.urandom
) -> dict[str, dict[str, str]]:
    """A fresh salt for each pointer: ``{pointer: {"salt": base64(16 random bytes)}}``, stored beside the event."""
    unique = sorted(set(pointers))
    _check_disjoint(unique)
    seals: dict[str, dict[str, str]] = {}
    for pointer in unique:
        if not _resolve(doc, pointer)[0]:
            raise EntryError(f"pointer {pointer!r} is not in the event; seal only values the event has")
        salt = random(SALT_SIZE)
        if len(salt) != SALT_SIZE:
            raise EntryError(f"random source returned {len(salt)} bytes for a {SALT_SIZE}-byte salt")
        seals[pointer] = {"salt": base64.b64encode(salt).decode("ascii")}
    return seals


def commitment(salt: bytes, value: Any) -> bytes:
    """``SHA-256(salt || canonical_json(value))``."""
    return hashlib.sha256(salt + canonical_json(value)).digest()


def _committed(pointer: str, form: Any, value: Any) -> bytes:
    """The commitment of one seal: computed from a salt, or kept after erasure."""
    if isinstance(form, (dict, Mapping)) and len(form) == 1:
        if "salt" in form:
            return commitment(_b64decode(form["salt"], SALT_SIZE, f"salt of sealed pointer {pointer!r}"), value)
        if "commitment" in form:
            return _b64decode(form["commitment"], 32, f"commitment of sealed pointer {pointer!r}")
    raise EntryError(f"seal of {pointer!r} is neither {{'salt': ...}} nor {{'commitment': ...}}: {form!r:.80}")


def leaf_entry(doc: Mapping[str, Any], received_at: str, seals: Mapping[str, Mapping[str, str]]) -> bytes:
    """The canonical JSON entry of an event, the leaf data its Merkle leaf hash is over."""
    if not isinstance(received_at, str):
        raise EntryError(f"received_at is a {type(received_at).__name__}; it must be the stored timestamp string")
    _check_disjoint(seals)
    event, values = _substitute(doc, dict.fromkeys(seals))
    committed = {
        pointer: base64.b64encode(_committed(pointer, form, values[pointer])).decode("ascii") for pointer, form in seals.items()
    }
    return canonical_json({"v": ENTRY_VERSION, "event": event, "received_at": received_at, "committed": committed})


def entry_hash(doc: Mapping[str, Any], received_at: str, seals: Mapping[str, Mapping[str, str]]) -> bytes:
    """The RFC 6962 leaf hash of the event: ``SHA-256(0x00 || leaf_entry(...))``."""
    return hashlib.sha256(b"\x00" + leaf_entry(doc, received_at, seals)).digest()


def leaf_entry_owned(doc: dict[str, Any], received_at: str, seals: Mapping[str, Mapping[str, str]]) -> bytes:
    """``leaf_entry`` of a document the caller owns and will not use again (one just parsed):
    its sealed values are set to null in place, so nothing is copied. The same bytes, faster;
    what a verifier of millions of stored events uses."""
    if not isinstance(received_at, str):
        raise EntryError(f"received_at is a {type(received_at).__name__}; it must be the stored timestamp string")
    if not isinstance(doc, dict):
        raise EntryError(f"event document is a {type(doc).__name__}; it must be a JSON object")
    if len(seals) > 1:
        _check_disjoint(seals)
    committed: dict[str, str] = {}
    for pointer, form in seals.items():
        container: Any = doc
        tokens = _tokens(pointer)
        for token in tokens[:-1]:
            found, container = _child(container, token)
            if not found or not isinstance(container, (dict, list)):
                raise EntryError(f"sealed pointer {pointer!r} is not in the event; seal only values the event has")
        found, value = _child(container, tokens[-1])
        if not found:
            raise EntryError(f"sealed pointer {pointer!r} is not in the event; seal only values the event has")
        container[tokens[-1] if isinstance(container, dict) else int(tokens[-1])] = None
        committed[pointer] = base64.b64encode(_committed(pointer, form, value)).decode("ascii")
    # The keys of the entry in JCS order (committed < event < received_at < v), each value canonical.
    return (
        b'{"committed":'
        + canonical_json(committed)
        + b',"event":'
        + canonical_json(doc)
        + b',"received_at":'
        + canonical_json(received_at)
        + b',"v":'
        + str(ENTRY_VERSION).encode("ascii")
        + b"}"
    )


def entry_hash_owned(doc: dict[str, Any], received_at: str, seals: Mapping[str, Mapping[str, str]]) -> bytes:
    """``entry_hash`` of a document the caller owns (``leaf_entry_owned``: its sealed values become null)."""
    return hashlib.sha256(b"\x00" + leaf_entry_owned(doc, received_at, seals)).digest()


def erase(
    doc: Mapping[str, Any], seals: Mapping[str, Mapping[str, str]], pointer: str, placeholder: Any = "[erased]"
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """New doc and seals with the value at a sealed pointer and its salt gone, the commitment kept.

    The doc holds ``placeholder`` instead of the value; the seal becomes
    ``{"commitment": base64(...)}``. ``leaf_entry`` of the result equals that of the input.
    """
    if pointer not in seals:
        raise EntryError(f"pointer {pointer!r} is not sealed; only a sealed value can be erased without changing the leaf")
    new_doc, old = _substitute(doc, {pointer: placeholder})
    kept = _committed(pointer, seals[pointer], old[pointer])
    new_seals = {p: dict(form) for p, form in seals.items()}
    new_seals[pointer] = {"commitment": base64.b64encode(kept).decode("ascii")}
    return new_doc, new_seals
