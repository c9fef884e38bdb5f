"""Decoded OTLP records to normalized audit events (contract.md, "the normalized event").

Plain functions over plain data (``otlp_model``): no protobuf objects, no sockets, no
database. A record that cannot become an event raises RecordError with a message naming
the attribute and the problem; the pipeline turns that into a per-record reject.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from otaudit_collector.core.errors import BadRequest, RecordError
from otaudit_collector.core.otlp_model import (
    Attributes,
    BrokenRecord,
    DecodedRequest,
    Record,
    RecordPath,
    encode_record,
    encode_resource,
)

__all__ = [
    "Policy",
    "Candidate",
    "normalize_request",
    "normalize_record",
    "ResourceContext",
    "iso_from_ns",
    "derived_id",
    "storable",
    "storable_text",
    "describe",
    "too_many_rejects",
    "UnstorableRecord",
]


@dataclass(frozen=True, slots=True)
class Policy:
    """What the collector accepts, from the ``ingest`` section of the configuration."""

    max_attributes: int = 512
    max_string_length: int = 65536
    max_depth: int = 16
    max_past_seconds: int = 400 * 86400
    max_future_seconds: int = 300
    default_tenant: str | None = None
    max_records_per_request: int = 100_000
    """More log records in one request refuse it whole (413), before they are normalized."""
    max_rejects_per_request: int = 1000
    """More rejected records in one request refuse it whole (400): nothing of it is stored or quarantined, so one
    request cannot hold the writer with its quarantine, and the sender, splitting it, finds its culprits."""


class UnstorableRecord(RecordError):
    """A record holding what PostgreSQL cannot store where it would go (a NUL in its event name): reason ``unstorable``."""


@dataclass(slots=True)
class ResourceContext:
    """What a resource contributes to each of its records."""

    resource_bytes: bytes | None
    attributes: Attributes
    service: str | None = None
    instance: str | None = None
    tenant: str | None = None

    @classmethod
    def of(cls, resource_bytes: bytes | None, attributes: Attributes) -> ResourceContext:
        ctx = cls(resource_bytes, attributes)
        for key, value in attributes:
            text = value if isinstance(value, str) else (str(value) if type(value) is int else None)
            if key == "service.name":
                ctx.service = text or None
            elif key == "service.instance.id":
                ctx.instance = text or None
            elif key == "audit.tenant.id":
                ctx.tenant = text or None
        return ctx

    def encoded(self) -> bytes:
        """The resource's protobuf bytes, for the quarantine."""
        return encode_resource(self.resource_bytes, self.attributes)


@dataclass(slots=True)
class Candidate:
    """One record of a request on its way to storage or quarantine."""

    path: RecordPath
    record: Record | None  # None when the record could not be decoded
    context: ResourceContext
    doc: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    broken_bytes: bytes = b""  # an undecodable record's own bytes, when known
    broken_encoding: str = "protobuf"  # what broken_bytes are: otlp_model.ENCODINGS
    kind: str = "invalid_record"  # why normalization refused it, in a word (prepare.REJECT_REASONS)

    @property
    def record_encoding(self) -> str:
        """How ``record_bytes()`` is encoded: a decoded record is re-encoded as protobuf."""
        return "protobuf" if self.record is not None else self.broken_encoding

    @property
    def event(self) -> str:
        if self.doc is not None:
            return str(self.doc.get("event", ""))
        return self.record[3] if self.record is not None else ""

    def record_bytes(self) -> bytes:
        return encode_record(self.record) if self.record is not None else self.broken_bytes


def normalize_request(decoded: DecodedRequest, received_ns: int, policy: Policy) -> list[Candidate]:
    """Normalize every record of a decoded request, keeping each record's position.

    Raises BadRequest (see ``too_many_rejects``) as soon as more than
    ``policy.max_rejects_per_request`` records fail: the rest are not normalized.
    """
    out: list[Candidate] = []
    failed: list[tuple[int, Candidate]] = []
    limit = policy.max_rejects_per_request
    for i, (resource_bytes, resource_attributes, scopes) in enumerate(decoded):
        ctx = ResourceContext.of(resource_bytes, resource_attributes)
        for j, records in enumerate(scopes):
            for k, record in enumerate(records):
                if isinstance(record, str):
                    cand = Candidate((i, j, k), None, ctx, errors=[record])
                elif isinstance(record, BrokenRecord):
                    cand = Candidate((i, j, k), None, ctx, errors=[record.reason], broken_bytes=record.raw)
                    cand.broken_encoding = record.encoding
                else:
                    cand = Candidate((i, j, k), record, ctx)
                    try:
                        cand.doc = normalize_record(record, ctx, received_ns, policy)
                    except RecordError as exc:
                        cand.errors.append(exc.message)
                        if isinstance(exc, UnstorableRecord):
                            cand.kind = "unstorable"
                out.append(cand)
                if cand.errors:
                    failed.append((len(out) - 1, cand))
                    if len(failed) > limit:
                        total = sum(len(records) for _, _, scopes in decoded for records in scopes)
                        raise too_many_rejects(
                            f"at least {len(failed)} of its {total}", limit, [describe(n, c) for n, c in failed[:5]]
                        )
    return out


def too_many_rejects(count: str, limit: int, described: list[str]) -> BadRequest:
    """The answer to a request with more than ``limit`` rejected records: ``count`` of them (a number, or
    "at least N of its M"), and the first few of them, described, so that the sender can fix its culprits."""
    shown = "; ".join(text if len(text) <= 300 else text[:300] + "..." for text in described)
    return BadRequest(
        f"{count} records of this request were rejected; more than {limit} rejected records refuse a request whole,"
        f" so nothing of it was stored or quarantined: split it to find the bad records, fix them and send again."
        f" The first: {shown}"
    )


def describe(index: int, cand: Candidate, reasons: list[str] | None = None) -> str:
    """One rejected record for its sender: where it is in the request, its event and category, and why.

    Escaped by ``storable_text``: the text is stored in the quarantine and may be sent in a
    gRPC status, and a record's own values may hold a NUL."""
    i, j, k = cand.path
    what = f"record {index} (resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
    if cand.event:
        what += f", event '{cand.event}'"
    if cand.doc is not None and cand.doc.get("category"):
        what += f", category '{cand.doc['category']}'"
    return storable_text(f"{what}): " + "; ".join(cand.errors if reasons is None else reasons))


def storable_text(value: str) -> str:
    """``value`` as text PostgreSQL can store: a NUL written as ``\\u0000``, a lone surrogate as ``\\udXXX``.

    For the text columns of the quarantine (tenant, category, event, the reasons), which
    describe a record that may hold them; the record's own bytes are kept unchanged beside.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\\u0000")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


# Text attributes of the contract and where each goes: (part, field). Parts: 0 the actor,
# 1 the target, 2 the client, 3 the document itself, 4 id and tenant (placed after).
_TEXT: dict[str, tuple[int, str]] = {
    "audit.actor.type": (0, "type"),
    "user.id": (0, "id"),
    "user.email": (0, "email"),
    "user.name": (0, "name"),
    "audit.target.type": (1, "type"),
    "audit.target.id": (1, "id"),
    "audit.target.name": (1, "name"),
    "client.address": (2, "address"),
    "user_agent.original": (2, "user_agent"),
    "session.id": (2, "session_id"),
    "audit.category": (3, "category"),
    "audit.outcome": (3, "outcome"),
    "audit.reason": (3, "reason"),
    "log.record.uid": (4, "id"),
    "audit.tenant.id": (4, "tenant"),
}
_DETAILS_PREFIX = "audit.details."


def normalize_record(record: Record, ctx: ResourceContext, received_ns: int, policy: Policy) -> dict[str, Any]:
    """Build the normalized event document for one record."""
    _raw, time_ns, observed_ns, event_name, trace_id, span_id, body, attributes, dropped, _flags = record
    if len(attributes) > policy.max_attributes:
        raise RecordError(f"the record has {len(attributes)} attributes; at most {policy.max_attributes} are accepted")
    limit = policy.max_string_length
    actor: dict[str, Any] = {}
    target: dict[str, Any] = {}
    client: dict[str, Any] = {}
    doc: dict[str, Any] = {}
    meta: dict[str, str] = {}
    parts = (actor, target, client, doc, meta)
    details: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    sequence: int | None = None
    for key, value in attributes:
        slot = _TEXT.get(key)
        if slot is not None:
            parts[slot[0]][slot[1]] = value if type(value) is str and len(value) <= limit else _text(key, value, limit)
        elif key == "user.roles":
            actor["roles"] = _roles(value)
        elif key == "audit.changes":
            doc["changes"] = _changes(value)
        elif key == "audit.related":
            related = _related(value, limit)
            if related:  # an empty array is an absent section, as the envelope has it
                doc["related"] = related
        elif key == "audit.details":
            if not isinstance(value, dict):
                raise RecordError(f"attribute 'audit.details' must be a map (kvlist), got {_kind(value)}")
            details = {**value, **(details or {})}
        elif key == "audit.sequence":
            if type(value) is not int or value < 0:
                raise RecordError("attribute 'audit.sequence' must be a non-negative integer")
            sequence = value
        elif key.startswith(_DETAILS_PREFIX):
            details = details if details is not None else {}
            details[key[len(_DETAILS_PREFIX) :]] = value
        else:
            extra = extra if extra is not None else {}
            extra[key] = value

    flags: list[str] = []
    event = event_name
    if not event and extra and isinstance(extra.get("event.name"), str):
        event = extra.pop("event.name")  # the attribute older OTel SDKs used before LogRecord.event_name
    if not event:
        raise RecordError("the record has no event name: set LogRecord.event_name to the event's name in its catalog")
    doc["event"] = event
    uid = meta.get("id")
    if uid is None:
        uid = derived_id(ctx, record)
        flags.append("derived_id")
    doc["id"] = uid
    tenant = meta.get("tenant") or ctx.tenant or policy.default_tenant
    if not tenant:
        raise RecordError("the record names no tenant: set the attribute 'audit.tenant.id' on the record or its resource")
    doc["tenant"] = tenant
    _check_key_text(event, uid, tenant, doc.get("category"))
    doc["occurred_at"] = _occurred_at(time_ns, observed_ns, received_ns, policy, doc, flags)
    doc.setdefault("outcome", "success")
    doc["actor"] = actor
    if target:
        doc["target"] = target
    if client:
        doc["client"] = client
    if details is not None:
        doc["details"] = details
    source: dict[str, Any] = {}
    if ctx.service:
        source["service"] = ctx.service
    if ctx.instance:
        source["instance"] = ctx.instance
    if sequence is not None:
        source["sequence"] = sequence
    doc["source"] = source
    if trace_id and any(trace_id):
        trace = {"trace_id": trace_id.hex()}
        if span_id and any(span_id):
            trace["span_id"] = span_id.hex()
        doc["trace"] = trace
    if isinstance(body, str):
        if body:
            doc["message"] = body
    elif body is not None:
        extra = extra if extra is not None else {}
        extra["log.body"] = body
    if extra:
        doc["attributes"] = extra
    if dropped:
        flags.append("attributes_dropped")
    if flags:
        doc["flags"] = flags
    return doc


_KEY_FIELDS = (
    "the event name (LogRecord.event_name)",
    "attribute 'log.record.uid'",
    "attribute 'audit.tenant.id'",
    "attribute 'audit.category'",
)


def _check_key_text(*values: str | None) -> None:
    """Refuse a NUL (or a lone surrogate) in the fields that become the event's keys and the quarantine's columns.

    Checked here, before the catalogs quote the value back in a reason, so that the record is
    refused as ``unstorable`` naming its field; its other strings are checked once, as JSON, in ``prepare``.
    """
    for name, value in zip(_KEY_FIELDS, values, strict=True):
        if value is None:
            continue
        if "\x00" in value:
            raise UnstorableRecord(f"{name} contains a NUL character (U+0000), which cannot be stored: remove it at the source")
        if not value.isascii() and storable_text(value) != value:
            raise UnstorableRecord(f"{name} contains an unpaired UTF-16 surrogate, which is not text: fix it at the source")


def derived_id(ctx: ResourceContext, record: Record) -> str:
    """A stable id for a record that carries no ``log.record.uid``.

    A digest of what the record says (and of its resource), not of its bytes: the same
    record gets the same id whether it came as protobuf or JSON, so a retried request
    stores nothing twice. It is a version-8 (custom) UUID over SHA-256.
    """
    content = json.dumps([ctx.attributes, record[1:]], default=_bytes_as_text, ensure_ascii=False, separators=(",", ":"))
    raw = bytearray(hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return "b64:" + base64.b64encode(value).decode("ascii")
    raise TypeError(f"unexpected {type(value).__name__} in a decoded record")


def _occurred_at(time_ns: int, observed_ns: int, received_ns: int, policy: Policy, doc: dict[str, Any], flags: list[str]) -> str:
    ns = time_ns
    if not ns:
        ns = observed_ns
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


def storable(value: Any) -> Any:
    """A decoded value made storable as JSON: bytes as base64, non-finite doubles as text.

    Normalization leaves values as decoded; ``prepare`` calls this only for the rare
    event that JSON cannot hold as it is.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else ("NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity"))
    if kind is dict:
        return {k: storable(v) for k, v in value.items()}
    if kind is list:
        return [storable(v) for v in value]
    if kind is bytes:
        return base64.b64encode(value).decode("ascii")
    raise RecordError(f"unexpected value of type {kind.__name__}")


def _text(key: str, value: Any, limit: int) -> str:
    if type(value) is str:
        if len(value) > limit:
            raise RecordError(f"attribute '{key}' holds a string of {len(value)} characters; at most {limit} are accepted")
        return value
    if type(value) is int:
        return str(value)
    raise RecordError(f"attribute '{key}' must be a string, got {_kind(value)}")


def _roles(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise RecordError("attribute 'user.roles' must be an array of strings")


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


MAX_RELATED = 32
"""At most this many related objects per event: each is a per-object history the event shows in, and an index entry."""
_RELATED_KEYS = frozenset(("type", "id", "name"))


def _related(value: Any, limit: int) -> list[dict[str, str]]:
    """``audit.related`` as a list of ``{type, id, name?}``: the other objects the event concerns.

    Checked like the target, and stricter: each needs an id, because a related object exists
    to put the event in that object's history, which is found by type and id."""
    if isinstance(value, dict):
        value = [value]  # one object sent as a map rather than an array of one
    if not isinstance(value, list):
        raise RecordError(f"attribute 'audit.related' must be an array of {{type, id, name}} maps, got {_kind(value)}")
    if len(value) > MAX_RELATED:
        raise RecordError(f"attribute 'audit.related' names {len(value)} objects; at most {MAX_RELATED} are accepted")
    out: list[dict[str, str]] = []
    for index, item in enumerate(value):
        where = f"attribute 'audit.related' item {index}"
        if not isinstance(item, dict):
            raise RecordError(f"{where} must be a map with 'type', 'id' and optionally 'name', got {_kind(item)}")
        unknown = sorted(set(item) - _RELATED_KEYS)
        if unknown:
            raise RecordError(f"{where} has unknown keys {unknown}: only 'type', 'id' and 'name' are accepted")
        obj: dict[str, str] = {}
        for name in ("type", "id", "name"):
            if item.get(name) is not None:
                obj[name] = _text(f"audit.related[{index}].{name}", item[name], limit)
        if not obj.get("type") or not obj.get("id"):
            raise RecordError(f"{where} needs a non-empty 'type' and 'id' (the object's history is found by them)")
        out.append(obj)
    return out


def _kind(value: Any) -> str:
    names = {dict: "a map", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a double"}
    return names.get(type(value), "bytes" if isinstance(value, bytes) else "an empty value")


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
