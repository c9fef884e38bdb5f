"""Stored event documents back to OTLP: the request an OTLP stream sends.

Pure. Written from the reading side (``core.normalize``): each field of the document goes
to the attribute (or LogRecord field) the normalizer reads it from, so that another otaudit
normalizing the request builds the same document again. What it cannot give back, because
the receiver sets it itself or the wire has no place for it:

- ``seq`` and ``received_at`` (the receiver's own; ``received_at`` is sent as the observed
  time, which the receiver reads only when the time is missing);
- the flags ``derived_id`` (the id is now sent as ``log.record.uid``), ``time_from_received``
  and ``clock_skew`` (``occurred_at`` is sent as the time, so the receiver sees a plain time;
  ``claimed_occurred_at`` is not sent) and ``imported``. ``time_from_observed`` and
  ``attributes_dropped`` are given back: the time is sent as the observed time only, and a
  dropped-attributes count of 1 is sent;
- ``attributes`` gains ``otaudit.seq`` and ``otaudit.source.tenant`` (this module's own
  attributes: the normalizer keeps attributes outside the contract there);
- ``source.scope`` (the normalizer reads no scope), an empty ``message``, and an
  ``occurred_at`` not written as the collector writes it (an imported one: the receiver
  writes it again as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs

__all__ = ["SEQ_ATTRIBUTE", "SOURCE_TENANT_ATTRIBUTE", "SCOPE_NAME", "log_record", "export_request", "any_value"]

SEQ_ATTRIBUTE: Final = "otaudit.seq"
"""The event's ``seq`` in the sending collector's trail: with the event id, what a receiver drops repeats by."""
SOURCE_TENANT_ATTRIBUTE: Final = "otaudit.source.tenant"
"""The tenant whose trail the event was sent from."""
SCOPE_NAME: Final = "otaudit.stream"

# (document part, field) -> attribute, the inverse of normalize._TEXT
_ACTOR: Final = (("type", "audit.actor.type"), ("id", "user.id"), ("email", "user.email"), ("name", "user.name"))
_TARGET: Final = (("type", "audit.target.type"), ("id", "audit.target.id"), ("name", "audit.target.name"))
_CLIENT: Final = (("address", "client.address"), ("user_agent", "user_agent.original"), ("session_id", "session.id"))
_TOP: Final = (("category", "audit.category"), ("outcome", "audit.outcome"), ("reason", "audit.reason"))
_INT64: Final = (-(1 << 63), (1 << 63) - 1)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def any_value(value: Any) -> AnyValue:
    """A JSON value as an OTLP AnyValue (an integer outside int64, as JSON numbers may be, as a double)."""
    out = AnyValue()
    if value is None:
        return out
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            out.int_value = value
        else:
            out.double_value = float(value)
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, Mapping):
        out.kvlist_value.SetInParent()
        out.kvlist_value.values.extend(KeyValue(key=str(k), value=any_value(v)) for k, v in value.items())
    elif isinstance(value, list | tuple):
        out.array_value.SetInParent()
        out.array_value.values.extend(any_value(v) for v in value)
    else:
        raise ValueError(f"a value of type {type(value).__name__} is not JSON")
    return out


def _ns(text: Any, what: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time."""
    if not isinstance(text, str):
        raise ValueError(f"the event's {what} is not a time: {text!r}")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"the event's {what} {text!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _texts(part: Any, names: Iterable[tuple[str, str]], out: list[KeyValue]) -> None:
    if isinstance(part, Mapping):
        for field, key in names:
            if part.get(field) is not None:
                out.append(KeyValue(key=key, value=any_value(part[field])))


def log_record(doc: Mapping[str, Any], *, seq: int, source_tenant: str) -> LogRecord:
    """The LogRecord of one stored event document (``seq`` and ``received_at`` in it are ignored).

    Raises ValueError naming the field when the document is not an event (no event name or
    id, an unreadable time).
    """
    event, uid = doc.get("event"), doc.get("id")
    if not isinstance(event, str) or not event:
        raise ValueError("the document has no 'event'")
    if not isinstance(uid, str) or not uid:
        raise ValueError("the document has no 'id'")
    flags = doc.get("flags") or ()
    record = LogRecord(event_name=event)
    occurred = _ns(doc.get("occurred_at"), "occurred_at")
    if "time_from_observed" in flags:
        record.observed_time_unix_nano = occurred  # as it came: the receiver flags it again
    else:
        record.time_unix_nano = occurred
        if doc.get("received_at") is not None:
            record.observed_time_unix_nano = _ns(doc["received_at"], "received_at")
    if "attributes_dropped" in flags:
        record.dropped_attributes_count = 1

    attrs: list[KeyValue] = [KeyValue(key="log.record.uid", value=any_value(uid))]
    if doc.get("tenant") is not None:
        attrs.append(KeyValue(key="audit.tenant.id", value=any_value(doc["tenant"])))
    _texts(doc, _TOP, attrs)
    actor = doc.get("actor")
    _texts(actor, _ACTOR, attrs)
    if isinstance(actor, Mapping) and actor.get("roles") is not None:
        attrs.append(KeyValue(key="user.roles", value=any_value(actor["roles"])))
    _texts(doc.get("target"), _TARGET, attrs)
    _texts(doc.get("client"), _CLIENT, attrs)
    for field, key in (("related", "audit.related"), ("changes", "audit.changes"), ("details", "audit.details")):
        if doc.get(field) is not None:
            attrs.append(KeyValue(key=key, value=any_value(doc[field])))
    source = doc.get("source")
    if isinstance(source, Mapping) and source.get("sequence") is not None:
        attrs.append(KeyValue(key="audit.sequence", value=any_value(source["sequence"])))

    extra = dict(doc.get("attributes") or {})
    message = doc.get("message")
    if isinstance(message, str) and message:
        record.body.string_value = message
    elif extra.get("log.body") is not None and not isinstance(extra["log.body"], str):
        record.body.CopyFrom(any_value(extra.pop("log.body")))  # a body that was not text: kept there
    extra.pop(SEQ_ATTRIBUTE, None)  # an earlier hop's: this hop's follow
    extra.pop(SOURCE_TENANT_ATTRIBUTE, None)
    attrs.extend(KeyValue(key=str(key), value=any_value(value)) for key, value in extra.items())
    attrs.append(KeyValue(key=SEQ_ATTRIBUTE, value=any_value(seq)))
    attrs.append(KeyValue(key=SOURCE_TENANT_ATTRIBUTE, value=any_value(source_tenant)))
    record.attributes.extend(attrs)

    trace = doc.get("trace")
    if isinstance(trace, Mapping) and isinstance(trace.get("trace_id"), str):
        try:
            record.trace_id = bytes.fromhex(trace["trace_id"])
            if isinstance(trace.get("span_id"), str):
                record.span_id = bytes.fromhex(trace["span_id"])
        except ValueError:
            raise ValueError(f"the event's trace {dict(trace)!r} is not hexadecimal") from None
    return record


def _resource_key(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    source = doc.get("source")
    if not isinstance(source, Mapping):
        return None, None
    service, instance = source.get("service"), source.get("instance")
    return (service if isinstance(service, str) else None, instance if isinstance(instance, str) else None)


def export_request(events: Iterable[tuple[int, Mapping[str, Any]]], *, source_tenant: str) -> ExportLogsServiceRequest:
    """One request of the (seq, document) pairs, in the given (seq) order throughout: a new
    ResourceLogs each time the source (``service.name``, ``service.instance.id``) changes, so
    that reading the request's records in order reads them in seq order (a receiver dropping
    repeats by the highest ``otaudit.seq`` seen must not see a lower one after it)."""
    request = ExportLogsServiceRequest()
    logs: ResourceLogs | None = None
    current: tuple[str | None, str | None] | None = None
    for seq, doc in events:
        key = _resource_key(doc)
        if logs is None or key != current:
            logs, current = request.resource_logs.add(), key
            service, instance = key
            if service is not None:
                logs.resource.attributes.add(key="service.name", value=any_value(service))
            if instance is not None:
                logs.resource.attributes.add(key="service.instance.id", value=any_value(instance))
            logs.scope_logs.add().scope.name = SCOPE_NAME
        logs.scope_logs[0].log_records.append(log_record(doc, seq=seq, source_tenant=source_tenant))
    return request
