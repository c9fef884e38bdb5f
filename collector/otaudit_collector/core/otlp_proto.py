"""OTLP/protobuf request bodies to the request message.

The fast path is one parse of the whole body. When that fails, the body is walked at
the wire level down to each LogRecord so that one undecodable record (invalid UTF-8 in
a string, values nested past the parser's limit) is rejected on its own and the rest of
the batch is kept. A body whose outer structure is broken is a BadRequest.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import ScopeLogs

from otaudit_collector.core.errors import BadRequest
from otaudit_collector.core.otlp_json import DecodedRequest

__all__ = ["decode_protobuf"]

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5

_RECORD_UNDECODABLE = (
    "the LogRecord could not be decoded: a string field holds invalid UTF-8, values are "
    "nested deeper than the protobuf parser allows, or the record's bytes are truncated"
)


def decode_protobuf(body: bytes) -> DecodedRequest:
    """Decode an OTLP/protobuf ``ExportLogsServiceRequest`` body."""
    try:
        return DecodedRequest(ExportLogsServiceRequest.FromString(body))
    except DecodeError:
        return _salvage(body)


def _salvage(body: bytes) -> DecodedRequest:
    out = DecodedRequest(ExportLogsServiceRequest())
    try:
        for i, rl_bytes in enumerate(_submessages(body, 1, "ExportLogsServiceRequest")):
            rl = out.message.resource_logs.add()
            j = 0
            for number, value in _fields(rl_bytes, "ResourceLogs"):
                if number == 1 and isinstance(value, bytes):
                    _parse_into(rl.resource, value, f"resource_logs[{i}].resource")
                elif number == 2 and isinstance(value, bytes):
                    _salvage_scope(out, rl.scope_logs.add(), value, (i, j))
                    j += 1
                elif number == 3 and isinstance(value, bytes):
                    rl.schema_url = _utf8(value, f"resource_logs[{i}].schema_url")
    except _WireError as exc:
        raise BadRequest(f"request body is not a valid OTLP protobuf ExportLogsServiceRequest: {exc}") from None
    return out


def _salvage_scope(out: DecodedRequest, sl: ScopeLogs, data: bytes, where: tuple[int, int]) -> None:
    k = 0
    for number, value in _fields(data, "ScopeLogs"):
        if number == 1 and isinstance(value, bytes):
            _parse_into(sl.scope, value, f"resource_logs[{where[0]}].scope_logs[{where[1]}].scope")
        elif number == 2 and isinstance(value, bytes):
            record = sl.log_records.add()
            try:
                record.ParseFromString(value)
            except DecodeError:
                record.Clear()
                out.broken[(where[0], where[1], k)] = _RECORD_UNDECODABLE
            k += 1
        elif number == 3 and isinstance(value, bytes):
            sl.schema_url = _utf8(value, f"resource_logs[{where[0]}].scope_logs[{where[1]}].schema_url")


class _WireError(Exception):
    pass


def _parse_into(message: Message, data: bytes, where: str) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise _WireError(f"{where} could not be decoded") from None


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _WireError(f"{where} is not valid UTF-8") from None


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
                raise _WireError(f"{name} field {number} claims {size} bytes but only {end - pos} remain (truncated)")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (_WIRE_I64, _WIRE_I32):
            width = 8 if wire == _WIRE_I64 else 4
            if pos + width > end:
                raise _WireError(f"{name} field {number} is truncated")
            yield number, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        else:
            raise _WireError(f"{name} field {number} has unsupported wire type {wire} at byte {pos}")


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
