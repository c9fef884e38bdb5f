"""Capture recorded audit events in a service's own tests, without a collector.

::

    from otaudit_sdk.testing import capture

    def test_role_change_is_audited():
        with capture(tenant="acme") as audit:
            grant_role(user="u-17", role="r-3")
        event = audit.one("addRole")
        assert event.actor["id"] == "u-17"
        assert event.changes == [{"field": "roles", "old": [], "new": ["r-3"]}]

Events go through the real ``record()``: checked and encoded exactly as in production,
then decoded back from the OTLP bytes, so what a test sees is what the collector gets.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import otaudit_sdk
from otaudit_sdk import attributes as a
from otaudit_sdk._buffer import Batch, Buffer
from otaudit_sdk._client import AuditClient
from otaudit_sdk._config import settings_from

__all__ = ["capture", "CapturedEvent", "Captured", "decode_record"]


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One recorded event, in the shape of the collector's normalized event."""

    id: str
    event: str
    category: str | None
    tenant: str | None
    outcome: str
    occurred_at: _dt.datetime
    actor: dict[str, Any]
    client: dict[str, Any]
    target: dict[str, Any] | None
    changes: list[dict[str, Any]]
    details: dict[str, Any]
    reason: str | None
    message: str | None
    sequence: int | None
    trace_id: str | None
    span_id: str | None
    attributes: dict[str, Any] = field(repr=False)
    """Every attribute as sent, by its wire name."""
    related: list[dict[str, Any]] = field(default_factory=list)
    """The other objects the event concerns (``audit.related``): ``[{"type", "id", "name"?}]``."""


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def decode_record(record: bytes) -> CapturedEvent:
    """An encoded LogRecord back to a ``CapturedEvent``."""
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    msg = LogRecord.FromString(record)
    attrs = {kv.key: _value(kv.value) for kv in msg.attributes}
    actor = {"type": attrs.get(a.ACTOR_TYPE)}
    for key, name in ((a.USER_ID, "id"), (a.USER_EMAIL, "email"), (a.USER_NAME, "name"), (a.USER_ROLES, "roles")):
        if key in attrs:
            actor[name] = attrs[key]
    client = {
        name: attrs[key]
        for key, name in ((a.CLIENT_ADDRESS, "address"), (a.USER_AGENT, "user_agent"), (a.SESSION_ID, "session_id"))
        if key in attrs
    }
    target = None
    if a.TARGET_TYPE in attrs:
        target = {"type": attrs[a.TARGET_TYPE]}
        for key, name in ((a.TARGET_ID, "id"), (a.TARGET_NAME, "name")):
            if key in attrs:
                target[name] = attrs[key]
    return CapturedEvent(
        id=attrs[a.RECORD_UID],
        event=msg.event_name,
        category=attrs.get(a.CATEGORY),
        tenant=attrs.get(a.TENANT_ID),
        outcome=attrs.get(a.OUTCOME, "success"),
        occurred_at=_dt.datetime.fromtimestamp(msg.time_unix_nano / 1e9, _dt.UTC),
        actor=actor,
        client=client,
        target=target,
        changes=list(attrs.get(a.CHANGES) or []),
        details=dict(attrs.get(a.DETAILS) or {}),
        reason=attrs.get(a.REASON),
        message=_value(msg.body) if msg.HasField("body") else None,
        sequence=attrs.get(a.SEQUENCE),
        trace_id=msg.trace_id.hex() or None,
        span_id=msg.span_id.hex() or None,
        attributes=attrs,
        related=list(attrs.get(a.RELATED) or []),
    )


class Captured(Buffer):
    """The events recorded while ``capture()`` is active, oldest first."""

    def __init__(self) -> None:
        super().__init__(max_bytes=1 << 62)
        self.events: list[CapturedEvent] = []

    def append(self, record: bytes, now_ns: int) -> None:
        event = decode_record(record)
        with self._lock:
            self.events.append(event)

    def take(self, max_records: int, max_bytes: int) -> Batch | None:
        return None

    def oldest_ns(self) -> int | None:
        return None

    def named(self, event: str) -> list[CapturedEvent]:
        return [e for e in self.events if e.event == event]

    def one(self, event: str | None = None) -> CapturedEvent:
        """The single event (named ``event``) recorded; fails the test otherwise."""
        found = self.events if event is None else self.named(event)
        if len(found) != 1:
            names = [e.event for e in self.events]
            raise AssertionError(f"expected one {event or 'event'}, found {len(found)}; recorded: {names}")
        return found[0]

    def clear(self) -> None:
        self.events.clear()


@contextlib.contextmanager
def capture(*, tenant: str | None = "test-tenant", service_name: str = "test-service") -> Iterator[Captured]:
    """Route ``otaudit_sdk.record()`` (and ``audited``) to a list for the block's duration."""
    captured = Captured()
    settings = settings_from(service_name=service_name, tenant=tenant, durability="memory", environ={})
    previous = otaudit_sdk._install(AuditClient(settings, buffer=captured))
    try:
        yield captured
    finally:
        otaudit_sdk._install(previous)
