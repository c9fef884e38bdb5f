"""OTLP/JSON request bodies to plain data (``otlp_model``).

OTLP JSON is not plain proto3 JSON (otel-notes.md): trace and span ids are hex, enums
are integers, 64-bit integers may be decimal strings, unknown fields are ignored. Field
names are lowerCamelCase; the original snake_case names are accepted too, as proto3 JSON
parsers do. ``google.protobuf.json_format`` gets the ids wrong and is slow, so this is a
direct translation.

A record whose own fields are malformed does not fail the request: its place holds a
BrokenRecord (the reason, and the record's JSON object re-serialized, so that each one is
quarantined with its own bytes and can be replayed through this decoder), so that the
pipeline rejects just that record and stores the rest of the batch.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from otaudit_collector.core.errors import BadRequest
from otaudit_collector.core.otlp_model import (
    Attributes,
    BrokenRecord,
    DecodedRequest,
    Record,
    RecordEntry,
    ResourceData,
    too_many_records,
)

__all__ = ["decode_json", "parse_cost"]


def parse_cost(body: bytes) -> int:
    """An estimate of the memory ``json.loads`` takes to hold ``body`` parsed, in bytes, found without parsing it.

    Parsed JSON takes many times its text: an empty object (``{},``, 3 bytes) becomes a
    64-byte dict and a pointer to it, a number a 24-byte float or int. Measured on CPython
    3.11 (tracemalloc): 8x the text for an OTLP/JSON request of ordinary records, 24x for a
    body of empty objects. The receivers charge this to ``ingest.max_inflight_bytes`` before
    decoding, so a small body of empty objects cannot make the collector hold gigabytes.
    Counted from the bytes (counting inside strings too, which only overestimates); on
    bodies of ordinary records, empty objects, arrays, strings, floats and large integers it
    came to 1.0x-1.7x the peak tracemalloc measured (up to 8.5x for a body of empty strings,
    which CPython shares; 1.2x for ordinary OTLP/JSON records).
    """
    containers = body.count(b"{") + body.count(b"[")
    strings = body.count(b'"') // 2
    values = body.count(b",") + body.count(b":")  # every value but the first of each container follows one
    return len(body) + 72 * containers + 56 * strings + 40 * values


class _Malformed(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def decode_json(body: bytes, max_depth: int, max_records: int | None = None) -> DecodedRequest:
    """Decode an OTLP/JSON ``ExportLogsServiceRequest``; maps and arrays may nest ``max_depth`` levels,
    and it may hold ``max_records`` log records (None: any number), counted before any is decoded."""
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
    if max_records is not None and _count_records(doc) > max_records:
        raise too_many_records(max_records)
    try:
        return [
            _resource_logs(rl, f"resourceLogs[{i}]", max_depth)
            for i, rl in enumerate(_list(doc, "resourceLogs", "resource_logs", ""))
        ]
    except _Malformed as exc:
        raise BadRequest(f"malformed OTLP JSON: {exc}") from None


def _resource_logs(rl: Any, where: str, max_depth: int) -> ResourceData:
    _object(rl, where)
    attributes: Attributes = []
    resource = _get(rl, "resource", "resource")
    if resource is not None:
        _object(resource, f"{where}.resource")
        attributes = _attributes(resource, f"{where}.resource", max_depth)
    _str(rl, "schemaUrl", "schema_url", where)
    scopes: list[list[RecordEntry]] = []
    for j, sl in enumerate(_list(rl, "scopeLogs", "scope_logs", where)):
        swhere = f"{where}.scopeLogs[{j}]"
        _object(sl, swhere)
        scope = _get(sl, "scope", "scope")
        if scope is not None:
            _object(scope, f"{swhere}.scope")
            _str(scope, "name", "name", f"{swhere}.scope")
            _str(scope, "version", "version", f"{swhere}.scope")
        records: list[RecordEntry] = []
        for k, rec in enumerate(_list(sl, "logRecords", "log_records", swhere)):
            try:
                records.append(_record(rec, f"{swhere}.logRecords[{k}]", max_depth))
            except _Malformed as exc:
                records.append(BrokenRecord(str(exc), record_text(rec), "json"))
        scopes.append(records)
    return (None, attributes, scopes)


def _count_records(doc: dict[str, Any]) -> int:
    """How many log records the request holds; parts of the wrong shape count none (decoding refuses them)."""

    def items(obj: Any, camel: str, snake: str) -> list[Any]:
        value = _get(obj, camel, snake) if isinstance(obj, dict) else None
        return value if isinstance(value, list) else []

    return sum(
        len(items(sl, "logRecords", "log_records"))
        for rl in items(doc, "resourceLogs", "resource_logs")
        for sl in items(rl, "scopeLogs", "scope_logs")
    )


def record_text(rec: Any) -> bytes:
    """A record's JSON value, re-serialized for the quarantine: ASCII (a lone surrogate stays an escape,
    so the bytes are storable and decode to the same value), NaN and Infinity kept as parsed."""
    return json.dumps(rec, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _record(rec: Any, where: str, max_depth: int) -> Record:
    _object(rec, where)
    severity = _get(rec, "severityNumber", "severity_number")
    if severity is not None and (isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 24):
        raise _Malformed(f"{where}.severityNumber", "must be an integer from 0 to 24 (OTLP JSON encodes enums as integers)")
    _str(rec, "severityText", "severity_text", where)
    body = _get(rec, "body", "body")
    return (
        None,
        _uint(rec, "timeUnixNano", "time_unix_nano", where, 64),
        _uint(rec, "observedTimeUnixNano", "observed_time_unix_nano", where, 64),
        _str(rec, "eventName", "event_name", where),
        _hex_id(rec, "traceId", "trace_id", 16, where),
        _hex_id(rec, "spanId", "span_id", 8, where),
        None if body is None else _any_value(body, f"{where}.body", 0, max_depth),
        _attributes(rec, where, max_depth),
        _uint(rec, "droppedAttributesCount", "dropped_attributes_count", where, 32),
        _uint(rec, "flags", "flags", where, 32),
    )


def _attributes(owner: dict[str, Any], where: str, max_depth: int) -> Attributes:
    items = _get(owner, "attributes", "attributes")
    if items is None:
        return []
    if not isinstance(items, list):
        raise _Malformed(f"{where}.attributes", f"must be an array of {{key, value}} objects, got {_kind(items)}")
    return [_key_value(item, f"{where}.attributes[{n}]", 0, max_depth) for n, item in enumerate(items)]


def _key_value(item: Any, where: str, depth: int, max_depth: int) -> tuple[str, Any]:
    if not isinstance(item, dict):
        raise _Malformed(where, f"must be a {{key, value}} object, got {_kind(item)}")
    key = item.get("key")
    if not isinstance(key, str):
        raise _Malformed(f"{where}.key", "must be a string")
    value = item.get("value")
    return _text(key, f"{where}.key"), None if value is None else _any_value(value, f"{where}.value", depth, max_depth)


def _any_value(value: Any, where: str, depth: int, max_depth: int) -> Any:
    if not isinstance(value, dict):
        raise _Malformed(where, f'must be an AnyValue object such as {{"stringValue": "..."}}, got {_kind(value)}')
    for key, item in value.items():
        kind = _KINDS.get(key)
        if kind is None:
            continue  # unknown fields are ignored
        if kind == "string":
            if not isinstance(item, str):
                raise _Malformed(f"{where}.{key}", f"must be a string, got {_kind(item)}")
            return _text(item, f"{where}.{key}")
        if kind == "bool":
            if not isinstance(item, bool):
                raise _Malformed(f"{where}.{key}", f"must be true or false, got {_kind(item)}")
            return item
        if kind == "int":
            return _int64(item, f"{where}.{key}")
        if kind == "double":
            if isinstance(item, str) and item in ("NaN", "Infinity", "-Infinity"):
                return float(item.replace("Infinity", "inf"))
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                return float(item)
            raise _Malformed(f"{where}.{key}", f"must be a number, got {_kind(item)}")
        if kind == "bytes":
            if not isinstance(item, str):
                raise _Malformed(f"{where}.{key}", f"must be a base64 string, got {_kind(item)}")
            try:
                return base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise _Malformed(f"{where}.{key}", "is not valid base64") from None
        if depth >= max_depth:
            raise _Malformed(where, f"values are nested deeper than {max_depth} levels")
        values = _values(item, f"{where}.{key}")
        if kind == "array":
            return [_any_value(v, f"{where}.{key}.values[{n}]", depth + 1, max_depth) for n, v in enumerate(values)]
        return dict(_key_value(v, f"{where}.{key}.values[{n}]", depth + 1, max_depth) for n, v in enumerate(values))
    return None  # an empty AnyValue is a valid, empty value


_KINDS = {
    "stringValue": "string", "string_value": "string", "boolValue": "bool", "bool_value": "bool",
    "intValue": "int", "int_value": "int", "doubleValue": "double", "double_value": "double",
    "bytesValue": "bytes", "bytes_value": "bytes", "arrayValue": "array", "array_value": "array",
    "kvlistValue": "kvlist", "kvlist_value": "kvlist",
}  # fmt: skip


def _values(v: Any, where: str) -> list[Any]:
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
        raise _Malformed(f"{where}.{camel}".lstrip("."), f"must be an array, got {_kind(value)}")
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


def _uint(obj: dict[str, Any], camel: str, snake: str, where: str, bits: int) -> int:
    value = _get(obj, camel, snake)
    if value is None:
        return 0
    number = _integer(value, f"{where}.{camel}")
    if number < 0:
        raise _Malformed(f"{where}.{camel}", "must not be negative")
    if number >= 2**bits:
        raise _Malformed(f"{where}.{camel}", f"does not fit in {bits} bits")
    return number


def _int64(value: Any, where: str) -> int:
    number = _integer(value, where)
    if not -(2**63) <= number < 2**63:
        raise _Malformed(where, "does not fit in a signed 64-bit integer")
    return number


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise _Malformed(where, "must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 21:
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _Malformed(where, f"must be an integer or a decimal string, got {value!r:.40}")


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
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)
