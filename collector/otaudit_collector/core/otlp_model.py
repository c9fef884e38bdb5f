"""A decoded OTLP logs request as plain Python data, whatever its encoding.

Both decoders (protobuf in ``otlp_proto``, JSON in ``otlp_json``) produce this shape,
and normalization reads only this shape, never protobuf objects: attribute values are
``str``, ``bool``, ``int``, ``float``, ``bytes``, ``list``, ``dict`` or ``None``.

    DecodedRequest = [ResourceData, ...]                   one per resource_logs
    ResourceData   = (resource_bytes, attributes, scopes)  scopes: [[Record | str, ...], ...]
    Record         = (raw, time_unix_nano, observed_time_unix_nano, event_name,
                      trace_id, span_id, body, attributes, dropped_attributes_count, flags)

A ``str`` in place of a Record is a record that could not be decoded: the reason; the
decoders then replace it with a ``BrokenRecord``, which also keeps the record's own
bytes for the quarantine: its protobuf bytes as received, or its JSON object
re-serialized (``encoding`` says which; a replay decodes them the same way).
``raw`` is the record's protobuf bytes as received, or None when it came as JSON;
``resource_bytes`` likewise. ``encode_record`` / ``encode_resource`` rebuild them
for the quarantine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otaudit_collector.core.errors import PayloadTooLarge

__all__ = [
    "Attributes",
    "Record",
    "BrokenRecord",
    "RecordEntry",
    "ResourceData",
    "DecodedRequest",
    "RecordPath",
    "encode_record",
    "encode_resource",
    "to_any_value",
    "wrap_record",
    "ENCODINGS",
    "too_many_records",
]

ENCODINGS = ("protobuf", "json")
"""How a quarantined record's bytes are encoded: a LogRecord message, or its OTLP/JSON object."""

Attributes = list[tuple[str, Any]]
Record = tuple[bytes | None, int, int, str, bytes, bytes, Any, Attributes, int, int]


class BrokenRecord(NamedTuple):
    """A record that could not be decoded: why, and its own bytes (``encoding``: one of ENCODINGS)."""

    reason: str
    raw: bytes
    encoding: str = "protobuf"


RecordEntry = Record | str | BrokenRecord
ResourceData = tuple[bytes | None, Attributes, list[list[RecordEntry]]]
DecodedRequest = list[ResourceData]
RecordPath = tuple[int, int, int]
"""(resource_logs index, scope_logs index, log_records index) of a record in its request."""


def to_any_value(value: Any) -> AnyValue:
    out = AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Mapping):
        out.kvlist_value.SetInParent()
        out.kvlist_value.values.extend(KeyValue(key=k, value=to_any_value(v)) for k, v in value.items())
    elif isinstance(value, Sequence):
        out.array_value.SetInParent()
        out.array_value.values.extend(to_any_value(v) for v in value)
    return out


def _key_values(attributes: Attributes) -> list[KeyValue]:
    return [KeyValue(key=k, value=to_any_value(v)) for k, v in attributes]


def encode_record(record: Record) -> bytes:
    """The record's protobuf bytes: as received, or rebuilt when it came as JSON."""
    raw, time_ns, observed_ns, event_name, trace_id, span_id, body, attributes, dropped, flags = record
    if raw is not None:
        return raw
    message = LogRecord(
        time_unix_nano=time_ns,
        observed_time_unix_nano=observed_ns,
        event_name=event_name,
        trace_id=trace_id,
        span_id=span_id,
        dropped_attributes_count=dropped,
        flags=flags,
    )
    if body is not None:
        message.body.CopyFrom(to_any_value(body))
    message.attributes.extend(_key_values(attributes))
    return message.SerializeToString()


def encode_resource(resource_bytes: bytes | None, attributes: Attributes) -> bytes:
    if resource_bytes is not None:
        return resource_bytes
    return Resource(attributes=_key_values(attributes)).SerializeToString()


def wrap_record(resource_bytes: bytes, record_bytes: bytes) -> bytes:
    """A one-record ExportLogsServiceRequest around stored resource and record bytes (for replay)."""
    request = ExportLogsServiceRequest()
    logs = request.resource_logs.add()
    logs.resource.ParseFromString(resource_bytes)
    logs.scope_logs.add().log_records.add().ParseFromString(record_bytes)
    return request.SerializeToString()


def too_many_records(limit: int) -> PayloadTooLarge:
    """The answer to a request of more than ``limit`` log records, found while decoding it.

    Refused before its records are normalized, so that a body of millions of tiny records
    costs neither memory nor the writer's time; the sender splits it and sends again.
    """
    return PayloadTooLarge(
        f"too many records: the request holds more than {limit} log records, the most one request may hold; send smaller batches"
    )
