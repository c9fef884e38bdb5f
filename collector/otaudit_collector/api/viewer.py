"""The routes of viewer tokens (core/viewer_tokens.py): minting one, revoking them all.

``POST /v1/viewer-tokens``: an admin token of a tenant (a SaaS backend holds one per tenant)
mints a token for one person of that tenant: read-only, expiring within minutes, narrowed to
a subset of the plan's categories, a fixed actor or target, export or not. Only a tenant's
own admin token mints for it: an operator token acting for every tenant would make one
leaked secret read every customer's trail, so it does not exist.

``POST /v1/viewer-tokens/revoke``: every viewer token of the tenant made so far stops working
(within ``auth.token_cache_seconds`` on other replicas, at once on this one); recorded in the
trail as ``site_access``/``revokeViewerTokens``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

from aiohttp import web

from otaudit_collector.api.reads import READS, error, iso, plan_of, principal_of, require_role
from otaudit_collector.core.viewer_tokens import BadViewerRequest, mint, parse_request, signing_key
from otaudit_collector.selfaudit import Access, SelfAudit
from otaudit_collector.storage.viewer import rotate

__all__ = ["VIEWER", "ViewerContext", "add_viewer_routes"]


@dataclass(frozen=True, slots=True)
class ViewerContext:
    audit: SelfAudit
    default_minutes: float
    max_minutes: float


VIEWER: web.AppKey[ViewerContext] = web.AppKey("viewer", ViewerContext)


def add_viewer_routes(app: web.Application, ctx: ViewerContext) -> None:
    app[VIEWER] = ctx
    app.router.add_post("/v1/viewer-tokens", _mint)
    app.router.add_post("/v1/viewer-tokens/revoke", _revoke)


async def _mint(request: web.Request) -> web.Response:
    refused = require_role(request, "admin", what="mint viewer tokens")
    if refused is not None:
        return refused
    ctx = request.app[VIEWER]
    reads = request.app[READS]
    principal = principal_of(request)
    plan = plan_of(request)
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, LookupError):
        return error(400, "bad_viewer_token", 'body: is not JSON; send {"for": "Ann Lee (ann@customer.example)"}')
    assert reads.viewers is not None, "add_viewer_routes needs ReadContext.viewers"
    key = await reads.viewers.key(reads.pool, principal.tenant)  # cached: a mint costs what a page's check does
    try:
        claims = parse_request(
            body,
            tenant=principal.tenant,
            minted_by=principal.token_id,
            generation=key.generation,
            now=int(time.time()),
            default_minutes=ctx.default_minutes,
            max_minutes=ctx.max_minutes,
            readable=sorted(c for c in reads.catalogs().categories if plan.reads(c)),
        )
    except BadViewerRequest as exc:
        return error(400, "bad_viewer_token", str(exc))
    token = mint(claims, signing_key(reads.viewers.root, claims.tenant, claims.generation))
    answer = {
        "token": token,
        "token_type": "Bearer",
        "tenant": claims.tenant,
        "for": claims.person,
        "expires_at": iso(dt.datetime.fromtimestamp(claims.expires_at, dt.UTC)),
        "expires_in": claims.expires_at - claims.issued_at,
        "scope": claims.scope.as_json(),
    }
    return web.json_response(answer, status=201, headers={"Cache-Control": "no-store"})


async def _revoke(request: web.Request) -> web.Response:
    refused = require_role(request, "admin", what="revoke viewer tokens")
    if refused is not None:
        return refused
    ctx = request.app[VIEWER]
    reads = request.app[READS]
    principal = principal_of(request)
    access = Access(principal, request.remote, request.headers.get("User-Agent"))
    event = {"event": "revokeViewerTokens", "category": "site_access", "access": access}
    ctx.audit.check(**event, details={"generation": 2})  # else 503: no revocation the trail does not show
    async with reads.pool.connection() as conn, conn.transaction():
        generation = await rotate(conn, principal.tenant, principal.token_id)
    if reads.viewers is not None:
        reads.viewers.forget(principal.tenant)
    await ctx.audit.record(
        **event, details={"generation": generation}, message=f"every viewer token of tenant {principal.tenant} revoked"
    )
    return web.json_response({"tenant": principal.tenant, "generation": generation, "revoked_at": iso(dt.datetime.now(dt.UTC))})
