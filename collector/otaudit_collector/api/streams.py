"""The stream routes of the admin API: ``/v1/streams`` (issue 14).

A tenant's admins make, list, change, pause, resume and delete its streams; auditor tokens
are refused (403), as with exports. A stream's filter takes the terms of ``GET /v1/events``
(``parse_filters``: the same grammar and 400 messages) and is checked against the plan like a
read (a category outside it is a 403 naming the plan that has it); delivery keeps to the plan
as it is at each batch (streams/runner.py).

A webhook's secret is made here, at creation, and is in that answer only: it is stored
encrypted (core/streams.py), never shown again and never logged. File streams write on the
collector's disk, so only an operator declares them (``streams.declared``); declared streams
are listed but changed only in the configuration (409).

Making, changing (pausing and resuming too) and deleting a stream is recorded in the tenant's
trail as a ``data_extraction`` event, in the same transaction's lifetime: the change is
committed only once its event is stored, and refused (503) when it cannot be.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from otaudit_collector.api.reads import READS, error, iso, plan_of, principal_of, readable_categories, require_role
from otaudit_collector.core.query import parse_filters
from otaudit_collector.core.streams import BadStream, encrypt_secret, parse_change, parse_new
from otaudit_collector.core.webhook_signature import check_url, new_secret
from otaudit_collector.selfaudit import Access, SelfAudit
from otaudit_collector.storage import streams as store

__all__ = ["STREAMS", "StreamsContext", "add_stream_routes", "stream_view"]


@dataclass(slots=True)
class StreamsContext:
    secrets_key: bytes
    audit: SelfAudit
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a stream is made or resumed: the runner claims it without waiting for its poll."""
    check_url: Callable[[str], str | None] = check_url


STREAMS: web.AppKey[StreamsContext] = web.AppKey("streams", StreamsContext)
API_KINDS = ("webhook", "otlp", "syslog")
"""What a tenant's admin may make; file streams write on the collector's disk: the operator declares them."""


def add_stream_routes(app: web.Application, ctx: StreamsContext) -> None:
    app[STREAMS] = ctx
    app.router.add_get("/v1/streams", _list)
    app.router.add_post("/v1/streams", _create)
    app.router.add_get("/v1/streams/{id}", _show)
    app.router.add_patch("/v1/streams/{id}", _change)
    app.router.add_delete("/v1/streams/{id}", _delete)
    app.router.add_post("/v1/streams/{id}/pause", _pause)
    app.router.add_post("/v1/streams/{id}/resume", _resume)


# -- answers ------------------------------------------------------------------------------


def _refused(request: web.Request) -> web.Response | None:
    """Streams deliver the trail out of otaudit: only an admin token sees or manages them."""
    return require_role(request, "admin", what="see or manage streams, which deliver the trail out of otaudit")


def _bad(exc: Exception) -> web.Response:
    return error(400, "bad_stream", str(exc))


def _not_found(stream_id: str) -> web.Response:
    return error(404, "not_found", f"no stream {stream_id!r} in this tenant; GET /v1/streams lists them")


def _declared(row: dict[str, Any]) -> web.Response:
    return error(
        409,
        "declared",
        f"stream {row['id']!r} is declared in the collector's configuration (streams.declared): an operator changes it there",
    )


async def _changeable(conn: Any, tenant: str, stream_id: str) -> dict[str, Any] | web.Response:
    """The tenant's stream, locked for a change, or the answer when it cannot change here: 404
    when there is none, 409 when the configuration declares it."""
    row = await store.get(conn, tenant, stream_id, lock=True)
    if row is None:
        return _not_found(stream_id)
    if row["declared"]:
        return _declared(row)
    return row


def stream_view(row: dict[str, Any], lag: store.Lag | None = None) -> dict[str, Any]:
    """A stream as the API shows it: never its secret."""

    def when(value: dt.datetime | None) -> str | None:
        return iso(value) if value is not None else None

    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "format": row["format"],
        "destination": row["settings"],
        "filter": row["filter"],
        "state": row["state"],
        "declared": row["declared"],
        "cursor": row["cursor"],
        "lag_events": lag.events if lag else None,
        "lag_seconds": round(lag.seconds, 3) if lag else None,
        "delivered": row["delivered"],
        "failed": row["failed"],
        "attempts": row["attempts"],
        "last_success_at": when(row["last_success_at"]),
        "last_error": row["last_error"],
        "last_error_at": when(row["last_error_at"]),
        "next_attempt_at": when(row["next_attempt_at"]) if row["attempts"] else None,
        "created_at": when(row["created_at"]),
        "created_by": row["created_by"],
        "updated_at": when(row["updated_at"]),
        "updated_by": row["updated_by"],
    }


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except (ValueError, LookupError):  # not JSON, not UTF-8, or an unknown charset
        raise BadStream("body", 'is not JSON; send a JSON object such as {"name": "siem", "url": "https://..."}') from None


def _check_plan(request: web.Request, terms: dict[str, list[str]]) -> None:
    """A category of the filter outside the plan: 403 naming the plan that has it (PlanForbids)."""
    readable_categories(request, plan_of(request), parse_filters(terms).categories)


# -- the self-audit events ----------------------------------------------------------------


def _destination(row: dict[str, Any]) -> str:
    """Where a stream delivers, for its audit event: a URL without its query (which may hold a token)."""
    settings = row["settings"]
    if row["kind"] in ("webhook", "otlp"):
        parts = urlsplit(settings.get("url") or settings.get("endpoint") or "")
        return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else str(settings.get("endpoint", ""))
    if row["kind"] == "syslog":
        return f"syslog{'+tls' if settings.get('tls') else ''}://{settings.get('host', '')}:{settings.get('port', '')}"
    return str(settings.get("folder", ""))


def _event(request: web.Request, name: str, row: dict[str, Any], message: str, **details: Any) -> dict[str, Any]:
    return {
        "event": name,
        "category": "data_extraction",
        "access": Access(principal_of(request), request.remote, request.headers.get("User-Agent")),
        "target": {"type": "stream", "id": row["id"], "name": row["name"]},
        "details": {"kind": row["kind"], "destination": _destination(row), "filters": row["filter"], **details},
        "message": message,
    }


# -- routes -------------------------------------------------------------------------------


async def _list(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    tenant = principal_of(request).tenant
    async with request.app[READS].pool.connection() as conn:
        rows = await store.list_streams(conn, tenant)
        views = [stream_view(row, await store.lag(conn, tenant, row["cursor"])) for row in rows]
    return web.json_response({"streams": views})


async def _show(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    tenant, stream_id = principal_of(request).tenant, request.match_info["id"]
    async with request.app[READS].pool.connection() as conn:
        row = await store.get(conn, tenant, stream_id)
        if row is None:
            return _not_found(stream_id)
        return web.json_response(stream_view(row, await store.lag(conn, tenant, row["cursor"])))


async def _create(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    ctx = request.app[STREAMS]
    principal = principal_of(request)
    try:
        spec = parse_new(await _json_body(request), now=dt.datetime.now(dt.UTC), kinds=API_KINDS, check_url=ctx.check_url)
    except BadStream as exc:
        return _bad(exc)
    _check_plan(request, spec.filter)
    stream_id = store.new_id()
    secret = new_secret() if spec.kind == "webhook" else spec.given_secret  # a webhook's is made here, shown once
    details = {"start": spec.start.describe(), "format": spec.format}
    probe = {"id": stream_id, "name": spec.name, "kind": spec.kind, "settings": spec.settings, "filter": spec.filter}
    ctx.audit.check(**_event(request, "createStream", probe, "", **details))  # else 503: no stream the trail does not show
    async with request.app[READS].pool.connection() as conn, conn.transaction():
        try:
            row = await store.create(
                conn,
                tenant=principal.tenant,
                stream_id=stream_id,
                spec=spec,
                secret=encrypt_secret(ctx.secrets_key, principal.tenant, stream_id, secret) if secret is not None else None,
                by=principal.token_id,
            )
        except store.NameTaken:
            return error(409, "name_taken", f"this tenant already has a stream named {spec.name!r}; choose another name")
        except store.BadStart as exc:
            return _bad(exc)
        await ctx.audit.record(
            **_event(request, "createStream", row, f"stream {spec.name} made, delivering to {_destination(row)}", **details)
        )
    ctx.wake.set()
    answer = {**stream_view(row), **({"secret": secret} if spec.kind == "webhook" else {})}
    return web.json_response(answer, status=201, headers={"Location": f"/v1/streams/{stream_id}"})


async def _change(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    ctx = request.app[STREAMS]
    principal, stream_id = principal_of(request), request.match_info["id"]
    async with request.app[READS].pool.connection() as conn, conn.transaction():
        row = await _changeable(conn, principal.tenant, stream_id)
        if isinstance(row, web.Response):
            return row
        try:
            change = parse_change(await _json_body(request), row["kind"], check_url=ctx.check_url)
        except BadStream as exc:
            return _bad(exc)
        if change.filter is not None:
            _check_plan(request, change.filter)
        ctx.audit.check(**_event(request, "updateStream", row, "", change="settings"))
        try:
            changed = await store.update(conn, principal.tenant, stream_id, change, principal.token_id)
        except store.NameTaken:
            return error(409, "name_taken", f"this tenant already has a stream named {change.name!r}; choose another name")
        assert changed is not None  # locked FOR UPDATE above
        fields = sorted(k for k, v in (("name", change.name), ("filter", change.filter)) if v is not None) + sorted(
            change.settings
        )
        await ctx.audit.record(
            **_event(
                request,
                "updateStream",
                changed,
                f"stream {changed['name']} changed: {', '.join(fields)}",
                change="settings",
                fields=fields,
            )
        )
        return web.json_response(stream_view(changed, await store.lag(conn, principal.tenant, changed["cursor"])))


async def _set_state(request: web.Request, state: str) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    ctx = request.app[STREAMS]
    principal, stream_id = principal_of(request), request.match_info["id"]
    verb = "pause" if state == "paused" else "resume"
    async with request.app[READS].pool.connection() as conn, conn.transaction():
        row = await _changeable(conn, principal.tenant, stream_id)
        if isinstance(row, web.Response):
            return row
        if row["state"] != state:
            ctx.audit.check(**_event(request, "updateStream", row, "", change=verb))
            changed = await store.set_state(conn, principal.tenant, stream_id, state, principal.token_id)
            assert changed is not None
            await ctx.audit.record(
                **_event(request, "updateStream", changed, f"stream {row['name']} {state} at seq {row['cursor']}", change=verb)
            )
            row = changed
        view = stream_view(row, await store.lag(conn, principal.tenant, row["cursor"]))
    if state == "active":
        ctx.wake.set()
    return web.json_response(view)


async def _pause(request: web.Request) -> web.Response:
    return await _set_state(request, "paused")


async def _resume(request: web.Request) -> web.Response:
    return await _set_state(request, "active")


async def _delete(request: web.Request) -> web.Response:
    if (refused := _refused(request)) is not None:
        return refused
    ctx = request.app[STREAMS]
    principal, stream_id = principal_of(request), request.match_info["id"]
    async with request.app[READS].pool.connection() as conn, conn.transaction():
        row = await _changeable(conn, principal.tenant, stream_id)
        if isinstance(row, web.Response):
            return row
        ctx.audit.check(**_event(request, "deleteStream", row, ""))
        await store.delete(conn, principal.tenant, stream_id)
        await ctx.audit.record(
            **_event(request, "deleteStream", row, f"stream {row['name']} deleted at seq {row['cursor']}", cursor=row["cursor"])
        )
    return web.Response(status=204)
