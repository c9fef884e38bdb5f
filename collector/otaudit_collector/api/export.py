"""The export routes of the admin API (shared/design/api.md) and the export job runner.

- ``GET /v1/export`` streams every matching event as CSV, NDJSON, JSON or xlsx: one COPY from
  PostgreSQL, no row cap, constant memory (an xlsx file is completed on disk first, then sent).
- ``POST /v1/exports`` makes a job; any replica's ``ExportRunner`` writes its file into the
  database; ``GET /v1/exports/{id}`` reports progress and, when done, a signed download URL
  that any replica honours until it expires: a full URL, on ``exports.public_url`` when set, else on
  the scheme and ``Host`` of the request that asked (forwarded headers are not trusted).

Exports need an admin token and obey the plan like every read route; so do a job's status
and therefore its signed download URL (an auditor cannot obtain one). Each export is recorded
in the caller's tenant as a ``data_extraction`` event (``exportView``); one whose event the
catalogs would refuse is refused (503) before it starts.

At most ``max_streams`` exports and downloads stream at once per collector, and
``max_streams_per_tenant`` of them for one tenant; a write the client does not take within
``stall_timeout_seconds`` ends the stream (an export is then recorded as failed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiohttp import web

from otaudit_collector.api.reads import READS, error, iso, plan_filters, principal_of, scoped_terms
from otaudit_collector.core.export import (
    FILTER_PARAMETERS,
    FORMATS,
    XLSX_SHEET_ROWS,
    Format,
    StreamSlots,
    check_download,
    filters_from_body,
    format_named,
    sign_download,
)
from otaudit_collector.core.query import BadFilter, parse_filters, where_sql
from otaudit_collector.core.tokens import Principal
from otaudit_collector.metrics import Metrics
from otaudit_collector.selfaudit import TRAIL_TARGET, Access, SelfAudit
from otaudit_collector.storage import exports as store
from otaudit_collector.storage.bundles import BundleRefused
from otaudit_collector.storage.kept import KeptConnection

__all__ = ["ExportContext", "ExportRunner", "Stalled", "add_export_routes", "audit_export", "export_event"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ExportContext:
    conninfo: str
    signing_key: bytes
    audit: SelfAudit
    max_streams: int = 2
    max_streams_per_tenant: int = 1
    stall_timeout_seconds: float = 60.0
    url_ttl_seconds: int = 3600
    keep: dt.timedelta = dt.timedelta(hours=24)
    public_url: str | None = None
    xlsx_sheet_rows: int = XLSX_SHEET_ROWS
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: Metrics = field(default_factory=Metrics)
    slots: StreamSlots = field(init=False)

    def __post_init__(self) -> None:
        self.slots = StreamSlots(self.max_streams, self.max_streams_per_tenant)


class Stalled(ConnectionError):
    """The client took nothing of a write for ``stall_timeout_seconds``: it holds a stream slot without reading."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the client read nothing for {seconds:g} seconds; the stream was cut off")


def _within(write: Callable[[bytes], Awaitable[None]], seconds: float) -> Callable[[bytes], Awaitable[None]]:
    """``write`` that raises ``Stalled`` when it cannot complete within ``seconds`` (the client stopped reading)."""

    async def bounded(data: bytes) -> None:
        try:
            await asyncio.wait_for(write(data), seconds)
        except TimeoutError:
            raise Stalled(seconds) from None

    return bounded


def _cut_off(request: web.Request) -> None:
    """Drop a stalled client's connection: what it has not read is discarded, and aiohttp ends quietly."""
    if request.transport is not None:
        request.transport.abort()


EXPORTS: web.AppKey[ExportContext] = web.AppKey("exports", ExportContext)


def add_export_routes(app: web.Application, ctx: ExportContext) -> None:
    app[EXPORTS] = ctx
    app.router.add_get("/v1/export", _export)
    app.router.add_post("/v1/exports", _create_job)
    app.router.add_get("/v1/exports/{id}", _job)
    app.router.add_get("/v1/exports/{id}/download", _download)


def access_of(request: web.Request) -> Access:
    return Access(principal_of(request), request.remote, request.headers.get("User-Agent"))


def _require_admin(request: web.Request, *, viewer_may: bool = False) -> web.Response | None:
    """Exporting is admin-only; so are export jobs' status and download URLs, which hand the export out.
    ``viewer_may``: a viewer token made with ``export`` may too (the streamed export, within its scope)."""
    principal = principal_of(request)
    if principal.role == "admin":
        return None
    if principal.role == "viewer":
        scope = principal.scope
        if viewer_may and scope is not None and scope.export:
            return None
        why = "was made without export" if viewer_may else "exports through GET /v1/export only; export jobs need an admin token"
        return error(403, "viewer_forbids", f"this viewer token {why}")
    return error(403, "forbidden", "an auditor token reads the trail but cannot export it; use an admin token")


def _busy(ctx: ExportContext, why: str) -> web.Response:
    if why == "tenant":
        message = (
            f"this tenant already has {ctx.max_streams_per_tenant} export(s) or download(s) streaming from this collector;"
            " finish or close it, then retry"
        )
    else:
        message = f"{ctx.max_streams} exports are streaming from this collector; retry shortly"
    return error(429, "too_many_exports", message + ", or make an export job (POST /v1/exports)", **{"Retry-After": "5"})


def _filename(tenant: str, fmt: Format) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tenant)
    return f"otaudit-{safe}-{stamp}.{fmt.extension}"


def _query_filters(request: web.Request) -> dict[str, list[str]]:
    return {key: request.query.getall(key) for key in FILTER_PARAMETERS if key in request.query}


def _resolve(request: web.Request, params: dict[str, list[str]]) -> tuple[list[str] | None, dict[str, list[str]], str | None]:
    """Check the filters against the plan: (categories, the filters with since clamped, the clamp notice)."""
    filters = parse_filters(params)
    _plan, categories, notice = plan_filters(request, filters)
    effective = dict(params)
    if filters.since is not None:
        effective["since"] = [filters.since.isoformat()]  # q's time:> terms can only narrow it further
    return categories, effective, notice


# -- streaming -------------------------------------------------------------------------


async def _export(request: web.Request) -> web.StreamResponse:
    refused = _require_admin(request, viewer_may=True)
    if refused is not None:
        return refused
    ctx = request.app[EXPORTS]
    fmt = format_named(request.query.get("format"))
    bom = _flag(request.query.get("bom"), "bom")
    params = scoped_terms(request, _query_filters(request))
    categories, effective, notice = _resolve(request, params)
    tenant = principal_of(request).tenant
    where, where_params = where_sql(tenant, categories, parse_filters(effective))
    access = access_of(request)
    ctx.audit.check(**export_event(access, fmt, params, 0, "success", None, job_id=None))  # else 503: no unrecorded export
    streams = ctx.metrics.export_streams
    full = ctx.slots.take(tenant)
    if full is not None:
        streams.labels("busy").inc()
        return _busy(ctx, full)
    try:
        try:
            conn = await psycopg.AsyncConnection.connect(ctx.conninfo)
        except psycopg.OperationalError:
            log.exception("export: cannot connect to the database")
            streams.labels("unavailable").inc()
            return error(503, "unavailable", "the database is unreachable; try again shortly", **{"Retry-After": "5"})
        headers = {
            "Content-Type": fmt.content_type,
            "Content-Disposition": f'attachment; filename="{_filename(tenant, fmt)}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        if notice:
            headers["X-Otaudit-Since-Clamped"] = notice
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        rows = 0

        async def progress(count: int) -> None:
            nonlocal rows
            rows = count

        async def failed(reason: str) -> None:
            streams.labels("failure").inc()
            await asyncio.shield(
                _audit_failure(audit_export(ctx.audit, access, fmt, params, rows, "failure", reason, job_id=None))
            )

        write = _within(response.write, ctx.stall_timeout_seconds)

        async def sink(data: bytes) -> None:
            # The response begins with the first bytes: a bundle, made whole before any is
            # sent, can still be refused with a status of its own.
            if not response.prepared:
                await response.prepare(request)
            await write(data)

        async with conn:
            try:
                rows = await store.stream_export(
                    conn,
                    fmt,
                    bom,
                    where,
                    where_params,
                    sink,
                    progress,
                    sheet_rows=ctx.xlsx_sheet_rows,
                    bundle=store.BundleSource(ctx.conninfo, tenant, params),
                )
            except BundleRefused as exc:  # found before a byte was sent (the bundle is made whole first)
                await failed(str(exc))
                return error(409, "no_bundle", str(exc))
            except Stalled as exc:
                log.warning("export cut off: its client stopped reading", extra={"tenant": tenant, "rows": rows})
                await failed(str(exc))
                _cut_off(request)
                return response
            except (ConnectionError, asyncio.CancelledError) as exc:
                await failed(f"the client went away during the export ({type(exc).__name__})")
                raise
            except psycopg.Error as exc:
                log.error("export failed after the response began; the download is cut short", extra={"error": str(exc)})
                await failed(f"the database failed during the export: {exc}")
                raise
        # Recorded before the response ends: whoever has the whole file can already see the export in the
        # trail. An export that cannot be recorded is cut short (no final chunk), so no client takes it as whole.
        try:
            await audit_export(ctx.audit, access, fmt, params, rows, "success", None, job_id=None)
        except Exception:
            log.exception("export not recorded in the audit trail; the download is cut short")
            streams.labels("failure").inc()
            raise
        streams.labels("success").inc()
        ctx.metrics.export_rows.labels("stream").inc(rows)
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        ctx.slots.give_back(tenant)


def _flag(text: str | None, name: str) -> bool:
    if text is None or text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise BadFilter(name, f"'{text}' is not true or false")


async def audit_export(
    audit: SelfAudit,
    access: Access,
    fmt: Format,
    params: dict[str, list[str]],
    rows: int,
    outcome: str,
    reason: str | None,
    *,
    job_id: str | None,
) -> None:
    """Record an export; raises (``selfaudit.Unrecorded`` among others) when it cannot be: not to be ignored."""
    await audit.record(**export_event(access, fmt, params, rows, outcome, reason, job_id=job_id))


def export_event(
    access: Access,
    fmt: Format,
    params: dict[str, list[str]],
    rows: int,
    outcome: str,
    reason: str | None,
    *,
    job_id: str | None,
) -> dict[str, Any]:
    """The fields of an export's ``exportView`` event (``SelfAudit.record`` bounds what the caller supplied)."""
    filters = {k: (v[0] if len(v) == 1 else v) for k, v in params.items() if k != "q"}
    details: dict[str, Any] = {"format": fmt.name, "filters": filters, "row_count": rows}
    if params.get("q"):
        details["query"] = " ".join(params["q"])
    if job_id:
        details["job_id"] = job_id
    return {
        "event": "exportView",
        "category": "data_extraction",
        "access": access,
        "outcome": outcome,
        "target": TRAIL_TARGET,
        "details": details,
        "reason": reason,
        "message": f"exported {rows} audit events as {fmt.name}",
    }


async def _audit_failure(record: Awaitable[None]) -> None:
    """Record a failed export, best effort: the export is already lost, and its own error comes first."""
    try:
        await record
    except Exception:
        log.exception("could not record the failed export in the audit trail")


# -- jobs ------------------------------------------------------------------------------


def public_base(request: web.Request, public_url: str | None) -> str:
    """Where a client reaches this API: ``exports.public_url`` when configured (behind a proxy that
    rewrites the host), else the scheme and ``Host`` header of ``request`` as received."""
    if public_url:
        return public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


def job_view(ctx: ExportContext, job: dict[str, Any], now: float, base: str) -> dict[str, Any]:
    """A job as the API shows it; ``base`` (``public_base``) makes its download URL a full one."""
    state = job["state"]
    total = job["total"]
    progress = None
    if state == "done":
        progress = 1.0
    elif total is not None:
        progress = round(job["rows"] / total, 4) if total else 1.0
    url = expires = None
    if state == "done" and job["finished_at"] is not None:
        until = min(now + ctx.url_ttl_seconds, (job["finished_at"] + ctx.keep).timestamp())
        if until > now:
            expires = int(until)
            url = base + sign_download(ctx.signing_key, job["id"], expires)
    return {
        "id": job["id"],
        "state": state,
        "format": job["format"],
        "rows": job["rows"],
        "total": total,
        "progress": progress,
        "bytes": job["bytes"],
        "created_at": iso(job["created_at"]),
        "finished_at": iso(job["finished_at"]) if job["finished_at"] else None,
        "error": job["error"],
        "download_url": url,
        "expires_at": iso(dt.datetime.fromtimestamp(expires, dt.UTC)) if expires else None,
    }


async def _create_job(request: web.Request) -> web.Response:
    refused = _require_admin(request)
    if refused is not None:
        return refused
    ctx = request.app[EXPORTS]
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, LookupError):  # not JSON, not UTF-8, or an unknown charset
        raise BadFilter("body", 'is not JSON; send a JSON object such as {"format": "csv"}') from None
    fmt, bom, params = filters_from_body(body)
    for values in params.values():
        if any("\x00" in v for v in values):
            raise BadFilter("body", "contains a NUL character")
    categories, effective, notice = _resolve(request, params)
    principal = principal_of(request)
    ctx.audit.check(**export_event(access_of(request), fmt, params, 0, "success", None, job_id="exp_check"))
    async with request.app[READS].pool.connection() as conn:
        job = await store.create_job(
            conn,
            tenant=principal.tenant,
            token_id=principal.token_id,
            fmt=fmt,
            bom=bom,
            filters=effective,
            categories=categories,
            client={k: v for k, v in (("address", request.remote), ("user_agent", request.headers.get("User-Agent"))) if v},
        )
    ctx.metrics.export_jobs_created.inc()
    ctx.wake.set()
    answer = job_view(ctx, job, time.time(), public_base(request, ctx.public_url))
    if notice:
        answer["since_clamped"] = notice
    return web.json_response(answer, status=202, headers={"Location": f"/v1/exports/{job['id']}"})


async def _job(request: web.Request) -> web.Response:
    refused = _require_admin(request)  # the status holds the signed, tokenless download URL
    if refused is not None:
        return refused
    ctx = request.app[EXPORTS]
    principal = principal_of(request)
    async with request.app[READS].pool.connection() as conn:
        job = await store.get_job(conn, principal.tenant, request.match_info["id"])
    if job is None:
        return error(404, "not_found", f"no export job {request.match_info['id']!r} in this tenant")
    return web.json_response(job_view(ctx, job, time.time(), public_base(request, ctx.public_url)))


async def _download(request: web.Request) -> web.StreamResponse:
    ctx = request.app[EXPORTS]
    job_id = request.match_info["id"]
    problem = check_download(
        ctx.signing_key, job_id, request.query.get("expires", ""), request.query.get("signature", ""), time.time()
    )
    if problem == "bad_signature":
        return error(
            403, "bad_signature", "this download URL is not one otaudit signed; ask GET /v1/exports/{id} for a fresh one"
        )
    if problem == "expired":
        return error(410, "expired", "this download URL has expired; ask GET /v1/exports/{id} for a fresh one")
    refused = ctx.slots.refusal(None)
    if refused is not None:  # asked first, so that a crowd of downloads does not even reach the database
        return _busy(ctx, refused)
    async with request.app[READS].pool.connection() as conn:
        # The URL names the job, not its tenant: the one lookup of a job by id alone (index export_jobs_id).
        cur = await conn.execute("SELECT tenant, format, state, bytes FROM export_jobs WHERE id = %s", (job_id,))
        row = await cur.fetchone()
    if row is None:
        return error(404, "not_found", "the export job no longer exists (finished jobs are kept for a limited time)")
    tenant, format_name, state, size = row
    if state != "done":
        return error(409, "not_ready", f"the export job is {state}, not done")
    refused = ctx.slots.take(tenant)
    if refused is not None:
        return _busy(ctx, refused)
    try:
        return await _send_file(request, ctx, job_id, tenant, FORMATS[format_name], size)
    finally:
        ctx.slots.give_back(tenant)


async def _send_file(
    request: web.Request, ctx: ExportContext, job_id: str, tenant: str, fmt: Format, size: int
) -> web.StreamResponse:
    async with await psycopg.AsyncConnection.connect(ctx.conninfo, autocommit=True) as conn:
        response = web.StreamResponse(
            headers={
                "Content-Type": fmt.content_type,
                "Content-Disposition": f'attachment; filename="{_filename(tenant, fmt)}"',
                "Content-Length": str(size),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        await response.prepare(request)
        write = _within(response.write, ctx.stall_timeout_seconds)
        try:
            async for chunk in store.read_file(conn, tenant, job_id):
                await write(chunk)
        except Stalled:
            log.warning("download of export job %s cut off: its client stopped reading", job_id, extra={"tenant": tenant})
            _cut_off(request)
            return response
        await response.write_eof()
        return response


# -- the runner ------------------------------------------------------------------------


class ExportRunner:
    """Runs export jobs, one at a time, on whichever replica claims them first."""

    def __init__(self, ctx: ExportContext, *, owner: str, lease_seconds: float = 30.0, poll_seconds: float = 1.0) -> None:
        self.ctx = ctx
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._last_cleanup = 0.0
        self._claims = KeptConnection(ctx.conninfo, "otaudit-export-claim")  # polled every poll_seconds

    async def run(self) -> None:
        try:
            await self._poll()
        finally:
            await self._claims.close()

    async def _poll(self) -> None:
        while True:
            try:
                worked = await self.run_once()
            except psycopg.OperationalError as exc:
                log.warning("export jobs: the database is unreachable; trying again", extra={"error": str(exc)})
                worked = False
            except Exception:
                log.exception("export jobs: unexpected error; going on")
                worked = False
            if not worked:
                self.ctx.wake.clear()
                try:
                    await asyncio.wait_for(self.ctx.wake.wait(), self.poll_seconds)
                except TimeoutError:
                    pass

    async def run_once(self) -> bool:
        """Claim and run one job; False when there was none."""
        metrics = self.ctx.metrics
        conn = await self._claims.get()
        if time.monotonic() - self._last_cleanup > 300:
            self._last_cleanup = time.monotonic()
            gone = await store.delete_expired(conn, self.ctx.keep)
            if gone:
                log.info("export jobs: deleted %d finished jobs past their keeping time", gone)
        job = await store.claim_job(conn, self.owner, self.lease_seconds)
        if job is None:
            return False
        principal = await _principal(conn, job["token_id"], job["tenant"])
        if job["attempts"] > store.MAX_ATTEMPTS:
            message = f"gave up after {store.MAX_ATTEMPTS} attempts: the collector running it stopped each time"
            await store.fail_job(conn, job["tenant"], job["id"], message)
            metrics.export_jobs_finished.labels("failed").inc()
            await _audit_failure(self._audit(job, principal, 0, "failure", message))
            return True
        log.info("export job %s: running (attempt %d)", job["id"], job["attempts"])
        try:
            with metrics.export_jobs_running.track_inprogress():
                rows = await store.run_job(
                    self.ctx.conninfo, job, self.owner, self.lease_seconds, sheet_rows=self.ctx.xlsx_sheet_rows
                )
        except store.LeaseLost:
            log.warning("export job %s: another collector took it over", job["id"])
            return True
        except psycopg.OperationalError:
            raise  # the lease runs out and the job is tried again
        except Exception as exc:
            log.exception("export job %s failed", job["id"])
            metrics.export_jobs_finished.labels("failed").inc()
            await _audit_failure(self._audit(job, principal, 0, "failure", f"{type(exc).__name__}: {exc}"))
            return True
        try:
            await self._audit(job, principal, rows, "success", None)
        except Exception as exc:  # an export the trail does not show is not handed out
            log.exception("export job %s: not recorded in the audit trail; failing it", job["id"])
            await store.fail_job(
                await self._claims.get(),
                job["tenant"],
                job["id"],
                f"the export could not be recorded in the audit trail ({exc}); make it again",
            )
            metrics.export_jobs_finished.labels("failed").inc()
            return True
        log.info("export job %s: done, %d rows", job["id"], rows)
        metrics.export_jobs_finished.labels("done").inc()
        metrics.export_rows.labels("job").inc(rows)
        return True

    async def _audit(self, job: dict[str, Any], principal: Principal, rows: int, outcome: str, reason: str | None) -> None:
        client = job["client"] or {}
        access = Access(principal, client.get("address"), client.get("user_agent"))
        params = {k: v for k, v in job["filters"].items() if v}
        await audit_export(self.ctx.audit, access, FORMATS[job["format"]], params, rows, outcome, reason, job_id=job["id"])


async def _principal(conn: psycopg.AsyncConnection[Any], token_id: str, tenant: str) -> Principal:
    cur = await conn.execute("SELECT role, name FROM tokens WHERE id = %s", (token_id,))
    row = await cur.fetchone()
    role, name = (row[0], row[1]) if row else ("admin", token_id)
    return Principal(token_id, tenant, role, name)
