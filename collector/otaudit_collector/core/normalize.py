"""OTLP LogRecords to normalized audit events (contract.md, "the normalized event").

Plain functions over plain data: no sockets, no database. A record that cannot become
an event raises RecordError with a message naming the attribute and the problem; the
pipeline turns that into a per-record reject.
"""

from __future__ import annotations

import base64
import hashlib
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otaudit_collector.core.errors import RecordError
from otaudit_collector.core.otlp_json import DecodedRequest, RecordPath

__all__ = ["Policy", "Candidate", "normalize_request", "normalize_record", "ResourceContext", "iso_from_ns"]


@dataclass(frozen=True, slots=True)
class Policy:
    """What the collector accepts, from the ``ingest`` section of the configuration."""

    max_attributes: int = 512
    max_string_length: int = 65536
    max_depth: int = 16
    max_past_seconds: int = 400 * 86400
    max_future_seconds: int = 300
    default_tenant: str | None = None


@dataclass(slots=True)
class ResourceContext:
    """What a ResourceLogs contributes to each of its records."""

    resource: Resource
    service: str | None = None
    instance: str | None = None
    tenant: str | None = None
    _serialized: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, resource: Resource) -> ResourceContext:
        ctx = cls(resource)
        for kv in resource.attributes:
            key = kv.key
            if key == "service.name":
                ctx.service = _scalar_text(kv.value)
            elif key == "service.instance.id":
                ctx.instance = _scalar_text(kv.value)
            elif key == "audit.tenant.id":
                ctx.tenant = _scalar_text(kv.value)
        return ctx

    def serialized(self) -> bytes:
        if self._serialized is None:
            self._serialized = self.resource.SerializeToString(deterministic=True)
        return self._serialized


@dataclass(slots=True)
class Candidate:
    """One record of a request on its way to storage or quarantine."""

    path: RecordPath
    record: LogRecord
    context: ResourceContext
    doc: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def event(self) -> str:
        if self.doc is not None:
            return str(self.doc.get("event", ""))
        return self.record.event_name


def normalize_request(decoded: DecodedRequest, received_ns: int, policy: Policy) -> list[Candidate]:
    """Normalize every record of a decoded request, keeping each record's position."""
    out: list[Candidate] = []
    for i, rl in enumerate(decoded.message.resource_logs):
        ctx = ResourceContext.of(rl.resource)
        for j, sl in enumerate(rl.scope_logs):
            for k, record in enumerate(sl.log_records):
                cand = Candidate((i, j, k), record, ctx)
                broken = decoded.broken.get((i, j, k)) if decoded.broken else None
                if broken is not None:
                    cand.errors.append(broken)
                else:
                    try:
                        cand.doc = normalize_record(record, ctx, received_ns, policy)
                    except RecordError as exc:
                        cand.errors.append(exc.message)
                out.append(cand)
    return out


# Attributes of the contract and where they go in the document. Anything else is kept
# under "attributes" (or "details" for audit.details.* keys), so nothing sent is lost.
_ACTOR = {"audit.actor.type": "type", "user.id": "id", "user.email": "email", "user.name": "name"}
_TARGET = {"audit.target.type": "type", "audit.target.id": "id", "audit.target.name": "name"}
_CLIENT = {"client.address": "address", "user_agent.original": "user_agent", "session.id": "session_id"}
_TOP = {"audit.category": "category", "audit.outcome": "outcome", "audit.reason": "reason"}
_DETAILS_PREFIX = "audit.details."


def normalize_record(record: LogRecord, ctx: ResourceContext, received_ns: int, policy: Policy) -> dict[str, Any]:
    """Build the normalized event document for one record."""
    if len(record.attributes) > policy.max_attributes:
        raise RecordError(f"the record has {len(record.attributes)} attributes; at most {policy.max_attributes} are accepted")
    doc: dict[str, Any] = {}
    flags: list[str] = []
    actor: dict[str, Any] = {}
    uid: str | None = None
    tenant: str | None = None
    details: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    for kv in record.attributes:
        key = kv.key
        if key in _ACTOR:
            actor[_ACTOR[key]] = _text(key, kv.value, policy)
        elif key in _TARGET:
            doc.setdefault("target", {})[_TARGET[key]] = _text(key, kv.value, policy)
        elif key in _CLIENT:
            doc.setdefault("client", {})[_CLIENT[key]] = _text(key, kv.value, policy)
        elif key in _TOP:
            doc[_TOP[key]] = _text(key, kv.value, policy)
        elif key == "log.record.uid":
            uid = _text(key, kv.value, policy)
        elif key == "audit.tenant.id":
            tenant = _text(key, kv.value, policy)
        elif key == "user.roles":
            actor["roles"] = _roles(kv.value, policy)
        elif key == "audit.changes":
            doc["changes"] = _changes(_value(key, kv.value, policy, 0))
        elif key == "audit.details":
            value = _value(key, kv.value, policy, 0)
            if not isinstance(value, dict):
                raise RecordError(f"attribute 'audit.details' must be a map (kvlist), got {_kind(value)}")
            details = {**value, **(details or {})}
        elif key == "audit.sequence":
            doc["_sequence"] = _sequence(kv.value)
        elif key.startswith(_DETAILS_PREFIX):
            details = details if details is not None else {}
            details[key[len(_DETAILS_PREFIX) :]] = _value(key, kv.value, policy, 0)
        else:
            extra = extra if extra is not None else {}
            extra[key] = _value(key, kv.value, policy, 0)

    event = record.event_name
    if not event and extra and isinstance(extra.get("event.name"), str):
        event = extra.pop("event.name")  # the attribute older OTel SDKs used before LogRecord.event_name
    if not event:
        raise RecordError("the record has no event name: set LogRecord.event_name to the event's name in its catalog")
    doc["event"] = event
    if uid is None:
        uid = derived_id(ctx, record)
        flags.append("derived_id")
    doc["id"] = uid
    tenant = tenant or ctx.tenant or policy.default_tenant
    if not tenant:
        raise RecordError("the record names no tenant: set the attribute 'audit.tenant.id' on the record or its resource")
    doc["tenant"] = tenant
    doc["occurred_at"] = _occurred_at(record, received_ns, policy, doc, flags)
    doc.setdefault("outcome", "success")
    doc["actor"] = actor
    if details is not None:
        doc["details"] = details
    source: dict[str, Any] = {}
    if ctx.service:
        source["service"] = ctx.service
    if ctx.instance:
        source["instance"] = ctx.instance
    sequence = doc.pop("_sequence", None)
    if sequence is not None:
        source["sequence"] = sequence
    doc["source"] = source
    if record.trace_id and any(record.trace_id):
        trace = {"trace_id": record.trace_id.hex()}
        if record.span_id and any(record.span_id):
            trace["span_id"] = record.span_id.hex()
        doc["trace"] = trace
    if record.HasField("body"):
        body = _value("body", record.body, policy, 0)
        if isinstance(body, str):
            if body:
                doc["message"] = body
        elif body is not None:
            extra = extra if extra is not None else {}
            extra["log.body"] = body
    if extra:
        doc["attributes"] = extra
    if record.dropped_attributes_count:
        flags.append("attributes_dropped")
    if flags:
        doc["flags"] = flags
    return doc


def derived_id(ctx: ResourceContext, record: LogRecord) -> str:
    """A stable id for a record that carries no ``log.record.uid``.

    The same record from the same resource always gets the same id, so a retried request
    stores nothing twice. It is a version-8 (custom) UUID over SHA-256 of both.
    """
    digest = hashlib.sha256(ctx.serialized() + b"\x00" + record.SerializeToString(deterministic=True)).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def _occurred_at(record: LogRecord, received_ns: int, policy: Policy, doc: dict[str, Any], flags: list[str]) -> str:
    ns = record.time_unix_nano
    if not ns:
        ns = record.observed_time_unix_nano
        if ns:
            flags.append("time_from_observed")
        else:
            flags.append("time_from_received")
            return iso_from_ns(received_ns)
    if not (
        received_ns - policy.max_past_seconds * 1_000_000_000 <= ns <= received_ns + policy.max_future_seconds * 1_000_000_000
    ):
        flags.append("clock_skew")
        doc["claimed_occurred_at"] = iso_from_ns(ns) if ns < 253402300800 * 10**9 else str(ns)
        return iso_from_ns(received_ns)
    return iso_from_ns(ns)


_SECOND_PREFIX: dict[int, str] = {}


def iso_from_ns(ns: int) -> str:
    """RFC 3339 UTC with microseconds: ``2026-11-21T10:15:30.123456Z``."""
    seconds, rest = divmod(ns, 1_000_000_000)
    prefix = _SECOND_PREFIX.get(seconds)
    if prefix is None:
        if len(_SECOND_PREFIX) > 4096:
            _SECOND_PREFIX.clear()
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _SECOND_PREFIX[seconds] = prefix
    return f"{prefix}.{rest // 1000:06d}Z"


def _value(key: str, v: AnyValue, policy: Policy, depth: int) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        s = v.string_value
        if len(s) > policy.max_string_length:
            raise RecordError(
                f"attribute '{key}' holds a string of {len(s)} characters; at most {policy.max_string_length} are accepted"
            )
        return s
    if kind in {"int_value", "bool_value"}:
        return getattr(v, kind)
    if kind == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else ("NaN" if math.isnan(d) else ("Infinity" if d > 0 else "-Infinity"))
    if depth >= policy.max_depth:
        raise RecordError(f"attribute '{key}' nests maps or arrays deeper than {policy.max_depth} levels")
    if kind == "kvlist_value":
        return {item.key: _value(key, item.value, policy, depth + 1) for item in v.kvlist_value.values}
    if kind == "array_value":
        return [_value(key, item, policy, depth + 1) for item in v.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return None


def _text(key: str, v: AnyValue, policy: Policy) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        s = v.string_value
        if len(s) > policy.max_string_length:
            raise RecordError(
                f"attribute '{key}' holds a string of {len(s)} characters; at most {policy.max_string_length} are accepted"
            )
        return s
    if kind == "int_value":
        return str(v.int_value)
    raise RecordError(f"attribute '{key}' must be a string, got {_kind_of(kind)}")


def _scalar_text(v: AnyValue) -> str | None:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value or None
    if kind == "int_value":
        return str(v.int_value)
    return None


def _roles(v: AnyValue, policy: Policy) -> list[str]:
    value = _value("user.roles", v, policy, 0)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise RecordError("attribute 'user.roles' must be an array of strings")


def _sequence(v: AnyValue) -> int:
    if v.WhichOneof("value") != "int_value" or v.int_value < 0:
        raise RecordError("attribute 'audit.sequence' must be a non-negative integer")
    return v.int_value


def _changes(value: Any) -> list[Any]:
    """``audit.changes`` as a list of {field, old, new}; a map keyed by field is accepted too."""
    if isinstance(value, dict):
        pairs: list[Any] = []
        for name, pair in value.items():
            if not isinstance(pair, dict):
                raise RecordError(f"attribute 'audit.changes' entry '{name}' must be a map with 'old' and/or 'new'")
            pairs.append({"field": name, **pair})
        return pairs
    if isinstance(value, list):
        return value
    raise RecordError(f"attribute 'audit.changes' must be an array of {{field, old, new}} maps, got {_kind(value)}")


def _kind_of(kind: str | None) -> str:
    return {
        None: "an empty value",
        "bool_value": "a boolean",
        "double_value": "a double",
        "array_value": "an array",
        "kvlist_value": "a map",
        "bytes_value": "bytes",
    }.get(kind, kind or "")


def _kind(value: Any) -> str:
    return {dict: "a map", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a double"}.get(
        type(value), "an empty value"
    )


def iter_strings(value: Any) -> Iterator[str]:
    """Every string inside a normalized value, keys included (used for the NUL check)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from iter_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_strings(item)
