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
    """The bytes of one ``AnyValue`` (``None`` is the empty AnyValue)."""
    if isinstance(value, str):
        return _field(b"\x0a", _utf8(value, path))
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise EncodeError(f"{path}: integer {value} does not fit in 64 bits; send it as a string")
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if depth >= _MAX_DEPTH:
        raise EncodeError(f"{path}: nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        inner = b"".join(_field(b"\x0a", _key_value(k, v, path, depth + 1)) for k, v in value.items())
        return _field(b"\x32", inner)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _field(b"\x3a", bytes(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        inner = b"".join(_field(b"\x0a", any_value(v, f"{path}[{i}]", depth + 1)) for i, v in enumerate(items))
        return _field(b"\x2a", inner)
    return any_value(_plain(value, path), path, depth)


def _utf8(text: str, path: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{path}: text has a lone surrogate at position {exc.start}, which is not valid UTF-8") from None


def _plain(value: Any, path: str) -> Any:
    """Common Python values that have an obvious wire form."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise EncodeError(f"{path}: datetime {value.isoformat()} has no time zone; pass an aware datetime")
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
    raise EncodeError(
        f"{path}: a {type(value).__name__} cannot be sent; use str, int, float, bool, bytes, None, lists or dicts of them"
    )


def _key_value(key: Any, value: Any, path: str, depth: int) -> bytes:
    if not isinstance(key, str):
        raise EncodeError(f"{path}: map key {key!r} is a {type(key).__name__}; keys must be strings")
    return _field(b"\x0a", _utf8(key, path)) + _field(b"\x12", any_value(value, f"{path}.{key}", depth))


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
    """The bytes of a Resource with these attributes."""
    return b"".join(_field(b"\x0a", _key_value(k, v, "resource", 0)) for k, v in attributes.items())


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
