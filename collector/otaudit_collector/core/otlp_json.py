"""OTLP/JSON request bodies to the protobuf request message.

OTLP JSON is not plain proto3 JSON (otel-notes.md): trace and span ids are hex, enums
are integers, 64-bit integers may be decimal strings, unknown fields are ignored. Field
names are lowerCamelCase; the original snake_case names are accepted too, as proto3 JSON
parsers do. ``google.protobuf.json_format`` gets the ids wrong and is slow, so this is a
direct translation.

A record whose own fields are malformed does not fail the request: it is replaced by an
empty placeholder and reported in ``DecodedRequest.broken`` so that the pipeline rejects
just that record, by its position, and the rest of the batch is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otaudit_collector.core.errors import BadRequest

__all__ = ["DecodedRequest", "RecordPath", "decode_json", "MAX_JSON_DEPTH"]

MAX_JSON_DEPTH = 64
"""Deepest AnyValue nesting accepted in JSON; deeper values reject their record."""

RecordPath = tuple[int, int, int]
"""(resource_logs index, scope_logs index, log_records index) of a record in its request."""


@dataclass(slots=True)
class DecodedRequest:
    message: ExportLogsServiceRequest
    broken: dict[RecordPath, str] = field(default_factory=dict)


class _Malformed(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def decode_json(body: bytes) -> DecodedRequest:
    """Decode an OTLP/JSON ``ExportLogsServiceRequest`` body.

    Raises BadRequest when the body is not JSON or its outer structure is wrong.
    """
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be an OTLP request") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"request body must be a JSON object (an ExportLogsServiceRequest), got {_kind(doc)}")
    out = DecodedRequest(ExportLogsServiceRequest())
    try:
        for i, rl in enumerate(_list(doc, "resourceLogs", "resource_logs", "resourceLogs")):
            where = f"resourceLogs[{i}]"
            _object(rl, where)
            pb_rl = out.message.resource_logs.add()
            resource = _get(rl, "resource", "resource")
            if resource is not None:
                _object(resource, f"{where}.resource")
                _attributes(pb_rl.resource.attributes, resource, f"{where}.resource")
                pb_rl.resource.dropped_attributes_count = _uint(
                    resource, "droppedAttributesCount", "dropped_attributes_count", f"{where}.resource"
                )
            pb_rl.schema_url = _str(rl, "schemaUrl", "schema_url", where)
            for j, sl in enumerate(_list(rl, "scopeLogs", "scope_logs", where)):
                swhere = f"{where}.scopeLogs[{j}]"
                _object(sl, swhere)
                pb_sl = pb_rl.scope_logs.add()
                scope = _get(sl, "scope", "scope")
                if scope is not None:
                    _object(scope, f"{swhere}.scope")
                    pb_sl.scope.name = _str(scope, "name", "name", f"{swhere}.scope")
                    pb_sl.scope.version = _str(scope, "version", "version", f"{swhere}.scope")
                    _attributes(pb_sl.scope.attributes, scope, f"{swhere}.scope")
                pb_sl.schema_url = _str(sl, "schemaUrl", "schema_url", swhere)
                for k, rec in enumerate(_list(sl, "logRecords", "log_records", swhere)):
                    pb_rec = pb_sl.log_records.add()
                    try:
                        _record(pb_rec, rec, f"{swhere}.logRecords[{k}]")
                    except _Malformed as exc:
                        pb_rec.Clear()
                        out.broken[(i, j, k)] = str(exc)
    except _Malformed as exc:
        raise BadRequest(f"malformed OTLP JSON: {exc}") from None
    return out


def _record(pb: LogRecord, rec: Any, where: str) -> None:
    _object(rec, where)
    pb.time_unix_nano = _uint(rec, "timeUnixNano", "time_unix_nano", where)
    pb.observed_time_unix_nano = _uint(rec, "observedTimeUnixNano", "observed_time_unix_nano", where)
    severity = _get(rec, "severityNumber", "severity_number")
    if severity is not None:
        if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 24:
            raise _Malformed(f"{where}.severityNumber", "must be an integer from 0 to 24 (OTLP JSON encodes enums as integers)")
        pb.severity_number = severity  # type: ignore[assignment]
    pb.severity_text = _str(rec, "severityText", "severity_text", where)
    body = _get(rec, "body", "body")
    if body is not None:
        _any_value(pb.body, body, f"{where}.body", 0)
    _attributes(pb.attributes, rec, where)
    pb.dropped_attributes_count = _uint(rec, "droppedAttributesCount", "dropped_attributes_count", where)
    pb.flags = _uint(rec, "flags", "flags", where)
    pb.trace_id = _hex_id(rec, "traceId", "trace_id", 16, where)
    pb.span_id = _hex_id(rec, "spanId", "span_id", 8, where)
    pb.event_name = _str(rec, "eventName", "event_name", where)


def _attributes(target: Any, owner: dict[str, Any], where: str) -> None:
    items = _get(owner, "attributes", "attributes")
    if items is None:
        return
    if not isinstance(items, list):
        raise _Malformed(f"{where}.attributes", f"must be an array of {{key, value}} objects, got {_kind(items)}")
    for n, item in enumerate(items):
        _key_value(target.add(), item, f"{where}.attributes[{n}]", 0)


def _key_value(pb: KeyValue, item: Any, where: str, depth: int) -> None:
    if not isinstance(item, dict):
        raise _Malformed(where, f"must be a {{key, value}} object, got {_kind(item)}")
    key = item.get("key")
    if not isinstance(key, str):
        raise _Malformed(f"{where}.key", "must be a string")
    pb.key = _text(key, f"{where}.key")
    value = item.get("value")
    if value is not None:
        _any_value(pb.value, value, f"{where}.value", depth)


def _any_value(pb: AnyValue, value: Any, where: str, depth: int) -> None:
    if depth >= MAX_JSON_DEPTH:
        raise _Malformed(where, f"values nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(value, dict):
        raise _Malformed(where, f'must be an AnyValue object such as {{"stringValue": "..."}}, got {_kind(value)}')
    for key, convert in _ANY_VALUE_FIELDS.items():
        if key in value:
            convert(pb, value[key], f"{where}.{key}", depth)
            return
    # An empty AnyValue (or only unknown fields) is a valid, empty value.


def _set_string(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    if not isinstance(v, str):
        raise _Malformed(where, f"must be a string, got {_kind(v)}")
    pb.string_value = _text(v, where)


def _set_bool(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    if not isinstance(v, bool):
        raise _Malformed(where, f"must be true or false, got {_kind(v)}")
    pb.bool_value = v


def _set_int(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    pb.int_value = _int64(v, where)


def _set_double(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        pb.double_value = float(v.replace("Infinity", "inf"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        pb.double_value = float(v)
    else:
        raise _Malformed(where, f"must be a number, got {_kind(v)}")


def _set_bytes(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    if not isinstance(v, str):
        raise _Malformed(where, f"must be a base64 string, got {_kind(v)}")
    try:
        pb.bytes_value = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed(where, "is not valid base64") from None


def _set_array(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    values = _array_values(v, where)
    array = pb.array_value
    array.SetInParent()
    for n, item in enumerate(values):
        _any_value(array.values.add(), item, f"{where}.values[{n}]", depth + 1)


def _set_kvlist(pb: AnyValue, v: Any, where: str, depth: int) -> None:
    values = _array_values(v, where)
    kvlist = pb.kvlist_value
    kvlist.SetInParent()
    for n, item in enumerate(values):
        _key_value(kvlist.values.add(), item, f"{where}.values[{n}]", depth + 1)


_ANY_VALUE_FIELDS: dict[str, Callable[[AnyValue, Any, str, int], None]] = {
    "stringValue": _set_string,
    "string_value": _set_string,
    "boolValue": _set_bool,
    "bool_value": _set_bool,
    "intValue": _set_int,
    "int_value": _set_int,
    "doubleValue": _set_double,
    "double_value": _set_double,
    "arrayValue": _set_array,
    "array_value": _set_array,
    "kvlistValue": _set_kvlist,
    "kvlist_value": _set_kvlist,
    "bytesValue": _set_bytes,
    "bytes_value": _set_bytes,
}


def _array_values(v: Any, where: str) -> list[Any]:
    if not isinstance(v, dict):
        raise _Malformed(where, f'must be an object with a "values" array, got {_kind(v)}')
    values = v.get("values", [])
    if not isinstance(values, list):
        raise _Malformed(f"{where}.values", f"must be an array, got {_kind(values)}")
    return values


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    if value is None and snake != camel:
        value = obj.get(snake)
    return value


def _list(obj: dict[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{where}.{camel}", f"must be an array, got {_kind(value)}")
    return value


def _object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _Malformed(where, f"must be an object, got {_kind(value)}")


def _str(obj: dict[str, Any], camel: str, snake: str, where: str) -> str:
    value = _get(obj, camel, snake)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Malformed(f"{where}.{camel}", f"must be a string, got {_kind(value)}")
    return _text(value, f"{where}.{camel}")


def _text(value: str, where: str) -> str:
    # JSON escapes can produce lone surrogates, which are not text and cannot be stored.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Malformed(
            where, "contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not valid text"
        ) from None
    return value


def _uint(obj: dict[str, Any], camel: str, snake: str, where: str) -> int:
    value = _get(obj, camel, snake)
    if value is None:
        return 0
    number = _int64(value, f"{where}.{camel}")
    if number < 0:
        raise _Malformed(f"{where}.{camel}", "must not be negative")
    if number >= 2**64:
        raise _Malformed(f"{where}.{camel}", "does not fit in 64 bits")
    return number


def _int64(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise _Malformed(where, "must be an integer, got a boolean")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 21) or (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
        number = int(value)
    else:
        raise _Malformed(where, f"must be an integer or a decimal string, got {value!r:.40}")
    if not -(2**63) <= number < 2**64:
        raise _Malformed(where, "does not fit in 64 bits")
    if number >= 2**63 and "Value" in where:
        raise _Malformed(where, "does not fit in a signed 64-bit integer")
    return number


def _hex_id(obj: dict[str, Any], camel: str, snake: str, size: int, where: str) -> bytes:
    value = _get(obj, camel, snake)
    if value is None or value == "":
        return b""
    if not isinstance(value, str) or len(value) != 2 * size:
        raise _Malformed(f"{where}.{camel}", f"must be {2 * size} hex digits (OTLP JSON encodes ids as hex, not base64)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _Malformed(f"{where}.{camel}", f"must be {2 * size} hex digits, got {value!r:.40}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )
