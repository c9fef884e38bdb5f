"""The running collector: receivers, writer, API, catalog reloads and a graceful stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from otaudit_collector._text import plural
from otaudit_collector.api.export import ExportContext, ExportRunner, add_export_routes
from otaudit_collector.api.health import create_api_app
from otaudit_collector.api.log import LogContext, add_log_routes
from otaudit_collector.api.openapi import add_openapi_route
from otaudit_collector.api.reads import ReadContext, add_read_routes
from otaudit_collector.api.streams import add_stream_routes
from otaudit_collector.api.viewer import ViewerContext, add_viewer_routes
from otaudit_collector.api.viewer_auth import ViewerKeys
from otaudit_collector.api.web import FrameAncestors, add_web_routes
from otaudit_collector.config import Settings
from otaudit_collector.core.catalog import CatalogError, CatalogSet, bundled_catalog_dirs, catalog_fingerprint, load_catalogs
from otaudit_collector.core.export import signing_key
from otaudit_collector.core.normalize import Policy
from otaudit_collector.core.plans import plans_from
from otaudit_collector.core.tokens import TokenCache
from otaudit_collector.core.viewer_tokens import root_key
from otaudit_collector.http_server import LIMITS, BoundedSite
from otaudit_collector.integrity import LogKeys, Witnesses, load_log_keys, make_checkpoints
from otaudit_collector.metrics import Metrics, merge_expositions
from otaudit_collector.pipeline import Ingestor
from otaudit_collector.receivers.auth import IngestAuth
from otaudit_collector.receivers.otlp_grpc import create_grpc_server
from otaudit_collector.receivers.otlp_http import create_http_app
from otaudit_collector.selfaudit import SelfAudit, Sessions
from otaudit_collector.storage.log import catch_up, tenants_behind
from otaudit_collector.storage.migrate import available_migrations
from otaudit_collector.storage.replica import ReadReplica
from otaudit_collector.storage.retention import run_retention
from otaudit_collector.storage.titles import store_titles_async
from otaudit_collector.storage.writer import Writer
from otaudit_collector.streams.service import Streams

__all__ = ["Collector", "Endpoints", "Role", "bind_port", "catalog_dirs", "policy_from", "ensure_partitions", "settle_process"]

log = logging.getLogger("otaudit")

SCHEMA_CHECK_SECONDS = 5.0
"""How often a running collector checks that the database still has its migrations (readiness)."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    grpc: tuple[str, int]
    http: tuple[str, int]
    api: tuple[str, int] | None  # None: an ingest worker, which serves no API


@dataclass(frozen=True, slots=True)
class Role:
    """What one collector process does. The default is the whole collector in one process;
    ``otaudit serve --workers N`` runs one ``api`` worker and N-1 others (workers.py)."""

    api: bool = True
    """Serve the API and run the periodic work (retention, exports, streams, checkpoints)."""
    shared_ports: bool = False
    """Bind the ports with SO_REUSEPORT, beside the other workers of the same supervisor."""
    metrics_socket: str | None = None
    """A worker without the API serves its ``/metrics`` on this Unix socket, for the API worker."""
    peers: tuple[str, ...] = ()
    """The API worker adds up its own metrics and those of the workers at these sockets."""


def catalog_dirs(settings: Settings) -> list[Path]:
    """The catalog folders to load, in order: bundled defaults, bundled packs, the operator's own."""
    catalogs = settings.get("catalogs")
    if not (catalogs["bundled"] or catalogs["packs"] or catalogs["dirs"]):
        raise CatalogError([])  # the self-audit categories alone are no catalog to run on
    dirs = bundled_catalog_dirs(catalogs["packs"], defaults=catalogs["bundled"])
    dirs.extend(Path(folder) for folder in catalogs["dirs"])  # made absolute by the configuration loader
    return dirs


def policy_from(settings: Settings) -> Policy:
    ingest = settings.get("ingest")
    return Policy(
        max_attributes=ingest["max_attributes"],
        max_string_length=ingest["max_string_length"],
        max_depth=ingest["max_depth"],
        max_past_seconds=ingest["clock_skew"]["max_past_days"] * 86400,
        max_future_seconds=ingest["clock_skew"]["max_future_seconds"],
        default_tenant=ingest["default_tenant"],
        max_records_per_request=ingest["max_records_per_request"],
        max_rejects_per_request=ingest["max_rejects_per_request"],
    )


def ensure_partitions(conninfo: str, months_ahead: int) -> None:
    """Create this month's partition, last month's and ``months_ahead`` future ones."""
    now = datetime.now(UTC)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for offset in range(-1, months_ahead + 1):
            month = now.month - 1 + offset
            year = now.year + month // 12
            conn.execute("SELECT otaudit_ensure_partition(%s)", (datetime(year, month % 12 + 1, 1, tzinfo=UTC),))


def settle_process() -> None:
    """Tune a collector process once it has started (``otaudit serve`` and each of its workers)."""
    # Everything loaded so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise scan it again and again.
    gc.collect()
    gc.freeze()
    # Requests are prepared on worker threads; a short switch interval lets the event loop
    # take the GIL back promptly for each round trip of the database writer, so PostgreSQL
    # is not left waiting while Python works (the default is 5 ms).
    sys.setswitchinterval(0.0005)


def bind_port(host: str, port: int, *, shared: bool = False, what: str = "") -> socket.socket:
    """A TCP socket bound to ``host:port``, not listening yet; ``shared``: with SO_REUSEPORT, beside
    the other workers of ``--workers`` (workers.py holds each port so, never listening on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        purpose = f" for {what}" if what else ""
        raise OSError(exc.errno, f"cannot listen on {host}:{port}{purpose}: {exc.strerror}") from None
    return sock


def _bind(host: str, port: int, *, shared: bool = False) -> socket.socket:
    sock = bind_port(host, port, shared=shared)
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Collector:
    """Owns the servers and the writer of one collector process."""

    def __init__(self, settings: Settings, conninfo: str, catalogs: CatalogSet, role: Role | None = None) -> None:
        self.settings = settings
        self.role = role or Role()
        self.conninfo = conninfo
        self.catalogs = catalogs
        ingest = settings.get("ingest")
        self.metrics = Metrics()  # this collector's own registry: served at /metrics
        self.writer = Writer(
            conninfo,
            max_pending_records=ingest["max_pending_records"],
            max_batch_records=ingest["max_batch_records"],
            commit_timeout_seconds=ingest["commit_timeout_seconds"],
            retry_after_seconds=ingest["retry_after_seconds"],
            default_plan=settings.raw["default_plan"],
            metrics=self.metrics,
            on_log_behind=self._log_behind,
        )
        self.integrity = settings.get("integrity")
        self.log_keys: LogKeys | None = None
        self.witnesses = Witnesses(self.integrity["witness_dir"], self.integrity["witness_urls"])
        self._behind: set[str] = set()  # tenants whose log must catch up with their events
        self.ingestor = Ingestor(
            writer=self.writer,
            catalogs=lambda: self.catalogs,
            policy=policy_from(settings),
            max_concurrent_requests=ingest["max_concurrent_requests"],
            retry_after_seconds=ingest["retry_after_seconds"],
            max_inflight_bytes=int(ingest["max_inflight_bytes"]),
            metrics=self.metrics,
            seal=bool(self.integrity["enabled"]),
        )
        self.ingest_auth = IngestAuth(
            conninfo,
            pepper=settings.token_pepper,
            required=bool(settings.get("auth", "require_ingest_token")),
            cache_seconds=float(settings.get("auth", "token_cache_seconds")),
            retry_after_seconds=ingest["retry_after_seconds"],
        )
        self._grpc: grpc.aio.Server | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._pool: AsyncConnectionPool[Any] | None = None
        self._replica: ReadReplica | None = None  # database.read_url's standby, for reads that tolerate its lag
        self._retention_stop = threading.Event()  # ends a retention run after its batch in progress
        self._schema_problem: str | None = None  # the database's schema is behind this collector's
        self.streams = Streams(
            settings, conninfo, self.metrics, lambda: self.catalogs
        )  # checks streams.declared before anything starts

    # -- readiness -------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        problems = []
        if self._stopping:
            problems.append("shutting down")
        if not self.writer.available:
            problems.append(f"database unreachable: {self.writer.stats.last_error or 'connecting'}")
        elif self._schema_problem:
            problems.append(self._schema_problem)
        if not self.catalogs.categories:
            problems.append("no catalogs loaded")
        return problems

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> Endpoints:
        listen = self.settings.get("listen")
        ingest = self.settings.get("ingest")
        host = listen["host"]
        api_host = listen["api_host"] or host
        self.log_keys = await asyncio.to_thread(load_log_keys, self.settings, self.conninfo)
        await self.writer.start()
        await self.ingest_auth.start()

        self._grpc = create_grpc_server(
            self.ingestor,
            max_request_bytes=ingest["max_request_bytes"],
            max_concurrent_requests=ingest["max_concurrent_requests"],
            body_timeout_seconds=float(ingest["body_timeout_seconds"]),
            max_streams_per_connection=ingest["grpc_max_streams_per_connection"],
            retry_after_seconds=float(ingest["retry_after_seconds"]),
            auth=self.ingest_auth,
            reuse_port=self.role.shared_ports,
        )
        address = f"[{host}]:{listen['grpc_port']}" if ":" in host else f"{host}:{listen['grpc_port']}"
        try:
            grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError:  # grpcio raises when the port cannot be bound (older versions return 0)
            grpc_port = 0
        if grpc_port == 0:
            raise OSError(f"cannot listen on {address} for OTLP/gRPC: the address is in use or not available")
        await self._grpc.start()

        http_port = await self._serve(
            create_http_app(
                self.ingestor,
                max_request_bytes=ingest["max_request_bytes"],
                auth=self.ingest_auth,
                body_timeout_seconds=float(ingest["body_timeout_seconds"]),
            ),
            host,
            listen["http_port"],
        )
        interval = float(self.settings.get("catalogs", "reload_interval_seconds"))
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._watch_catalogs(interval), name="otaudit-catalog-watch"))
        if not self.role.api:
            return await self._start_ingest_worker((host, grpc_port), (host, http_port))
        self._pool = AsyncConnectionPool(
            self.conninfo, min_size=1, max_size=4, open=False, name="otaudit-api", kwargs={"autocommit": True}
        )
        await self._pool.open()
        self.metrics.watch_pool("api", self._pool.get_stats)
        self._replica = await ReadReplica.open(self.settings, self._pool, self.metrics)
        await self._store_titles("start")
        api = create_api_app(self.not_ready, self._render_metrics)
        audit = SelfAudit(self.ingestor)
        add_read_routes(
            api,
            ReadContext(
                pool=self._pool,
                plans=plans_from(self.settings.raw["plans"]),
                default_plan=self.settings.raw["default_plan"],
                pepper=self.settings.token_pepper,
                catalogs=lambda: self.catalogs,
                sessions=Sessions(audit, float(self.settings.get("auth", "session_idle_minutes"))),
                tokens=TokenCache(
                    self.settings.token_pepper, float(self.settings.get("auth", "token_cache_seconds")), time.monotonic
                ),
                details_prefix_keys=frozenset(self.settings.get("search", "details_prefix_keys")),
                viewers=ViewerKeys(await self._viewer_root(), float(self.settings.get("auth", "token_cache_seconds"))),
                replica=self._replica,
            ),
        )
        add_viewer_routes(
            api,
            ViewerContext(
                audit,
                float(self.settings.get("viewer", "default_minutes")),
                float(self.settings.get("viewer", "max_minutes")),
            ),
        )
        add_log_routes(api, LogContext(self._pool, lambda: self.log_keys))
        add_openapi_route(api)
        add_web_routes(
            api,
            FrameAncestors.of(
                self.settings.get("viewer", "frame_ancestors"), self.settings.get("viewer", "tenant_frame_ancestors")
            ),
        )
        exports = await self._exports(audit)
        add_export_routes(api, exports)
        add_stream_routes(api, await self.streams.open(self._pool, audit))
        api_port = await self._serve(api, api_host, listen["api_port"])
        self._tasks.append(asyncio.create_task(self._maintain_partitions(), name="otaudit-partitions"))
        self._tasks.append(asyncio.create_task(self._watch_schema(), name="otaudit-schema"))
        if self.settings.get("retention", "enabled"):
            self._tasks.append(asyncio.create_task(self._apply_retention(), name="otaudit-retention"))
        self._tasks.append(asyncio.create_task(self._export_runner(exports).run(), name="otaudit-exports"))
        if self.settings.get("streams", "enabled"):
            self._tasks.append(asyncio.create_task(self.streams.deliver(), name="otaudit-streams"))
        if self.integrity["enabled"]:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop(), name="otaudit-checkpoints"))
            self._tasks.append(asyncio.create_task(self._catch_up_loop(), name="otaudit-log-catch-up"))
        return Endpoints((host, grpc_port), (host, http_port), (api_host, api_port))

    async def _start_ingest_worker(self, grpc_at: tuple[str, int], http_at: tuple[str, int]) -> Endpoints:
        """The rest of a worker without the API: its metrics for the API worker, and the catch-up
        of a log it left behind (the API worker signs the checkpoints)."""
        if self.role.metrics_socket:
            metrics = web.Application()
            metrics.router.add_get("/metrics", self._own_metrics)
            runner = web.AppRunner(metrics, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            await web.UnixSite(runner, self.role.metrics_socket).start()
        if self.integrity["enabled"]:
            self._tasks.append(asyncio.create_task(self._catch_up_loop(scan_first=False), name="otaudit-log-catch-up"))
        return Endpoints(grpc_at, http_at, None)

    async def _own_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def _render_metrics(self) -> bytes:
        """This process's metrics; under ``--workers``, added up with every worker's (metrics.merge_expositions)."""
        own = self.metrics.render()
        if not self.role.peers:
            return own
        texts = [own]
        for path in self.role.peers:
            try:
                async with aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=path), timeout=aiohttp.ClientTimeout(total=2)
                ) as session, session.get("http://worker/metrics") as response:
                    if response.status == 200:
                        texts.append(await response.read())
            except (TimeoutError, OSError, aiohttp.ClientError):
                continue  # a worker restarting: otaudit_workers_reporting says it is missing
        return merge_expositions(texts, workers=len(self.role.peers) + 1)

    async def _viewer_root(self) -> bytes:
        """The root of the viewer keys: the database's random key mixed with the pepper."""
        assert self._pool is not None
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT secret FROM server_keys WHERE name = 'viewer_tokens'")
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError("the database has no viewer token key: run 'otaudit migrate'")
        return root_key(bytes(row[0]), self.settings.token_pepper)

    async def _exports(self, audit: SelfAudit) -> ExportContext:
        config = self.settings.get("exports")
        assert self._pool is not None
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT secret FROM server_keys WHERE name = 'export_downloads'")
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError("the database has no export signing key: run 'otaudit migrate'")
        return ExportContext(
            conninfo=self.conninfo,
            signing_key=signing_key(bytes(row[0]), self.settings.token_pepper),
            audit=audit,
            max_streams=int(config["max_streams"]),
            max_streams_per_tenant=int(config["max_streams_per_tenant"]),
            stall_timeout_seconds=float(config["stall_timeout_seconds"]),
            url_ttl_seconds=int(config["url_ttl_seconds"]),
            keep=timedelta(hours=float(config["keep_hours"])),
            public_url=config["public_url"],
            xlsx_sheet_rows=int(config["xlsx_sheet_rows"]),
            metrics=self.metrics,
        )

    def _export_runner(self, ctx: ExportContext) -> ExportRunner:
        config = self.settings.get("exports")
        return ExportRunner(
            ctx,
            owner=f"{socket.gethostname()}-{os.getpid()}-{id(self):x}",
            lease_seconds=float(config["lease_seconds"]),
            poll_seconds=float(config["poll_seconds"]),
        )

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        """Serve ``app`` on ``host:port`` (0: any free port), with bounded connections (http_server)."""
        listen = self.settings.get("listen")
        handler: dict[str, Any] = {
            "access_log": None,
            "auto_decompress": False,  # OTLP/HTTP inflates bodies itself, with its own limit and errors
            "keepalive_timeout": float(listen["idle_timeout_seconds"]),
            **LIMITS,
        }
        sock = _bind(host, port, shared=self.role.shared_ports)
        try:
            runner = web.AppRunner(app, shutdown_timeout=float(self.settings.get("shutdown", "grace_seconds")), **handler)
            await runner.setup()
        except BaseException:
            sock.close()
            raise
        self._runners.append(runner)
        await BoundedSite(runner, sock, header_timeout=float(listen["header_timeout_seconds"]), **handler).start()
        chosen: int = sock.getsockname()[1]
        return chosen

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop taking requests, finish and answer those in flight, commit, close; all
        within ``grace_seconds``: what is still uncommitted then is answered as retryable."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        # Refuse new requests before anything else: each receiver's stop begins at once (gRPC
        # answers new calls UNAVAILABLE, the HTTP sites close their sockets), then waits for the
        # requests in flight (OTLP/HTTP and the API: their shutdown_timeout), up to the grace.
        receivers: list[asyncio.Future[Any]] = []
        if self._grpc is not None:
            receivers.append(asyncio.ensure_future(self._grpc.stop(grace_seconds)))
        receivers.extend(asyncio.ensure_future(runner.cleanup()) for runner in self._runners)
        await asyncio.sleep(0)  # each has run to its first wait: nothing new is taken from here on
        log.info("stopping: finishing requests in flight (new ones are refused)")
        self._retention_stop.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # let them unwind (an export job closes its connections) rather than vanish with the loop
            await asyncio.wait(self._tasks, timeout=max(0.1, deadline - loop.time()))
        await asyncio.gather(*receivers, return_exceptions=True)
        self.ingestor.close()
        await self.ingest_auth.close()
        await self.writer.close(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
        if self._replica is not None:
            await self._replica.close()
        if self._pool is not None:
            await self._pool.close()
        self._stopped.set()

    async def run_until_signalled(self, grace_seconds: float = 30.0, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then stop within the grace. ``ready`` runs once the
        handlers are in place: a banner printed before them would let a quick SIGTERM kill the
        process outright instead of stopping it."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload_catalogs("SIGHUP")))
        if ready is not None:
            ready()
        await stop.wait()
        await self.stop(grace_seconds)

    # -- the tamper-evident log -------------------------------------------------------

    def _log_behind(self, tenant: str) -> None:
        self._behind.add(tenant)

    async def _checkpoint_loop(self) -> None:
        """Sign checkpoints every ``integrity.checkpoint_seconds``; a failure is logged and tried again."""
        interval = float(self.integrity["checkpoint_seconds"])
        assert self.log_keys is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(make_checkpoints, self.conninfo, self.log_keys, self.witnesses)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("could not sign checkpoints; will try again", extra={"error": str(exc)})

    async def make_checkpoints_now(self) -> list[str]:
        """Sign the checkpoints due now (tests, and a collector's stop)."""
        assert self.log_keys is not None
        return await asyncio.to_thread(make_checkpoints, self.conninfo, self.log_keys, self.witnesses)

    async def _catch_up_loop(self, *, scan_first: bool = True) -> None:
        """Append what the log lacks: events stored while it was off, or before it existed
        (``scan_first``: look for them in every tenant at start; a worker without the API
        leaves that to the API worker and catches up only with what it left behind itself)."""
        interval = float(self.integrity["catch_up_seconds"])
        first = scan_first
        while True:
            try:
                behind = await asyncio.to_thread(self._tenants_behind) if first else sorted(self._behind)
                first = False
                self._behind.clear()
                for tenant in behind:
                    appended = await asyncio.to_thread(catch_up, self.conninfo, tenant, self._personal)
                    if appended:
                        log.info("the log caught up with a tenant's events", extra={"tenant": tenant, "events": appended})
            except Exception as exc:  # noqa: BLE001 - logged; tried again
                log.error("the log could not catch up; will try again", extra={"error": str(exc)})
                first = True
            await asyncio.sleep(interval)

    def _tenants_behind(self) -> list[str]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            return tenants_behind(conn)

    def _personal(self, doc: dict[str, Any]) -> tuple[str, ...]:
        return self.catalogs.personal_pointers(doc)

    # -- catalogs --------------------------------------------------------------------

    async def reload_catalogs(self, why: str) -> bool:
        """Load the catalogs again and swap them in; keep the old ones if the new ones are broken."""
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(load_catalogs, catalog_dirs(self.settings))
            except CatalogError as exc:
                log.error(
                    "catalog reload refused; keeping the catalogs in force",
                    extra={"trigger": why, "problems": [str(p) for p in exc.problems]},
                )
                return False
            self.catalogs = fresh
            log.info("catalogs reloaded", extra={"trigger": why, "categories": len(fresh.categories)})
            await self._store_titles(why)
            return True

    async def _store_titles(self, why: str) -> None:
        """Write the events' titles where a CSV export's COPY reads them; a failure costs titles, not the catalogs."""
        if self._pool is None:
            return
        try:
            async with self._pool.connection() as conn:
                await store_titles_async(conn, self.catalogs)
        except psycopg.Error as exc:
            log.warning(
                "could not store the catalogs' event titles; CSV exports may lack them", extra={"trigger": why, "error": str(exc)}
            )

    async def _watch_catalogs(self, interval: float) -> None:
        seen = self.catalogs.fingerprint
        while True:
            await asyncio.sleep(interval)
            current = catalog_fingerprint(catalog_dirs(self.settings))
            if current != seen:
                seen = current
                await self.reload_catalogs("file change")

    async def _watch_schema(self) -> None:
        """Readiness also needs the migrations this collector expects: a database restored from
        an old backup, or replaced by an empty one, is reachable but cannot take events."""
        latest = available_migrations()[-1].version
        while True:
            await asyncio.sleep(SCHEMA_CHECK_SECONDS)
            if not self.writer.available or self._pool is None:
                continue
            try:
                async with self._pool.connection(timeout=5) as conn:
                    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
                    row = await cur.fetchone()
                applied = int(row[0]) if row else 0
            except psycopg.errors.UndefinedTable:
                applied = 0
            except Exception as exc:  # noqa: BLE001 - the writer reports an unreachable database
                log.debug("schema check failed", extra={"error": str(exc)})
                continue
            problem = (
                None
                if applied >= latest
                else f"database schema is at migration {applied}, this collector needs {latest}: run 'otaudit migrate'"
            )
            if problem != self._schema_problem:
                (log.error if problem else log.info)(problem or "database schema is up to date again")
            self._schema_problem = problem

    async def _maintain_partitions(self) -> None:
        ahead = int(self.settings.get("ingest", "partitions_ahead_months"))
        while True:
            await asyncio.sleep(3600)
            try:
                await asyncio.to_thread(ensure_partitions, self.conninfo, ahead)
            except psycopg.Error as exc:
                log.warning("could not create partitions ahead; will try again in an hour", extra={"error": str(exc)})

    async def _apply_retention(self) -> None:
        """Retention every ``retention.interval_seconds`` (the first a minute after start), in a
        thread; one collector at a time does it. A failure is logged and tried again next time."""
        interval = float(self.settings.get("retention", "interval_seconds"))
        await asyncio.sleep(min(60.0, interval))
        while True:
            try:
                report = await asyncio.to_thread(
                    run_retention, self.conninfo, self.settings, trigger="schedule", stop=self._retention_stop
                )
            except Exception as exc:  # noqa: BLE001 - retention must never stop the collector
                self.metrics.retention_run("failed")
                log.error("retention run failed; will try again next interval", extra={"error": str(exc)})
            else:
                self.metrics.retention_run(
                    report.outcome, events_deleted=report.rows_deleted, partitions_dropped=len(report.partitions_dropped)
                )
            await asyncio.sleep(interval)


def describe(endpoints: Endpoints, database: str, catalogs: CatalogSet, keys: LogKeys | None = None) -> Sequence[str]:
    """The lines ``otaudit serve`` prints: where it listens and what it loaded."""

    def addr(pair: tuple[str, int]) -> str:
        host, port = pair
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    events = sum(len(c.events) for c in catalogs.categories.values())
    assert endpoints.api is not None, "the API worker's endpoints"
    log_lines: tuple[str, ...] = ()
    if keys is not None:  # the public key only: what an auditor pins; the signing key never leaves its source
        log_lines = (
            f"  log         checkpoints of {keys.deployment}/<tenant>, signed by Ed25519 key {keys.public_key_b64}",
            f"              (key from {keys.source}; each tenant's verifier key: GET /v1/log/key)",
        )
    return (
        "otaudit collector is ready",
        f"  OTLP/gRPC   {addr(endpoints.grpc)}",
        f"  OTLP/HTTP   http://{addr(endpoints.http)}/v1/logs",
        f"  API         http://{addr(endpoints.api)}  (web page /ui/, /v1/..., /openapi.json, /healthz, /readyz, /metrics)",
        f"  database    {database}",
        f"  catalogs    {plural(len(catalogs.categories), 'category', 'categories')}, {plural(events, 'event')}",
        *log_lines,
        "Send events with any OTLP exporter; stop with Ctrl-C (or SIGTERM).",
    )
