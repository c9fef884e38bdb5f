"""The API audits itself (api.md): each API session (``site_access``) and each export
(``data_extraction``) becomes an event of the caller's tenant, with the token as actor.

The event is written as an OTLP/JSON request and handed to the same ``Ingestor`` that
serves the receivers: normalized, validated against the loaded catalogs, committed (or
quarantined) exactly like an event from any service.

Every value the caller supplies (client address, User-Agent, filters, query, reason) is
bounded to what the envelope schema and the ingest policy accept, and the event says which
were cut (``details.truncated``): a read whose event would be quarantined leaves no trace,
so an event the catalogs still refuse raises ``Unrecorded`` and the read is refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from otaudit_collector._resources import bundled_dir
from otaudit_collector.core.errors import IngestError
from otaudit_collector.core.tokens import Principal
from otaudit_collector.pipeline import Ingestor

__all__ = ["Access", "SelfAudit", "Sessions", "SERVICE_NAME", "TRAIL_TARGET", "Unrecorded", "LIMITS", "bound_text"]

log = logging.getLogger(__name__)

SERVICE_NAME = "otaudit-collector"

TRAIL_TARGET = {"type": "view", "id": "audit-trail", "name": "otaudit audit trail"}
"""The target of the trail's own exports (``exportView``) and imports (``importAuditTrail``): its history holds both."""


def _envelope_limits() -> dict[str, int]:
    """The maxLength the envelope schema (catalogs/schema/envelope.json) sets on each field the caller supplies."""
    envelope = json.loads((bundled_dir("catalogs") / "schema" / "envelope.json").read_text(encoding="utf-8"))
    client = envelope["properties"]["client"]["properties"]
    return {
        "client_address": int(client["address"]["maxLength"]),
        "user_agent": int(client["user_agent"]["maxLength"]),
        "user_name": int(envelope["$defs"]["actor"]["properties"]["name"]["maxLength"]),
    }


LIMITS: dict[str, int] = {
    **_envelope_limits(),
    # No schema bounds these: they are kept short so that the event stays small whatever the caller sends.
    "detail_text": 1024,  # each string in details (a filter value, the query), and the reason
    "detail_items": 64,  # values of one list in details (a filter given many times)
}
"""Characters (code points, as JSON Schema counts them) of each caller-supplied value of a self-audit event."""

_ELLIPSIS = "\u2026"


class Unrecorded(IngestError):
    """The API's own audit event was refused by the catalogs: the read it records must not happen."""


def bound_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` made storable and at most ``limit`` characters: (the text, whether it was changed).

    NUL and lone surrogates, which PostgreSQL cannot store, become U+FFFD; a cut text ends with an ellipsis.
    """
    clean = text.replace("\x00", "\ufffd")
    try:
        clean.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from JSON's "\\ud800", say)
        clean = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in clean)
    if len(clean) > limit:
        clean = clean[: max(limit - 1, 0)] + (_ELLIPSIS if limit > 0 else "")
    return clean, clean != text


def _bound_value(value: Any, where: str, text_limit: int, cut: list[str]) -> Any:
    """A details value with every string and list bounded; the paths of those cut are added to ``cut``."""
    if isinstance(value, str):
        bounded, changed = bound_text(value, text_limit)
        if changed:
            cut.append(where)
        return bounded
    if isinstance(value, Mapping):
        return {str(k): _bound_value(v, f"{where}.{k}", text_limit, cut) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = list(value)
        if len(items) > LIMITS["detail_items"]:
            items = items[: LIMITS["detail_items"]]
            cut.append(where)
        return [_bound_value(v, where, text_limit, cut) for v in items]
    return value


@dataclass(frozen=True, slots=True)
class Access:
    """Who reads, and from where."""

    principal: Principal
    address: str | None
    user_agent: str | None
    actor_type: str = "api_key"  # "user" for an operator's own command


def _uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": [{"key": str(k), "value": _value(v)} for k, v in value.items()]}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


class SelfAudit:
    """Records the API's own audit events through the ingest pipeline."""

    def __init__(self, ingestor: Ingestor, instance: str | None = None) -> None:
        self._ingestor = ingestor
        self._instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._sequence = 0

    def _limit(self, field: str) -> int:
        """A field's bound: the schema's (or ours), and never more than the ingest policy's max_string_length."""
        return min(LIMITS[field], self._ingestor.policy.max_string_length)

    def request_body(
        self,
        *,
        event: str,
        category: str,
        access: Access,
        outcome: str = "success",
        target: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        reason: str | None = None,
        message: str | None = None,
        sequence: int | None = None,
    ) -> tuple[str, bytes]:
        """(the event's id, the OTLP/JSON request carrying it). ``sequence``: the event's audit.sequence; None
        takes the next one (a trial event passes 0, so that the stored events' sequence has no gaps)."""
        if sequence is None:
            self._sequence += 1
            sequence = self._sequence
        event_id = _uuid7()
        p = access.principal
        cut: list[str] = []

        def bounded(name: str, value: str, limit: int) -> str:
            text, changed = bound_text(value, limit)
            if changed:
                cut.append(name)
            return text

        attributes: dict[str, Any] = {
            "log.record.uid": event_id,
            "audit.category": category,
            "audit.tenant.id": p.tenant,
            "audit.outcome": outcome,
            "audit.actor.type": "user" if p.role == "viewer" else access.actor_type,  # a viewer token is for a person
            "user.id": p.token_id,
            "user.name": bounded("actor.name", p.name, self._limit("user_name")),
            "user.roles": [p.role],
            "audit.sequence": sequence,
        }
        if access.address:
            attributes["client.address"] = bounded("client.address", access.address, self._limit("client_address"))
        if access.user_agent:
            attributes["user_agent.original"] = bounded("client.user_agent", access.user_agent, self._limit("user_agent"))
        for key, value in (target or {}).items():
            attributes[f"audit.target.{key}"] = value
        text_limit = self._limit("detail_text")
        bounded_details = {str(k): _bound_value(v, f"details.{k}", text_limit, cut) for k, v in (details or {}).items()}
        if reason:
            attributes["audit.reason"] = bounded("reason", reason, text_limit)
        if cut:
            bounded_details["truncated"] = sorted(set(cut))
        if bounded_details:
            attributes["audit.details"] = bounded_details
        record: dict[str, Any] = {
            "timeUnixNano": str(time.time_ns()),
            "eventName": event,
            "attributes": [{"key": k, "value": _value(v)} for k, v in attributes.items()],
        }
        if message:
            record["body"] = {"stringValue": message}
        resource = {
            "attributes": [
                {"key": "service.name", "value": {"stringValue": SERVICE_NAME}},
                {"key": "service.instance.id", "value": {"stringValue": self._instance}},
            ]
        }
        request = {
            "resourceLogs": [{"resource": resource, "scopeLogs": [{"scope": {"name": "otaudit"}, "logRecords": [record]}]}]
        }
        return event_id, json.dumps(request).encode()

    def check(self, **fields: Any) -> None:
        """Raise ``Unrecorded`` when the catalogs would refuse this event; stores nothing.

        Asked before a read that is recorded only once it is done (an export), so that a read
        whose event cannot be stored is refused instead of served without a trace.
        """
        _event_id, body = self.request_body(**fields, sequence=0)
        problem = self._ingestor.rejection(body, as_json=True)
        if problem is not None:
            log.error("otaudit's own audit event would be rejected: %s", problem, extra={"event": fields.get("event")})
            raise Unrecorded(f"the catalogs refuse the {fields.get('event')} event that would record it: {problem}")

    async def record(self, **fields: Any) -> str:
        """Record one event; its id once committed. ``Unrecorded`` when the catalogs refused it
        (it is then quarantined like any rejected record, and logged): the caller must not serve
        the read it records. Storage errors propagate."""
        event_id, body = self.request_body(**fields)
        result = await self._ingestor.export(body, as_json=True)
        if result.rejected:
            log.error("otaudit's own audit event was rejected: %s", result.message, extra={"event": fields.get("event")})
            raise Unrecorded(f"the catalogs refused the {fields.get('event')} event recording it: {result.message}")
        return event_id


class Sessions:
    """Opens an API session per token after a pause of ``idle_minutes``, and records it.

    The token's ``last_seen_at`` is kept in the database, so replicas agree on when a
    session began; each replica touches it at most every ``recheck_seconds`` per token.
    """

    def __init__(self, audit: SelfAudit, idle_minutes: float, recheck_seconds: float = 60.0) -> None:
        self._audit = audit
        self._idle_minutes = idle_minutes
        self._recheck = recheck_seconds
        self._seen: dict[str, float] = {}

    def due(self, token_id: str) -> bool:
        """Whether this replica should look at the token's session again (no database needed to say no)."""
        last = self._seen.get(token_id)
        return last is None or time.monotonic() - last >= self._recheck

    async def touch(self, conn: psycopg.AsyncConnection[Any], access: Access) -> bool:
        """Note a request; True when it opened a session (recorded as ``siteAccess``). Raises when the
        session cannot be recorded (``Unrecorded`` when the catalogs refuse its event): the request is then
        refused, and the next one tries to open the session again."""
        token_id = access.principal.token_id
        now = time.monotonic()
        if not self.due(token_id):
            return False
        if access.principal.role == "viewer":  # no row of its own: its session is its life, opened once here
            return await self._viewer_session(access, now)
        cur = await conn.execute(
            "UPDATE tokens t SET last_seen_at = now() FROM (SELECT id, last_seen_at FROM tokens WHERE id = %s FOR UPDATE) b"
            " WHERE t.id = b.id RETURNING b.last_seen_at, b.last_seen_at IS NULL OR b.last_seen_at < now() - %s * interval '1 minute'",
            (token_id, self._idle_minutes),
        )
        row = await cur.fetchone()
        await conn.commit()
        self._seen[token_id] = now
        if row is None or not row[1]:
            return False
        try:
            await self._audit.record(
                event="siteAccess",
                category="site_access",
                access=access,
                details={"method": "token"},
                message=f"API session opened with token {token_id} ({access.principal.role})",
            )
        except BaseException:
            # Not recorded: the session is not open either, so the next request tries again.
            self._seen.pop(token_id, None)
            await conn.execute("UPDATE tokens SET last_seen_at = %s WHERE id = %s", (row[0], token_id))
            await conn.commit()
            raise
        return True

    async def _viewer_session(self, access: Access, now: float) -> bool:
        """A viewer token's first request on this replica opens its session (``siteAccess`` with
        method ``viewer_token``, the person it is for as the actor); it lives minutes, so once is enough."""
        token_id = access.principal.token_id
        if len(self._seen) >= 65536:  # viewer tokens come and go: forget the oldest sessions first
            for old in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[old]
        await self._audit.record(
            event="siteAccess",
            category="site_access",
            access=access,
            details={"method": "viewer_token"},
            message=f"viewer session opened for {access.principal.name} with viewer token {token_id}",
        )
        self._seen[token_id] = now + 10 * 365 * 86400  # not due again while this replica runs
        return True
