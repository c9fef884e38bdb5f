"""The arguments of ``record()`` to the bytes of one LogRecord, per the wire contract.

Pure apart from the clock and the random bits of the id. The per-emitter sequence is
added by the client when the record is appended, so that it follows append order.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from otaudit_sdk import _encode as enc
from otaudit_sdk import attributes as a
from otaudit_sdk._model import Actor, Change, Target

__all__ = ["encode_event", "related_maps", "sequence_attribute", "uuid7", "check_name", "check_tenant", "time_ns_of"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,127}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")

_KEY: Final = {
    name: enc.key_prefix(name)
    for name in (
        a.RECORD_UID,
        a.CATEGORY,
        a.TENANT_ID,
        a.OUTCOME,
        a.ACTOR_TYPE,
        a.USER_ID,
        a.USER_EMAIL,
        a.USER_NAME,
        a.USER_ROLES,
        a.CLIENT_ADDRESS,
        a.USER_AGENT,
        a.SESSION_ID,
        a.TARGET_TYPE,
        a.TARGET_ID,
        a.TARGET_NAME,
        a.CHANGES,
        a.RELATED,
        a.DETAILS,
        a.REASON,
        a.SEQUENCE,
    )
}
_SUCCESS: Final = enc.string_attribute(_KEY[a.OUTCOME], "success", a.OUTCOME)


def check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{kind} {value!r} is not a valid name: a letter, then up to 127 letters, digits, '_', '.' or '-'")
    return value


def check_tenant(value: object) -> str:
    if not isinstance(value, str) or not _TENANT.fullmatch(value):
        raise ValueError(
            f"tenant {value!r} is not a valid tenant id: a letter or digit, then up to 127 of letters, digits, '_', '.', ':' or '-'"
        )
    return value


def uuid7(ms: int) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits."""
    rand = int.from_bytes(os.urandom(10))
    value = (ms << 80) | (0x7000 | (rand >> 68)) << 64 | 0x8000000000000000 | (rand & 0x3FFFFFFFFFFFFFFF)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def time_ns_of(when: _dt.datetime) -> int:
    if not isinstance(when, _dt.datetime):
        raise TypeError(f"occurred_at must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None:
        raise ValueError("occurred_at has no time zone; pass an aware datetime (datetime.now(timezone.utc))")
    delta = when - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if ns <= 0:
        raise ValueError(f"occurred_at {when.isoformat()} is not after 1970-01-01")
    return ns


def _is_contract_name(key: str) -> bool:
    return key in _KEY or (key.startswith(("audit.", "user.")) and not key.startswith("audit.details."))


def related_maps(related: Sequence[Target]) -> list[dict[str, str]]:
    """``related`` as the contract's ``audit.related`` maps, checked as the collector checks them."""
    given: object = related
    if isinstance(given, (Target, str)) or not isinstance(given, Sequence):
        raise TypeError(f"related must be a list of otaudit_sdk.Target, got {type(related).__name__}")
    if len(related) > a.MAX_RELATED:
        raise ValueError(f"related names {len(related)} objects; the collector accepts at most {a.MAX_RELATED}")
    out = []
    for obj in related:
        if not isinstance(obj, Target):
            raise TypeError(f"related must be a list of otaudit_sdk.Target, got an item {type(obj).__name__} {obj!r}")
        if not obj.id:
            raise ValueError(f"related object {obj!r} needs an id: its history is found by type and id")
        out.append({"type": obj.type, "id": obj.id} | ({"name": obj.name} if obj.name is not None else {}))
    return out


def sequence_attribute(sequence: int) -> bytes:
    return enc.int_attribute(_KEY[a.SEQUENCE], sequence)


def encode_event(
    event: str,
    *,
    uid: str,
    category: str,
    tenant: str | None,
    actor: Actor,
    target: Target | None,
    changes: Sequence[Change | Mapping[str, Any]] | None,
    details: Mapping[str, Any] | None,
    outcome: str,
    reason: str | None,
    message: str | None,
    time_ns: int,
    observed_ns: int,
    trace: tuple[bytes, bytes, int] | None,
    extra: Mapping[str, Any] | None = None,
    related: Sequence[Target] | None = None,
) -> bytes:
    """One LogRecord without its sequence attribute."""
    s = enc.string_attribute
    k = _KEY
    parts = [s(k[a.RECORD_UID], uid, a.RECORD_UID), s(k[a.CATEGORY], category, a.CATEGORY)]
    if tenant is not None:
        parts.append(s(k[a.TENANT_ID], tenant, a.TENANT_ID))
    parts.append(_SUCCESS if outcome == "success" else s(k[a.OUTCOME], outcome, a.OUTCOME))
    if not isinstance(actor, Actor):
        raise TypeError(f"actor must be an otaudit_sdk.Actor, got {type(actor).__name__}")
    parts.append(s(k[a.ACTOR_TYPE], actor.type, a.ACTOR_TYPE))
    for key, value in (
        (a.USER_ID, actor.id),
        (a.USER_EMAIL, actor.email),
        (a.USER_NAME, actor.name),
        (a.CLIENT_ADDRESS, actor.address),
        (a.USER_AGENT, actor.user_agent),
        (a.SESSION_ID, actor.session_id),
    ):
        if value is not None:
            parts.append(s(k[key], value, key))
    if actor.roles:
        parts.append(enc.attribute(k[a.USER_ROLES], list(actor.roles), a.USER_ROLES))
    if target is not None:
        if not isinstance(target, Target):
            raise TypeError(f"target must be an otaudit_sdk.Target, got {type(target).__name__}")
        parts.append(s(k[a.TARGET_TYPE], target.type, a.TARGET_TYPE))
        if target.id is not None:
            parts.append(s(k[a.TARGET_ID], target.id, a.TARGET_ID))
        if target.name is not None:
            parts.append(s(k[a.TARGET_NAME], target.name, a.TARGET_NAME))
    if related:
        parts.append(enc.attribute(k[a.RELATED], related_maps(related), a.RELATED))
    if changes:
        items = [c.as_map() if isinstance(c, Change) else c for c in changes]
        parts.append(enc.attribute(k[a.CHANGES], items, a.CHANGES))
    if details:
        if not isinstance(details, Mapping):
            raise TypeError(f"details must be a mapping of event-specific fields, got {type(details).__name__}")
        parts.append(enc.attribute(k[a.DETAILS], details, a.DETAILS))
    if reason is not None:
        parts.append(s(k[a.REASON], reason, a.REASON))
    if extra:
        for key, value in extra.items():
            if not isinstance(key, str) or _is_contract_name(key):
                raise ValueError(
                    f"attribute {key!r} is set by record()'s own arguments (or reserved for the contract); pass it there"
                )
            parts.append(enc.attribute(enc.key_prefix(key), value, key))
    trace_id, span_id, flags = trace if trace is not None else (None, None, 0)
    return enc.log_record(
        time_ns=time_ns,
        observed_ns=observed_ns,
        event_name=event,
        attributes=b"".join(parts),
        body=message,
        trace_id=trace_id,
        span_id=span_id,
        trace_flags=flags,
    )
