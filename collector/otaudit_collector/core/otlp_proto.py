"""OTLP/protobuf request bodies to plain data (``otlp_model``).

The C extension ``_otlp_decode`` reads the wire format straight into Python objects; it
is built when the collector is installed with a C compiler at hand. Without it, the
request is parsed with the protobuf runtime (upb) and walked in Python: the same result,
several times slower. Both reject one undecodable record (invalid UTF-8 in a string,
values nested too deeply, bytes truncated) on its own and keep the rest of the batch;
a request whose outer structure is broken is a BadRequest, one of more than
``max_records`` log records a PayloadTooLarge (the compiled decoder stops at the first
record over the limit; the Python one counts before it walks the records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otaudit_collector.core.errors import BadRequest
from otaudit_collector.core.otlp_model import (
    Attributes,
    BrokenRecord,
    DecodedRequest,
    RecordEntry,
    ResourceData,
    too_many_records,
)

__all__ = ["decode_protobuf", "decode_protobuf_python", "COMPILED"]

_compiled: Callable[[bytes, int, int], DecodedRequest] | None
try:
    from otaudit_collector.core._otlp_decode import decode_logs_request
except ImportError:  # no compiler when the collector was installed: the Python decoder serves
    _compiled = None
else:
    _compiled = decode_logs_request

COMPILED = _compiled is not None
"""Whether the compiled decoder is in use."""

_INVALID = "request body is not a valid OTLP protobuf ExportLogsServiceRequest"
_RECORD_UNDECODABLE = (
    "the LogRecord could not be decoded: a string field holds invalid UTF-8, values are nested deeper than "
    "the protobuf parser allows, or its bytes are truncated or malformed"
)


def decode_protobuf(body: bytes, max_depth: int, max_records: int | None = None) -> DecodedRequest:
    """Decode an OTLP/protobuf ``ExportLogsServiceRequest``; maps and arrays may nest ``max_depth`` levels,
    and it may hold ``max_records`` log records (None: any number)."""
    if _compiled is not None:
        try:
            decoded = _compiled(body, max_depth, -1 if max_records is None else max_records)
        except OverflowError:
            raise too_many_records(max_records or 0) from None
        except ValueError as exc:
            raise BadRequest(f"{_INVALID}: {exc}") from None
    else:
        decoded = decode_protobuf_python(body, max_depth, max_records)
    if any(isinstance(record, str) for _, _, scopes in decoded for records in scopes for record in records):
        _keep_broken_bytes(decoded, body)
    return decoded


def _keep_broken_bytes(decoded: DecodedRequest, body: bytes) -> None:
    """Give each undecodable record its bytes as received, so the quarantine keeps them."""
    try:
        for i, rl_bytes in enumerate(_submessages(body, 1, "ExportLogsServiceRequest")):
            for j, sl_bytes in enumerate(_submessages(rl_bytes, 2, "ResourceLogs")):
                records = decoded[i][2][j]
                for k, raw in enumerate(_submessages(sl_bytes, 2, "ScopeLogs")):
                    reason = records[k]
                    if isinstance(reason, str):
                        records[k] = BrokenRecord(reason, raw)
    except (_WireError, IndexError):  # the decoders refuse such bodies first; keep the reasons alone
        pass


def decode_protobuf_python(body: bytes, max_depth: int, max_records: int | None = None) -> DecodedRequest:
    """The decoder in Python over the protobuf runtime: the fallback, and the compiled one's oracle."""
    try:
        message = ExportLogsServiceRequest.FromString(body)
    except DecodeError:
        salvaged = _salvage(body, max_depth)
        if max_records is not None and sum(len(records) for _, _, scopes in salvaged for records in scopes) > max_records:
            raise too_many_records(max_records) from None
        return salvaged
    # Counted on the parsed message, before a tuple is built for any record.
    if max_records is not None and sum(len(sl.log_records) for rl in message.resource_logs for sl in rl.scope_logs) > max_records:
        raise too_many_records(max_records)
    return [
        _resource(i, rl, [[_record(r, max_depth) for r in sl.log_records] for sl in rl.scope_logs], max_depth)
        for i, rl in enumerate(message.resource_logs)
    ]


class _TooDeep(Exception):
    pass


def _resource(index: int, rl: ResourceLogs, scopes: list[list[RecordEntry]], max_depth: int) -> ResourceData:
    try:
        attributes = _attributes(rl.resource.attributes, max_depth)
    except _TooDeep as exc:
        raise BadRequest(f"{_INVALID}: resource_logs[{index}].resource: {exc}") from None
    return (rl.resource.SerializeToString() if rl.HasField("resource") else b"", attributes, scopes)


def _record(record: LogRecord, max_depth: int) -> RecordEntry:
    try:
        attributes = _attributes(record.attributes, max_depth)
        body = _value(record.body, 0, max_depth) if record.HasField("body") else None
    except _TooDeep as exc:
        return str(exc)
    return (
        record.SerializeToString(),
        record.time_unix_nano,
        record.observed_time_unix_nano,
        record.event_name,
        record.trace_id,
        record.span_id,
        body,
        attributes,
        record.dropped_attributes_count,
        record.flags,
    )


def _attributes(items: Any, max_depth: int) -> Attributes:
    return [(kv.key, _value(kv.value, 0, max_depth)) for kv in items]


def _value(v: AnyValue, depth: int, max_depth: int) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in {"kvlist_value", "array_value"}:
        if depth >= max_depth:
            raise _TooDeep(f"values are nested deeper than {max_depth} levels")
        if kind == "kvlist_value":
            return {kv.key: _value(kv.value, depth + 1, max_depth) for kv in v.kvlist_value.values}
        return [_value(item, depth + 1, max_depth) for item in v.array_value.values]
    return getattr(v, kind)


# -- salvage: the request did not parse as a whole --------------------------------------

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


class _WireError(Exception):
    pass


def _salvage(body: bytes, max_depth: int) -> DecodedRequest:
    out: DecodedRequest = []
    try:
        for i, rl_bytes in enumerate(_submessages(body, 1, "ExportLogsServiceRequest")):
            resource = Resource()
            scopes: list[list[RecordEntry]] = []
            for number, value in _fields(rl_bytes, f"resource_logs[{i}]"):
                if number == 1 and isinstance(value, bytes):
                    _parse_into(resource, value, f"resource_logs[{i}].resource")  # merges, as protobuf does
                elif number == 2 and isinstance(value, bytes):
                    scopes.append(_salvage_scope(value, f"resource_logs[{i}].scope_logs[{len(scopes)}]", max_depth))
                elif number == 3 and isinstance(value, bytes):
                    _check_utf8(value, f"resource_logs[{i}].schema_url")
            rl = ResourceLogs(resource=resource)
            out.append(_resource(i, rl, scopes, max_depth))
    except _WireError as exc:
        raise BadRequest(f"{_INVALID}: {exc}") from None
    return out


def _salvage_scope(data: bytes, where: str, max_depth: int) -> list[RecordEntry]:
    records: list[RecordEntry] = []
    for number, value in _fields(data, where):
        if number == 2 and isinstance(value, bytes):
            try:
                records.append(_record(LogRecord.FromString(value), max_depth))
            except DecodeError:
                records.append(_RECORD_UNDECODABLE)
        elif number == 1 and isinstance(value, bytes):
            _parse_into(InstrumentationScope(), value, f"{where}.scope")
        elif number == 3 and isinstance(value, bytes):
            _check_utf8(value, f"{where}.schema_url")
    return records


def _check_utf8(data: bytes, where: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise _WireError(f"{where} is not valid UTF-8") from None


def _parse_into(message: Message, data: bytes, where: str) -> None:
    try:
        message.MergeFromString(data)
    except DecodeError:
        raise _WireError(f"{where} could not be decoded") from None


def _submessages(data: bytes, wanted: int, name: str) -> Iterator[bytes]:
    for number, value in _fields(data, name):
        if number == wanted and isinstance(value, bytes):
            yield value


def _fields(data: bytes, name: str) -> Iterator[tuple[int, bytes | int]]:
    """Yield (field number, value) for each field; LEN values as bytes, the rest as ints."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, name)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError(f"{name} has a field numbered 0 at byte {pos}")
        if wire == _WIRE_VARINT:
            value, pos = _varint(data, pos, name)
            yield number, value
        elif wire == _WIRE_LEN:
            size, pos = _varint(data, pos, name)
            if pos + size > end:
                raise _WireError(f"{name}: field {number} claims {size} bytes but only {end - pos} remain (truncated)")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (_WIRE_I64, _WIRE_I32):
            width = 8 if wire == _WIRE_I64 else 4
            if pos + width > end:
                raise _WireError(f"{name}: field {number} is truncated")
            yield number, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        else:
            raise _WireError(f"{name}: field {number} has unsupported wire type {wire} at byte {pos}")


def _varint(data: bytes, pos: int, name: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise _WireError(f"{name} ends inside a varint (truncated)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError(f"{name} has a varint longer than 10 bytes at byte {pos}")
