"""The API audits itself (api.md): each API session (``site_access``) and each export
(``data_extraction``) becomes an event of the caller's tenant, with the token as actor.

The event is written as an OTLP/JSON request and handed to the same ``Ingestor`` that
serves the receivers: normalized, validated against the loaded catalogs, committed (or
quarantined) exactly like an event from any service.
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

from otaudit_collector.core.tokens import Principal
from otaudit_collector.pipeline import Ingestor

__all__ = ["Access", "SelfAudit", "Sessions", "SERVICE_NAME"]

log = logging.getLogger(__name__)

SERVICE_NAME = "otaudit-collector"


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
    ) -> tuple[str, bytes]:
        """(the event's id, the OTLP/JSON request carrying it)."""
        self._sequence += 1
        event_id = _uuid7()
        p = access.principal
        attributes: dict[str, Any] = {
            "log.record.uid": event_id,
            "audit.category": category,
            "audit.tenant.id": p.tenant,
            "audit.outcome": outcome,
            "audit.actor.type": access.actor_type,
            "user.id": p.token_id,
            "user.name": p.name,
            "user.roles": [p.role],
            "audit.sequence": self._sequence,
        }
        if access.address:
            attributes["client.address"] = access.address
        if access.user_agent:
            attributes["user_agent.original"] = access.user_agent
        for key, value in (target or {}).items():
            attributes[f"audit.target.{key}"] = value
        if details:
            attributes["audit.details"] = dict(details)
        if reason:
            attributes["audit.reason"] = reason
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

    async def record(self, **fields: Any) -> str | None:
        """Record one event; its id once committed, None when the catalogs refused it (it is
        then quarantined like any rejected record, and logged). Storage errors propagate."""
        event_id, body = self.request_body(**fields)
        result = await self._ingestor.export(body, as_json=True)
        if result.rejected:
            log.error("the API's own audit event was rejected: %s", result.message, extra={"event": fields.get("event")})
            return None
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
        """Note a request; True when it opened a session (recorded as ``siteAccess``)."""
        token_id = access.principal.token_id
        now = time.monotonic()
        if not self.due(token_id):
            return False
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
