"""Viewer tokens: short-lived, read-only, narrowed tokens that a SaaS backend mints for the
customer admin in front of it, so that its page can show otaudit's viewer.

Pure. A viewer token reads ``otaudit-viewer.<claims>.<signature>``: the claims are compact
JSON in unpadded base64url, the signature HMAC-SHA256 over ``otaudit-viewer.<claims>`` under
the tenant's viewer key. That key is derived, never stored: HMAC-SHA256 of the tenant and
its key *generation* under a root key, itself the database's random ``viewer_tokens`` key
mixed with the configured token pepper (:func:`root_key`). Checking a token needs no database
row of its own, only the tenant's current generation (cached with the tenant's plan, as
admin tokens are); revoking every viewer token of a tenant at once is moving its generation
on (``POST /v1/viewer-tokens/revoke``), and changing the pepper revokes them all.

The claims: the tenant, the generation, when it was made and when it expires (at most
``max_minutes`` later), its own id (``jti``), the minting token's id, the person it is for
(the actor of the trail's own events while it reads), and its scope: a subset of the plan's
categories, a fixed actor, a fixed target (type and id: an object's history, its related
objects included), and whether it may export. A scope only narrows: the plan as it is at
each request still applies on top of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "PREFIX",
    "BadViewerRequest",
    "InvalidViewerToken",
    "ViewerClaims",
    "ViewerScope",
    "is_viewer_token",
    "mint",
    "parse_request",
    "root_key",
    "signing_key",
    "unverified_claims",
    "verify",
]

PREFIX: Final = "otaudit-viewer."
_MAX_TEXT: Final = 4096  # the longest token read: its claims are a few hundred bytes
_PERSON_MAX: Final = 200
_VALUE_MAX: Final = 512


class InvalidViewerToken(Exception):
    """A viewer token that cannot be used; ``expired`` when it only ran out (the page asks for a new one)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class BadViewerRequest(ValueError):
    """A mint request that cannot be served; ``field`` names the part (400)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class ViewerScope:
    """What a viewer token may read beyond the plan's limits: None places no limit of its own."""

    categories: tuple[str, ...] | None = None
    actor: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    export: bool = False

    def as_json(self) -> dict[str, Any]:
        target = None
        if self.target_type is not None or self.target_id is not None:
            target = {"type": self.target_type, "id": self.target_id}
        return {
            "categories": list(self.categories) if self.categories is not None else None,
            "actor": self.actor,
            "target": target,
            "export": self.export,
        }

    def filter_terms(self) -> dict[str, list[str]]:
        """The filter terms (as GET /v1/events takes them) every read of this token is limited to."""
        terms: dict[str, list[str]] = {}
        if self.actor is not None:
            terms["actor"] = [self.actor]
        if self.target_type is not None:
            terms["target_type"] = [self.target_type]
        if self.target_id is not None:
            terms["target_id"] = [self.target_id]
        return terms


@dataclass(frozen=True, slots=True)
class ViewerClaims:
    tenant: str
    generation: int
    issued_at: int
    expires_at: int
    token_id: str
    minted_by: str
    person: str
    scope: ViewerScope


def root_key(stored: bytes, pepper: str) -> bytes:
    """The root of every viewer key: the database's random key mixed with the pepper (neither
    alone makes a viewer key; an unset pepper leaves the database's key, never a public one)."""
    return hmac.new(stored, b"otaudit viewer keys\x00" + pepper.encode(), hashlib.sha256).digest()


def signing_key(root: bytes, tenant: str, generation: int) -> bytes:
    """The tenant's viewer key of ``generation``, derived from the root key, stored nowhere."""
    return hmac.new(root, f"otaudit viewer key\x00{tenant}\x00{generation}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(claims: ViewerClaims, key: bytes) -> str:
    body = {
        "v": 1,
        "tenant": claims.tenant,
        "gen": claims.generation,
        "iat": claims.issued_at,
        "exp": claims.expires_at,
        "jti": claims.token_id,
        "by": claims.minted_by,
        "for": claims.person,
        "scope": claims.scope.as_json(),
    }
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode())
    signed = f"{PREFIX}{payload}"
    return f"{signed}.{_b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}"


def is_viewer_token(text: str) -> bool:
    return text.startswith(PREFIX)


def _claims_of(body: Any) -> ViewerClaims:
    if not isinstance(body, dict) or body.get("v") != 1:
        raise ValueError("unknown version")
    scope = body["scope"]
    target = scope.get("target") or {}
    categories = scope.get("categories")
    claims = ViewerClaims(
        tenant=body["tenant"],
        generation=body["gen"],
        issued_at=body["iat"],
        expires_at=body["exp"],
        token_id=body["jti"],
        minted_by=body["by"],
        person=body["for"],
        scope=ViewerScope(
            categories=tuple(categories) if categories is not None else None,
            actor=scope.get("actor"),
            target_type=target.get("type"),
            target_id=target.get("id"),
            export=scope.get("export") is True,
        ),
    )
    if not (isinstance(claims.tenant, str) and type(claims.generation) is int and type(claims.expires_at) is int):
        raise ValueError("bad claims")
    return claims


def unverified_claims(text: str) -> ViewerClaims:
    """The claims of a token, NOT yet checked: only to find the tenant whose key checks it."""
    if len(text) > _MAX_TEXT or not text.startswith(PREFIX):
        raise InvalidViewerToken("not a viewer token")
    payload, _, signature = text[len(PREFIX) :].partition(".")
    try:
        _unb64(signature)
        return _claims_of(json.loads(_unb64(payload)))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise InvalidViewerToken("the viewer token is malformed") from None


def verify(text: str, key: bytes, generation: int, *, now: float) -> ViewerClaims:
    """The claims of a genuine, live token whose tenant's key of the current ``generation`` is
    ``key``; else ``InvalidViewerToken`` saying why (revoked, expired, forged)."""
    claims = unverified_claims(text)
    signed, _, signature = text.rpartition(".")
    expected = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    if claims.generation != generation or not hmac.compare_digest(_unb64(signature), expected):
        raise InvalidViewerToken("the viewer token is unknown or revoked")
    if now >= claims.expires_at:
        raise InvalidViewerToken(
            "the viewer token has expired; the page that shows the trail asks its backend for a new one", expired=True
        )
    return claims


def _text(body: Mapping[str, Any], key: str, *, limit: int = _VALUE_MAX, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise BadViewerRequest(key, f"must be printable text of 1 to {limit} characters")
    return value


def parse_request(
    body: Any,
    *,
    tenant: str,
    minted_by: str,
    generation: int,
    now: int,
    default_minutes: float,
    max_minutes: float,
    readable: Sequence[str],
) -> ViewerClaims:
    """A mint request (``{"for", "minutes", "categories", "actor", "target", "export"}``) as claims.
    ``readable``: the categories the tenant's plan reads now; a category outside it is a
    ``BadViewerRequest`` (a viewer token only narrows)."""
    if not isinstance(body, Mapping):
        raise BadViewerRequest("body", 'send a JSON object such as {"for": "Ann Lee (ann@customer.example)"}')
    known = {"for", "minutes", "categories", "actor", "target", "export"}
    for key in body:
        if key not in known:
            raise BadViewerRequest(str(key), f"unknown field (a viewer token takes {', '.join(sorted(known))})")
    person = _text(body, "for", limit=_PERSON_MAX, required=True)
    assert person is not None
    minutes = body.get("minutes", default_minutes)
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes <= max_minutes:
        raise BadViewerRequest("minutes", f"must be a number above 0 and at most {max_minutes:g} (viewer.max_minutes)")
    categories = body.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or not categories or not all(isinstance(c, str) for c in categories):
            raise BadViewerRequest("categories", 'must be a non-empty list of categories, e.g. ["site_access"]')
        outside = [c for c in categories if c not in readable]
        if outside:
            raise BadViewerRequest(
                "categories", f"'{outside[0]}' is not read by the tenant's plan (it reads {', '.join(readable) or 'nothing'})"
            )
        categories = tuple(dict.fromkeys(categories))
    target = body.get("target")
    target_type = target_id = None
    if target is not None:
        if not isinstance(target, Mapping) or not set(target) <= {"type", "id"} or not target:
            raise BadViewerRequest("target", 'must be {"type": "license", "id": "l-1"} (type, id or both)')
        target_type = _text(target, "type")
        target_id = _text(target, "id")
    export = body.get("export", False)
    if not isinstance(export, bool):
        raise BadViewerRequest("export", "must be true or false")
    return ViewerClaims(
        tenant=tenant,
        generation=generation,
        issued_at=now,
        expires_at=now + max(1, round(float(minutes) * 60)),
        token_id=secrets.token_hex(8),
        minted_by=minted_by,
        person=person,
        scope=ViewerScope(categories, _text(body, "actor"), target_type, target_id, export),
    )
