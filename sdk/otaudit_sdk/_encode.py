"""Python values to OTLP protobuf bytes, written by hand.

Pure functions. An audit event is encoded once, in ``record()``, into the bytes of one
``LogRecord``; the buffer keeps those bytes and the sender concatenates them into an
``ExportLogsServiceRequest`` without decoding anything. The stock OTel encoder builds
message objects first and costs several times more per record (benchmarks/sdk.py).

Field numbers are those of opentelemetry-proto's ``logs/v1/logs.proto`` and
``common/v1/common.proto``; the tests decode every shape with the official classes.
"""

from __future__ import annotations

import datetime as _dt
import enum
import struct
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = [
    "EncodeError",
    "any_value",
    "attribute",
    "string_attribute",
    "int_attribute",
    "key_prefix",
    "log_record",
    "resource",
    "scope",
    "export_request",
    "varint",
]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_MAX_DEPTH = 32
_SMALL = [bytes((i,)) for i in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack


class EncodeError(ValueError):
    """A value that cannot be sent: names the attribute path and what to do instead."""


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + payload


def any_value(value: Any, path: str = "value", depth: int = 0) -> bytes:
    """The bytes of one ``AnyValue`` (``None`` is the empty AnyValue).

    Raises ``EncodeError`` naming the path of a value that cannot be sent (``path`` is
    the name of ``value`` itself).
    """
    try:
        return _any(value, depth)
    except _Unsendable as exc:
        raise EncodeError(f"{path}{''.join(reversed(exc.where))}: {exc.reason}") from None


class _Unsendable(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.where: list[str] = []


def _any(value: Any, depth: int) -> bytes:
    kind = type(value)  # exact types first: the common case, without isinstance chains
    if kind is str:
        return _field(b"\x0a", _text(value))
    if kind is dict:
        return _field(b"\x32", _kvlist(value, depth))
    if kind is list:
        return _field(b"\x2a", _array(value, depth))
    if value is None:
        return b""
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int or isinstance(value, int):  # bool, an int subclass, was taken above
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Unsendable(f"integer {value} does not fit in 64 bits; send it as a string")
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if kind is float or isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, str):
        return _field(b"\x0a", _text(value))
    if isinstance(value, Mapping):
        return _field(b"\x32", _kvlist(value, depth))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _field(b"\x3a", bytes(value))
    if isinstance(value, (list, tuple)):
        return _field(b"\x2a", _array(value, depth))
    if isinstance(value, (set, frozenset)):
        return _field(b"\x2a", _array(sorted(value, key=repr), depth))
    return _any(_plain(value), depth)


def _kvlist(value: Mapping[Any, Any], depth: int) -> bytes:
    if depth >= _MAX_DEPTH:
        raise _Unsendable(f"nested more than {_MAX_DEPTH} levels deep")
    parts = []
    for key, item in value.items():
        if type(key) is not str and not isinstance(key, str):
            raise _Unsendable(f"map key {key!r} is a {type(key).__name__}; keys must be strings")
        try:
            parts.append(_field(b"\x0a", _field(b"\x0a", _text(key)) + _field(b"\x12", _any(item, depth + 1))))
        except _Unsendable as exc:
            exc.where.append(f".{key}")
            raise
    return b"".join(parts)


def _array(value: Sequence[Any], depth: int) -> bytes:
    if depth >= _MAX_DEPTH:
        raise _Unsendable(f"nested more than {_MAX_DEPTH} levels deep")
    parts = []
    for index, item in enumerate(value):
        try:
            parts.append(_field(b"\x0a", _any(item, depth + 1)))
        except _Unsendable as exc:
            exc.where.append(f"[{index}]")
            raise
    return b"".join(parts)


def _text(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise _Unsendable(f"text has a lone surrogate at position {exc.start}, which is not valid UTF-8") from None


def _utf8(text: str, path: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{path}: text has a lone surrogate at position {exc.start}, which is not valid UTF-8") from None


def _plain(value: Any) -> Any:
    """Common Python values that have an obvious wire form."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise _Unsendable(f"datetime {value.isoformat()} has no time zone; pass an aware datetime")
        return value.isoformat()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "as_map"):
        return value.as_map()
    if isinstance(value, Sequence):
        return list(value)
    raise _Unsendable(f"a {type(value).__name__} cannot be sent; use str, int, float, bool, bytes, None, lists or dicts of them")


def key_prefix(key: str) -> bytes:
    """The encoded key of a KeyValue, precomputed for the contract's fixed names."""
    return _field(b"\x0a", key.encode())


def attribute(prefix: bytes, value: Any, path: str) -> bytes:
    """One LogRecord attribute (field 6) from a precomputed key prefix."""
    return _field(b"\x32", prefix + _field(b"\x12", any_value(value, path)))


def string_attribute(prefix: bytes, value: str, path: str) -> bytes:
    """The common case of ``attribute``, with fewer calls."""
    raw = _utf8(value, path)
    return _field(b"\x32", prefix + _field(b"\x12", _field(b"\x0a", raw)))


def int_attribute(prefix: bytes, value: int) -> bytes:
    return _field(b"\x32", prefix + _field(b"\x12", b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)))


_SEVERITY_INFO = b"\x10\x09"


def log_record(
    *,
    time_ns: int,
    observed_ns: int,
    event_name: str,
    attributes: bytes,
    body: str | None = None,
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    trace_flags: int = 0,
) -> bytes:
    """The bytes of one LogRecord; ``attributes`` is already-encoded attribute fields."""
    out = b"\x09" + _FIXED64(time_ns) + _SEVERITY_INFO
    if body is not None:
        out += _field(b"\x2a", any_value(body, "message"))
    out += attributes
    if trace_id is not None:
        out += b"\x45" + struct.pack("<I", trace_flags) + b"\x4a\x10" + trace_id
        if span_id is not None:
            out += b"\x52\x08" + span_id
    return out + b"\x59" + _FIXED64(observed_ns) + _field(b"\x62", _utf8(event_name, "event"))


def resource(attributes: Mapping[str, Any]) -> bytes:
    """The bytes of a Resource with these attributes (the same framing as a KeyValueList)."""
    try:
        return _kvlist(attributes, 0)
    except _Unsendable as exc:
        raise EncodeError(f"resource{''.join(reversed(exc.where))}: {exc.reason}") from None


def scope(name: str, version: str) -> bytes:
    """The bytes of an InstrumentationScope."""
    return _field(b"\x0a", name.encode()) + _field(b"\x12", version.encode())


def export_request(groups: Sequence[tuple[bytes, bytes, Sequence[bytes]]]) -> bytes:
    """An ExportLogsServiceRequest: one ResourceLogs per (resource, scope, records) group."""
    out = []
    for resource_bytes, scope_bytes, records in groups:
        scope_logs = _field(b"\x0a", scope_bytes) + b"".join(_field(b"\x12", r) for r in records)
        out.append(_field(b"\x0a", _field(b"\x0a", resource_bytes) + _field(b"\x12", scope_logs)))
    return b"".join(out)
