"""Ingest tokens on OTLP: which requests may write, and to which tenant.

Both receivers hand a request's ``authorization`` value (gRPC metadata, HTTP header) to
``IngestAuth.check``. It answers with the principal of a valid ingest token, with None
for a request that carries no token when none is required, or raises the IngestError to
answer with (``core.errors``: 401 / UNAUTHENTICATED, 403 / PERMISSION_DENIED, and 503 /
UNAVAILABLE when the database cannot be asked).

A token is verified against PostgreSQL (``storage.access``: an HMAC-SHA256 under the
pepper, compared in constant time), then trusted for ``auth.token_cache_seconds``, so
ingest does not query the database per request and a revocation takes effect within
that time. The cache is keyed by the token's HMAC, never by the token. Unknown and
revoked tokens are cached too (neither can become valid again): a fleet retrying with a
wrong token does not load the database. Lookups run one at a time on their own
connection; requests waiting for the same token find it cached when their turn comes.

A bearer credential that is not shaped like an otaudit token (``otaudit_...``) belongs
to someone else (a gateway in front): it is ignored unless tokens are required. One that
is shaped like ours must be valid, required or not: a misconfigured client learns it.

No token appears in an answer or a log line; at most its id, which is not a secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from otaudit_collector.core.errors import PermissionDenied, Unauthenticated, Unavailable
from otaudit_collector.core.tokens import Principal, TokenCache, bearer_credential, parse_token
from otaudit_collector.storage.access import authenticate_async
from otaudit_collector.storage.writer import close_quietly, is_retryable

__all__ = ["IngestAuth", "LOOKUP_TIMEOUT_SECONDS", "GRPC_METADATA", "HTTP_HEADER"]

LOOKUP_TIMEOUT_SECONDS = 5.0
"""A token lookup taking longer is abandoned and answered as retryable."""

GRPC_METADATA = "the gRPC metadata"
HTTP_HEADER = "the HTTP header"

_PREFIX = "otaudit_"
_CREATE = "otaudit token create --tenant TENANT --role ingest"
log = logging.getLogger(__name__)


class IngestAuth:
    """Checks the ingest token of OTLP requests, with a short-lived cache of verified tokens."""

    def __init__(
        self,
        conninfo: str,
        *,
        pepper: str,
        required: bool,
        cache_seconds: float,
        retry_after_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conninfo = conninfo
        self._pepper = pepper
        self.required = required
        self._retry_after = retry_after_seconds
        self._clock = clock
        self._cache = TokenCache(pepper, cache_seconds, clock)
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._down_until = 0.0

    async def start(self) -> None:
        """Warn when tokens are required and no ingest token exists: every request would be refused."""
        if not self.required:
            return
        async with self._lock:
            cur = await (await self._connection()).execute(
                "SELECT count(*) FROM tokens WHERE role = 'ingest' AND revoked_at IS NULL"
            )
            row = await cur.fetchone()
        if row is not None and row[0] == 0:
            log.warning(
                "auth.require_ingest_token is on and there is no ingest token: every OTLP request is refused until"
                f" one is made with '{_CREATE}'"
            )

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def check(self, authorization: str | None, *, via: str) -> Principal | None:
        """The principal a request acts for. ``via`` says where the client sends the token, for the messages."""
        credential = bearer_credential(authorization)
        if credential is None or not credential.startswith(_PREFIX):
            if not self.required:
                return None
            if credential is None:
                raise Unauthenticated(
                    f"this collector requires an ingest token: send {via} 'authorization: Bearer <token>'"
                    f" with a token of role ingest ({_CREATE})"
                )
            raise Unauthenticated(
                f"the bearer token in {via} 'authorization' is not an otaudit token (otaudit_<id>_<secret>):"
                f" send an ingest token ({_CREATE})"
            )
        parsed = parse_token(credential)
        if parsed is None:
            raise Unauthenticated(
                f"the token in {via} 'authorization' is malformed (expected otaudit_<id>_<secret>, as printed by"
                f" '{_CREATE}'): check that it was copied whole"
            )
        principal = await self._verify(credential, parsed[0])
        if principal is None:
            raise Unauthenticated(f"the ingest token {parsed[0]} is unknown or revoked: send a live ingest token ({_CREATE})")
        if principal.role != "ingest":
            raise PermissionDenied(
                f"token {principal.token_id} is an {principal.role} token, which reads the trail but cannot write it:"
                f" use an ingest token ({_CREATE})"
            )
        return principal

    async def _verify(self, credential: str, token_id: str) -> Principal | None:
        key = self._cache.key(credential)
        found, principal = self._cache.get(key)
        if found:
            return principal
        async with self._lock:  # one lookup at a time; those that waited for the same token find it cached
            found, principal = self._cache.get(key)
            if found:
                return principal
            if self._clock() < self._down_until:  # the database just failed: answer at once instead of queueing
                raise self._unavailable()
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                    principal = await authenticate_async(await self._connection(), credential, self._pepper)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                await self._drop()
                self._down_until = self._clock() + self._retry_after
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                log.warning(
                    "cannot check ingest tokens: the database is unreachable", extra={"error": f"{type(exc).__name__}: {text}"}
                )
                raise self._unavailable() from None
            self._cache.put(key, principal)
        if principal is None:
            log.warning("OTLP request refused: the ingest token is unknown or revoked", extra={"token_id": token_id})
        elif principal.role != "ingest":
            log.warning("OTLP request refused: not an ingest token", extra={"token_id": token_id, "role": principal.role})
        return principal

    def _unavailable(self) -> Unavailable:
        return Unavailable(
            "the database is unreachable, so the token cannot be checked: retry later", retry_after_seconds=self._retry_after
        )

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=5, application_name="otaudit-ingest-auth"
            )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn)
