"""Checking a viewer token (core/viewer_tokens.py) for the API's auth middleware.

A viewer token is checked by its signature alone; what it needs from the database, its
tenant's key generation and plan, is cached per tenant for ``auth.token_cache_seconds`` (as
admin tokens are): a revocation or a plan change takes effect within that time, and a page
of a viewer token costs no more database work than one of an admin token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool

from otaudit_collector.core.tokens import Principal
from otaudit_collector.core.viewer_tokens import InvalidViewerToken, signing_key, unverified_claims, verify
from otaudit_collector.storage.viewer import TenantKey, tenant_key

__all__ = ["ViewerKeys"]


class ViewerKeys:
    """Each tenant's viewer key generation and plan, cached."""

    MAX_TENANTS: Final = 4096

    def __init__(self, root: bytes, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root  # core.viewer_tokens.root_key
        self._seconds = seconds
        self._clock = clock
        self._tenants: dict[str, tuple[TenantKey, float]] = {}

    async def key(self, pool: AsyncConnectionPool[Any], tenant: str) -> TenantKey:
        """The tenant's generation and plan, cached; what minting and checking both use."""
        now = self._clock()
        cached = self._tenants.get(tenant)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with pool.connection() as conn:
            found = await tenant_key(conn, tenant)
        if self._seconds > 0:
            if len(self._tenants) >= self.MAX_TENANTS:
                self._tenants.clear()
            self._tenants[tenant] = (found, now + self._seconds)
        return found

    def forget(self, tenant: str) -> None:
        """After a revocation on this collector: its tokens stop here at once."""
        self._tenants.pop(tenant, None)

    async def principal(self, pool: AsyncConnectionPool[Any], text: str) -> Principal:
        """Who a viewer token acts for; ``InvalidViewerToken`` when it is forged, revoked or expired."""
        claims = unverified_claims(text)
        found = await self.key(pool, claims.tenant)
        checked = verify(text, signing_key(self.root, claims.tenant, found.generation), found.generation, now=time.time())
        if checked.issued_at > time.time() + 300:
            raise InvalidViewerToken("the viewer token is unknown or revoked")
        return Principal(f"viewer-{checked.token_id}", checked.tenant, "viewer", checked.person, found.plan, checked.scope)
