"""The read routes of the admin API (shared/design/api.md): events, one event, the feed,
the caller's plan and the catalog, behind token auth, tenant isolation and the plan.

Every route reads only the token's tenant, only the categories its plan includes (naming
another category is a 403 that names the plan including it), and only events inside the
plan's query window: lists and exports clamp ``since`` to it, the feed skips older events,
and one event older than the window is a 404, as if it were not there (an upgrade shows it).

Which routes need no token is decided by the route that matched (its canonical pattern),
never by the path: an encoded slash or a dot segment cannot make one route look like another.

With a read replica (``database.read_url``, storage/replica.py), only the reads that tolerate
its lag go to it (``lag_tolerant``): a page of events (search, an object's history) and one
event, which is asked of the primary again when the replica lacks it yet. The feed, which a
client resumes from the ``seq`` it was handed, tokens and viewer keys (a revocation must hold
at once), and every route of the other modules read the primary (``ReadContext.pool``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from otaudit_collector.api.health import add_readiness_details
from otaudit_collector.api.viewer_auth import ViewerKeys
from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.errors import IngestError
from otaudit_collector.core.plans import (
    Plan,
    PlanForbids,
    allowed_categories,
    check_readable,
    clamp_since,
    in_window,
    upgrade_for,
    window_start,
)
from otaudit_collector.core.query import (
    DOCUMENT_SQL,
    MAX_LIMIT,
    BadFilter,
    Filters,
    encode_cursor,
    page_sql,
    parse_filters,
    where_sql,
)
from otaudit_collector.core.tokens import Principal, TokenCache, bearer_credential
from otaudit_collector.core.viewer_tokens import InvalidViewerToken, is_viewer_token
from otaudit_collector.selfaudit import Access, Sessions
from otaudit_collector.storage.access import authenticate_async
from otaudit_collector.storage.replica import ReadReplica

__all__ = [
    "OPEN_ROUTES",
    "ReadContext",
    "READS",
    "add_read_routes",
    "auth_middleware",
    "error",
    "iso",
    "lag_tolerant",
    "principal_of",
    "plan_filters",
    "plan_of",
    "readable_categories",
    "readable_event",
    "require_role",
    "scoped_terms",
    "ViewerForbids",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReadContext:
    pool: AsyncConnectionPool[Any]
    plans: dict[str, Plan]
    default_plan: str
    pepper: str
    catalogs: Callable[[], CatalogSet]
    sessions: Sessions | None = None  # records each API session (self-audit); None records none
    tokens: TokenCache | None = None  # recently checked tokens; None looks each one up
    viewers: ViewerKeys | None = None  # tenants' viewer key generations; None refuses viewer tokens
    details_prefix_keys: frozenset[str] = frozenset()  # details keys with a prefix index (search.details_prefix_keys)
    replica: ReadReplica | None = None  # where lag-tolerant reads go (database.read_url); None: all on ``pool``


READS: web.AppKey[ReadContext] = web.AppKey("reads", ReadContext)
_PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
OPEN_ROUTES = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/",  # the web page (api/web.py): it asks for the token itself
        "/ui/",
        "/ui/{file}",
        "/v1/exports/{id}/download",  # a download URL carries its own signature instead of a token
    }
)
"""The canonical patterns of the routes answered without a token; every other route needs one."""


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers or None)


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if READS not in request.app or _tokenless(request):
        return await handler(request)
    try:
        return await _authenticated(request, handler)
    except psycopg.OperationalError as exc:
        log.warning("API request failed: the database is unreachable", extra={"error": str(exc)})
        return error(503, "unavailable", "the database is unreachable; try again shortly", **{"Retry-After": "5"})
    except IngestError as exc:  # reading is audited: no read whose access cannot be recorded
        log.warning("API request refused: its access could not be recorded", extra={"error": exc.message})
        return error(
            503,
            "unavailable",
            f"the access could not be recorded in the audit trail ({exc.message}); try again shortly",
            **{"Retry-After": "5"},
        )


def _tokenless(request: web.Request) -> bool:
    """Whether the request may go on without a token: by the route the router matched, never by the path.

    A path no route matches needs a token too: without one, the API does not say which paths exist.
    """
    match = request.match_info
    if match.http_exception is not None:
        return False
    resource = match.route.resource
    return resource is not None and resource.canonical in OPEN_ROUTES


async def _authenticated(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = bearer_credential(request.headers.get("Authorization"))
    if token is None:
        return error(401, "unauthorized", "send 'Authorization: Bearer <token>'", **{"WWW-Authenticate": "Bearer"})
    ctx = request.app[READS]
    if is_viewer_token(token):
        try:
            if ctx.viewers is None:
                raise InvalidViewerToken("the viewer token is unknown or revoked")
            principal: Principal | None = await ctx.viewers.principal(ctx.pool, token)
        except InvalidViewerToken as exc:
            code = "token_expired" if exc.expired else "unauthorized"
            return error(401, code, str(exc), **{"WWW-Authenticate": "Bearer"})
    else:
        principal = await _authenticate(ctx, token)
    if principal is None:
        return error(401, "unauthorized", "the token is unknown or revoked", **{"WWW-Authenticate": "Bearer"})
    if principal.role == "ingest":
        return error(403, "forbidden", "an ingest token can send events, not read them; use an admin or auditor token")
    request[_PRINCIPAL] = principal
    if ctx.sessions is not None and ctx.sessions.due(principal.token_id):
        async with ctx.pool.connection() as conn:
            await ctx.sessions.touch(conn, Access(principal, request.remote, request.headers.get("User-Agent")))
    # PostgreSQL text cannot hold NUL: refuse it here, for every route, rather than fail in SQL.
    for name, value in [*request.query.items(), *request.match_info.items()]:
        if "\x00" in name or "\x00" in value:
            return error(400, "bad_filter", f"{name.replace(chr(0), '')}: contains a NUL character")
    try:
        return await handler(request)
    except BadFilter as exc:
        return error(400, "bad_filter", str(exc))
    except PlanForbids as exc:
        return error(403, "plan_forbids", str(exc))
    except ViewerForbids as exc:
        return error(403, "viewer_forbids", str(exc))


async def _authenticate(ctx: ReadContext, token: str) -> Principal | None:
    if ctx.tokens is None:
        async with ctx.pool.connection() as conn:
            return await authenticate_async(conn, token, ctx.pepper)
    key = ctx.tokens.key(token)
    found, principal = ctx.tokens.get(key)
    if not found:
        async with ctx.pool.connection() as conn:
            principal = await authenticate_async(conn, token, ctx.pepper)
        ctx.tokens.put(key, principal)
    return principal


def add_read_routes(app: web.Application, ctx: ReadContext) -> None:
    app[READS] = ctx
    app.middlewares.append(auth_middleware)
    if ctx.replica is not None and ctx.replica.configured:
        add_readiness_details(app, ctx.replica.readiness)  # /readyz shows the replica's state and lag
    app.router.add_get("/v1/events", _events)
    app.router.add_get("/v1/events/{id}", _event)
    app.router.add_get("/v1/feed", _feed)
    app.router.add_get("/v1/tenants/{tenant}/plan", _plan_route)
    app.router.add_get("/v1/catalog", _catalog)
    app.router.add_get("/v1/whoami", _whoami)


async def lag_tolerant(
    ctx: ReadContext, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], *, again: Callable[[T], bool] | None = None
) -> T:
    """``work(conn)`` on the read replica while it is in use, else on the primary: for reads that
    may be ``database.max_replica_lag_seconds`` behind. ``again(result)`` true: ask the primary too."""
    if ctx.replica is not None:
        return await ctx.replica.read(work, again=again)
    async with ctx.pool.connection() as conn:
        return await work(conn)


def principal_of(request: web.Request) -> Principal:
    return request[_PRINCIPAL]


def plan_of(request: web.Request) -> Plan:
    """The caller's plan, as the token lookup found it (no second query)."""
    ctx = request.app[READS]
    principal = request[_PRINCIPAL]
    name = principal.plan or ctx.default_plan
    plan = ctx.plans.get(name)
    if plan is None:  # a plan removed from the configuration reads nothing rather than guessing
        log.error("tenant %s has plan %r, which the configuration no longer defines", principal.tenant, name)
        return Plan(name, (), None, 0)
    return plan


class ViewerForbids(Exception):
    """A viewer token asked for more than its scope (403 ``viewer_forbids``)."""


def readable_categories(request: web.Request, plan: Plan, requested: list[str]) -> list[str] | None:
    """The categories to read; None for every category (a plan with '*' and no filter). A
    viewer token's categories narrow them: naming another is refused, and those the plan no
    longer reads (a downgrade since it was made) are left out."""
    ctx = request.app[READS]
    scope = request[_PRINCIPAL].scope
    if scope is not None and scope.categories is not None:
        outside = [c for c in requested if c not in scope.categories]
        if outside:
            raise ViewerForbids(f"category '{outside[0]}' is not in this viewer token (it reads {', '.join(scope.categories)})")
        if not requested:
            return [c for c in scope.categories if plan.reads(c)]
    if not requested and "*" in plan.categories:
        return None
    return allowed_categories(plan, ctx.plans, ctx.catalogs().categories, requested)


def scoped_terms(request: web.Request, terms: dict[str, list[str]]) -> dict[str, list[str]]:
    """Filter terms with a viewer token's fixed actor and target in them: asking for another is
    refused (403), asking for none gets the token's."""
    scope = request[_PRINCIPAL].scope
    fixed = scope.filter_terms() if scope is not None else {}
    if not fixed:
        return terms
    # What the request asks for, its q terms included: a q term on the same key would be OR-ed
    # with the token's value (any of them matches), so it must be the token's own too.
    asked = parse_filters(terms).equal
    out = dict(terms)
    for key, forced in fixed.items():
        given = asked.get(key)
        if given and set(given) != set(forced):
            raise ViewerForbids(f"this viewer token reads only the events of {key} '{forced[0]}'")
        out[key] = forced
    return out


def require_role(request: web.Request, *roles: str, what: str) -> web.Response | None:
    """403 unless the token's role is one of ``roles``; ``what``: the action, for the message."""
    role = request[_PRINCIPAL].role
    if role in roles:
        return None
    return error(403, "forbidden", f"a token of role {role} cannot {what}; use a token of role {' or '.join(roles)}")


def plan_filters(request: web.Request, filters: Filters) -> tuple[Plan, list[str] | None, str | None]:
    """Check ``filters`` against the caller's plan: (the plan, the categories to read, a
    notice when ``filters.since`` was moved to the start of the plan's query window)."""
    plan = plan_of(request)
    categories = readable_categories(request, plan, filters.categories)
    asked = filters.since
    filters.since, clamped = clamp_since(filters.since, plan, dt.datetime.now(dt.UTC))
    notice = None
    if clamped and asked is not None and filters.since is not None:
        notice = (
            f"since {iso(asked)} is before the '{plan.name}' plan's query window of {plan.query_window_days} days;"
            f" only events from {iso(filters.since)} on are included"
        )
    return plan, categories, notice


def _events_answer(documents: str, **fields: Any) -> web.Response:
    """``{"events": [...], **fields}``, the events (their JSON texts joined by commas) spliced in as
    PostgreSQL wrote them (no parse, no re-encode)."""
    rest = json.dumps(fields, separators=(",", ":"))
    body = '{"events":[' + documents + "]" + ("," + rest[1:] if fields else "}")
    return web.Response(text=body, content_type="application/json")


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def _events(request: web.Request) -> web.Response:
    ctx = request.app[READS]
    principal = request[_PRINCIPAL]
    terms = scoped_terms(request, {key: request.query.getall(key) for key in request.query})
    filters = parse_filters(terms, indexed_details=ctx.details_prefix_keys)
    plan, categories, notice = plan_filters(request, filters)
    count, last_at, last_seq, documents = await _page(ctx, principal.tenant, categories, filters)
    cursor = encode_cursor(last_at, last_seq) if count == filters.limit else None
    answer: dict[str, Any] = {"next_cursor": cursor, "plan": plan.name}
    if filters.since is not None:
        answer["since"] = iso(filters.since)
    if notice:
        answer["since_clamped"] = notice
    return _events_answer(documents, **answer)


async def _page(ctx: ReadContext, tenant: str, categories: list[str] | None, filters: Filters) -> tuple[Any, ...]:
    """One page (``core.query.page_sql``): (events, the last one's occurred_at, its seq, the documents joined)."""
    sql, params = page_sql(tenant, categories, filters)

    async def page(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...]:
        cur = await conn.execute(sql, params, prepare=False if filters.custom_plan else None)
        row = await cur.fetchone()
        assert row is not None, "an aggregate always returns a row"
        return tuple(row)

    return await lag_tolerant(ctx, page)  # a page may be a moment behind (read replica)


async def readable_event(request: web.Request, columns: str, *, replica: bool = False) -> tuple[Any, ...] | web.Response:
    """The row (``columns``) of the event ``{id}`` of the token's tenant, or the answer when the
    caller may not read it: 404 when absent or older than the plan's query window (as if absent),
    403 when its category is outside the plan. Every route that shows one event goes through here.
    ``replica``: it may be read from the read replica (not found there: from the primary)."""
    ctx = request.app[READS]
    principal = request[_PRINCIPAL]

    async def fetch(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
        cur = await conn.execute(
            f"SELECT category, occurred_at, {columns} FROM events WHERE tenant = %(tenant)s AND (id, occurred_at) ="
            " (SELECT id, occurred_at FROM event_ids WHERE tenant = %(tenant)s AND id = %(id)s)",
            {"tenant": principal.tenant, "id": request.match_info["id"]},
        )
        return await cur.fetchone()

    if replica:
        row = await lag_tolerant(ctx, fetch, again=lambda found: found is None)  # just stored: the primary has it
    else:
        async with ctx.pool.connection() as conn:
            row = await fetch(conn)
    if row is None:
        return error(404, "not_found", f"no event {request.match_info['id']!r} in this tenant's trail")
    plan = plan_of(request)
    if not in_window(row[1], plan, dt.datetime.now(dt.UTC)):  # as if absent: the plan does not read that far back
        return error(
            404,
            "not_found",
            f"no event {request.match_info['id']!r} in this tenant's trail within the '{plan.name}' plan's"
            f" query window of {plan.query_window_days} days",
        )
    check_readable(row[0], plan, ctx.plans)
    if principal.scope is not None and not await _in_scope(request, row[0]):  # as if absent: not this viewer's
        return error(404, "not_found", f"no event {request.match_info['id']!r} that this viewer token reads")
    return tuple(row[2:])


async def _in_scope(request: web.Request, category: str) -> bool:
    """Whether the event ``{id}`` is within the viewer token's scope (its categories, actor, target)."""
    ctx = request.app[READS]
    principal = request[_PRINCIPAL]
    scope = principal.scope
    assert scope is not None
    if scope.categories is not None and category not in scope.categories:
        return False
    terms = scope.filter_terms()
    if not terms:
        return True
    where, params = where_sql(principal.tenant, None, parse_filters(terms))
    async with ctx.pool.connection() as conn:
        cur = await conn.execute(f"SELECT 1 FROM events WHERE {where} AND id = %s LIMIT 1", [*params, request.match_info["id"]])
        return await cur.fetchone() is not None


async def _event(request: web.Request) -> web.Response:
    found = await readable_event(
        request,
        f"{DOCUMENT_SQL}, seq, seals::text, (SELECT log_size FROM tenant_seq s WHERE s.tenant = events.tenant),"
        " (SELECT max(size) FROM log_checkpoints c WHERE c.tenant = events.tenant)",
        replica=True,  # its log position may be a moment behind; /v1/events/{id}/proof reads the primary
    )
    if isinstance(found, web.Response):
        return found
    document, seq, seals, log_size, checkpointed = found
    # Where the event sits in the tenant's log (GET /v1/events/{id}/proof proves it once a
    # checkpoint covers it), and the salts of its personal values: with them, the leaf entry
    # can be recomputed from this answer.
    where = {
        "leaf_index": seq - 1,
        "in_log": seq <= (log_size or 0),
        "checkpointed": seq <= (checkpointed or 0),
        "seals": json.loads(seals) if seals else {},
    }
    return web.Response(text=document[:-1] + ',"log":' + json.dumps(where, separators=(",", ":")) + "}", content_type="application/json")


async def _feed(request: web.Request) -> web.Response:
    ctx = request.app[READS]
    principal = request[_PRINCIPAL]
    after = _int_param(request, "after", 0, minimum=0)
    limit = _int_param(request, "limit", 100, minimum=1, maximum=MAX_LIMIT)
    plan = plan_of(request)
    categories = readable_categories(request, plan, [])
    earliest = window_start(plan, dt.datetime.now(dt.UTC))
    where, params = where_sql(principal.tenant, categories, parse_filters(scoped_terms(request, {})))
    where += " AND seq > %s"
    params.append(after)
    if earliest is not None:  # events older than the plan's window are skipped, like those of unreadable categories
        where += " AND occurred_at >= %s"
        params.append(earliest)
    async with ctx.pool.connection() as conn:  # one row, for the reason core.query.page_sql gives
        cur = await conn.execute(
            f"SELECT max(seq), coalesce(string_agg(doc, ',' ORDER BY seq), '') FROM"
            f" (SELECT seq, {DOCUMENT_SQL} AS doc FROM events WHERE {where} ORDER BY seq LIMIT %s) page",
            [*params, limit],
        )
        row = await cur.fetchone()
    assert row is not None, "an aggregate always returns a row"
    last, documents = row
    return _events_answer(documents, next_after=after if last is None else last, plan=plan.name)


def _int_param(request: web.Request, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadFilter(name, f"'{text}' is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise BadFilter(name, f"must be between {minimum} and {maximum}" if maximum else f"must be at least {minimum}")
    return value


def _readable_here(request: web.Request, plan: Plan, category: str) -> bool:
    """Whether this token reads ``category``: its plan does, and a viewer token's scope too."""
    scope = principal_of(request).scope
    return plan.reads(category) and (scope is None or scope.categories is None or category in scope.categories)


def _plan_answer(request: web.Request) -> dict[str, Any]:
    plan = plan_of(request)
    loaded = sorted(request.app[READS].catalogs().categories)
    return {
        "tenant": principal_of(request).tenant,
        "plan": plan.name,
        "description": plan.description,
        "categories": [c for c in loaded if _readable_here(request, plan, c)],
        "retention_days": plan.retention_days,
        "retention": retention_text(plan.retention_days),
        "query_window_days": plan.query_window_days,
    }


def retention_text(days: int | None) -> str:
    """The retention in words: a page or a person shows this, never "null days" for a plan that keeps forever."""
    if days is None:
        return "kept indefinitely"
    return f"{days} day{'' if days == 1 else 's'}"


async def _plan_route(request: web.Request) -> web.Response:
    if request.match_info["tenant"] != principal_of(request).tenant:
        return error(404, "not_found", "no such tenant for this token")
    return web.json_response(_plan_answer(request))


async def _whoami(request: web.Request) -> web.Response:
    """Who the token is: its tenant, role and holder, and the tenant's plan (what a page shows first)."""
    principal = principal_of(request)
    answer = _plan_answer(request)
    answer.update({"token_id": principal.token_id, "role": principal.role, "name": principal.name})
    if principal.scope is not None:
        answer["viewer"] = principal.scope.as_json()
    return web.json_response(answer)


async def _catalog(request: web.Request) -> web.Response:
    ctx = request.app[READS]
    plan = plan_of(request)
    out = []
    for category in sorted(ctx.catalogs().categories.values(), key=lambda c: c.id):
        available = _readable_here(request, plan, category.id)
        # the plan reads it but a viewer token does not: no plan to name, the token is the limit
        upgrade = None if available or plan.reads(category.id) else upgrade_for(category.id, ctx.plans)
        out.append(
            {
                "category": category.id,
                "title": category.title,
                "description": category.description,
                "available": available,
                "plan_needed": upgrade,
                "events": [
                    {"event": name, "title": e.title, "description": e.description}
                    for name, e in sorted(category.events.items())
                ],
            }
        )
    return web.json_response({"plan": plan.name, "categories": out})
