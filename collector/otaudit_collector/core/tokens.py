"""Tokens: their text, and how a presented one is checked against what is stored.

Pure. A token reads ``otaudit_<id>_<secret>``: ``id`` (12 hex digits) finds the row,
``secret`` (43 URL-safe characters, 256 random bits) is checked against its stored
HMAC-SHA256 under the configured pepper, in constant time. The secret itself is never
stored or logged; a database copy without the pepper cannot be used to forge a match.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from otaudit_collector.core.viewer_tokens import ViewerScope

__all__ = ["ROLES", "Principal", "TokenCache", "bearer_credential", "new_token", "parse_token", "secret_hash", "secret_matches"]

ROLES: Final = ("admin", "auditor", "ingest")
"""The roles of stored tokens; a viewer token (core/viewer_tokens.py) acts as role ``viewer``."""

_TOKEN = re.compile(r"otaudit_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token acts for."""

    token_id: str
    tenant: str
    role: str
    name: str
    plan: str | None = None
    """The tenant's plan as stored; None when it has none yet (the default plan applies)."""
    scope: ViewerScope | None = None
    """A viewer token's narrowing (role ``viewer``); None for the other roles."""


def new_token() -> tuple[str, str, str]:
    """A fresh token: (id, secret, the full text to hand out once)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"otaudit_{token_id}_{secret}"


def bearer_credential(authorization: str | None) -> str | None:
    """The credential of an ``authorization`` value ``Bearer <credential>``; None when there is none."""
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(text.strip())
    return (match[1], match[2]) if match else None


def secret_hash(secret: str, pepper: str) -> bytes:
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).digest()


def secret_matches(secret: str, pepper: str, stored: bytes) -> bool:
    return hmac.compare_digest(secret_hash(secret, pepper), stored)


class TokenCache:
    """Recently checked tokens, so that a request does not query the database each time.

    Keyed by the token's HMAC under the pepper, never by the token. An unknown or revoked
    token is remembered too (None), so that a client retrying a wrong token does not load
    the database; neither can become valid again. An entry lives ``seconds``: a revocation
    or a plan change takes effect within that time (0 remembers nothing).
    """

    MAX_ENTRIES: Final = 4096

    def __init__(self, pepper: str, seconds: float, clock: Callable[[], float]) -> None:
        self._pepper = pepper
        self._seconds = seconds
        self._clock = clock
        self._entries: dict[bytes, tuple[Principal | None, float]] = {}

    def key(self, token: str) -> bytes:
        return secret_hash(token, self._pepper)

    def get(self, key: bytes) -> tuple[bool, Principal | None]:
        """(found, principal); a principal of None found means unknown or revoked."""
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self._clock():
            return False, None
        return True, entry[0]

    def put(self, key: bytes, principal: Principal | None) -> None:
        if self._seconds <= 0:
            return
        now = self._clock()
        if len(self._entries) >= self.MAX_ENTRIES:  # full: keep live valid tokens; wrong ones cannot evict them
            self._entries = {k: e for k, e in self._entries.items() if e[1] > now and e[0] is not None}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (principal, now + self._seconds)
