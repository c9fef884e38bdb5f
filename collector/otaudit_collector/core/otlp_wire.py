"""The OTLP request of core/otlp_out.py written straight to protobuf bytes.

Pure. ``otlp_out.export_request`` builds the request as protobuf message objects, field by
field (~0.2 ms of Python a record: every attribute is a KeyValue and an AnyValue object, copied
again when added); an OTLP stream then spent as much CPU sending an event as ingesting it.
:func:`export_request_bytes` writes the same request as bytes, the same fields in the same
order: the bytes are those ``export_request(...).SerializeToString()`` gives (protobuf writes
known fields in field-number order), which the tests check on every catalog example and on
generated documents. ``otlp_out`` stays the reference, as the Python decoder is for the C one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from otaudit_collector.core.otlp_out import (
    _ACTOR,
    _CLIENT,
    _INT64,
    _TARGET,
    _TOP,
    SCOPE_NAME,
    SEQ_ATTRIBUTE,
    SOURCE_TENANT_ATTRIBUTE,
    _ns,
    _resource_key,
)

__all__ = ["export_request_bytes"]

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: ten bytes, two's complement
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SHORT = tuple(bytes((n,)) for n in range(128))  # the length of a payload under 128 bytes, as a varint
_TAGS = tuple(bytes((n,)) for n in range(256))


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` already holds the field number and wire type 2)."""
    n = len(payload)
    return b"".join((_TAGS[tag], _SHORT[n] if n < 128 else _varint(n), payload))


def _any(value: Any) -> bytes:
    """An AnyValue's body, as ``otlp_out.any_value`` fills it."""
    if isinstance(value, str):  # the commonest value: first
        data = value.encode("utf-8")
        n = len(data)
        return b"".join((b"\x0a", _SHORT[n] if n < 128 else _varint(n), data))
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return b"\x18" + _varint(value)
        return b"\x21" + _DOUBLE.pack(float(value))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _kv(str(k), v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return _field(0x2A, b"".join(_field(0x0A, _any(v)) for v in value))
    raise ValueError(f"a value of type {type(value).__name__} is not JSON")


def _kv(key: str, value: Any) -> bytes:
    """A KeyValue's body (an empty key is proto3's default: not written)."""
    return (_field(0x0A, key.encode("utf-8")) if key else b"") + _field(0x12, _any(value))


def _attribute(key: str, value: Any) -> bytes:
    """A LogRecord's attribute (field 6)."""
    return _field(0x32, _kv(key, value))


def _texts(part: Any, names: Iterable[tuple[str, str]], out: list[bytes]) -> None:
    if isinstance(part, Mapping):
        for field, key in names:
            if part.get(field) is not None:
                out.append(_attribute(key, part[field]))


def _log_record(doc: Mapping[str, Any], seq: int, source_tenant: str) -> bytes:
    """``otlp_out.log_record(doc, ...)`` serialized, written directly (the same checks, the same errors)."""
    event, uid = doc.get("event"), doc.get("id")
    if not isinstance(event, str) or not event:
        raise ValueError("the document has no 'event'")
    if not isinstance(uid, str) or not uid:
        raise ValueError("the document has no 'id'")
    flags = doc.get("flags") or ()
    occurred = _ns(doc.get("occurred_at"), "occurred_at")
    time_ns = observed_ns = 0
    if "time_from_observed" in flags:
        observed_ns = occurred
    else:
        time_ns = occurred
        if doc.get("received_at") is not None:
            observed_ns = _ns(doc["received_at"], "received_at")

    attrs = [_attribute("log.record.uid", uid)]
    if doc.get("tenant") is not None:
        attrs.append(_attribute("audit.tenant.id", doc["tenant"]))
    _texts(doc, _TOP, attrs)
    actor = doc.get("actor")
    _texts(actor, _ACTOR, attrs)
    if isinstance(actor, Mapping) and actor.get("roles") is not None:
        attrs.append(_attribute("user.roles", actor["roles"]))
    _texts(doc.get("target"), _TARGET, attrs)
    _texts(doc.get("client"), _CLIENT, attrs)
    for field, key in (("related", "audit.related"), ("changes", "audit.changes"), ("details", "audit.details")):
        if doc.get(field) is not None:
            attrs.append(_attribute(key, doc[field]))
    source = doc.get("source")
    if isinstance(source, Mapping) and source.get("sequence") is not None:
        attrs.append(_attribute("audit.sequence", source["sequence"]))
    extra = dict(doc.get("attributes") or {})
    body = b""
    message = doc.get("message")
    if isinstance(message, str) and message:
        body = _field(0x2A, _any(message))
    elif extra.get("log.body") is not None and not isinstance(extra["log.body"], str):
        body = _field(0x2A, _any(extra.pop("log.body")))
    extra.pop(SEQ_ATTRIBUTE, None)
    extra.pop(SOURCE_TENANT_ATTRIBUTE, None)
    attrs.extend(_attribute(str(key), value) for key, value in extra.items())
    attrs.append(_attribute(SEQ_ATTRIBUTE, seq))
    attrs.append(_attribute(SOURCE_TENANT_ATTRIBUTE, source_tenant))

    trace_id = span_id = b""
    trace = doc.get("trace")
    if isinstance(trace, Mapping) and isinstance(trace.get("trace_id"), str):
        try:
            trace_id = bytes.fromhex(trace["trace_id"])
            if isinstance(trace.get("span_id"), str):
                span_id = bytes.fromhex(trace["span_id"])
        except ValueError:
            raise ValueError(f"the event's trace {dict(trace)!r} is not hexadecimal") from None

    parts = []  # in field-number order, as protobuf writes them; proto3 leaves zero values out
    if time_ns:
        parts.append(b"\x09" + _FIXED64.pack(time_ns))
    parts.append(body)
    parts.extend(attrs)
    if "attributes_dropped" in flags:
        parts.append(b"\x38\x01")
    if trace_id:
        parts.append(_field(0x4A, trace_id))
    if span_id:
        parts.append(_field(0x52, span_id))
    if observed_ns:
        parts.append(b"\x59" + _FIXED64.pack(observed_ns))
    parts.append(b"\x62" + _varint(len(event.encode("utf-8"))) + event.encode("utf-8"))
    return b"".join(parts)


_SCOPE = _field(0x0A, _field(0x0A, SCOPE_NAME.encode()))  # ScopeLogs.scope = {name}


def _resource_logs(key: tuple[str | None, str | None], records: list[bytes]) -> bytes:
    service, instance = key
    resource = b""
    if service is not None:
        resource += _field(0x0A, _kv("service.name", service))
    if instance is not None:
        resource += _field(0x0A, _kv("service.instance.id", instance))
    scope_logs = _SCOPE + b"".join(_field(0x12, record) for record in records)
    return _field(0x0A, (_field(0x0A, resource) if resource else b"") + _field(0x12, scope_logs))


def export_request_bytes(events: Iterable[tuple[int, Mapping[str, Any]]], *, source_tenant: str) -> bytes:
    """``otlp_out.export_request(events, source_tenant=...).SerializeToString()``, written directly."""
    out: list[bytes] = []
    current: tuple[str | None, str | None] | None = None
    records: list[bytes] = []
    for seq, doc in events:
        key = _resource_key(doc)
        if records and key != current:
            assert current is not None
            out.append(_resource_logs(current, records))
            records = []
        current = key
        records.append(_log_record(doc, seq, source_tenant))
    if records:
        assert current is not None
        out.append(_resource_logs(current, records))
    return b"".join(out)
