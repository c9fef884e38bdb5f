"""The delivery loop of streams: any collector replica delivers any stream, one at a time each.

``StreamRunner.run`` claims due streams (``storage.streams.claim``: a lease, taken over once it
runs out) up to ``max_active`` at once, and delivers each in a task of its own:

1. read the next batch after the cursor: the stream's filter AND the tenant's plan as it is now
   (categories, query window), ``seq`` order;
2. hand it to the destination; when it arrives, move the cursor past it (only while this
   collector still holds the lease) and count it;
3. when it does not, note the receiver's words, wait a capped exponential backoff (at least
   what the receiver asked) and send the SAME batch again: a stream never skips.

Every turn renews the lease and looks at the stream again: paused, deleted, changed (a new
version: start over from the cursor with the new filter or destination) or taken over ends
the task, which gives the lease back. Delivery is at-least-once: a batch whose answer was lost
is sent again, and each record carries its event id and ``seq`` so the receiver drops repeats.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.plans import Plan, clamp_since
from otaudit_collector.core.query import parse_filters, where_sql
from otaudit_collector.core.streams import SecretUnreadable, backoff_seconds, decrypt_secret, delivery_categories
from otaudit_collector.core.webhook_signature import secret_bytes
from otaudit_collector.metrics import Metrics
from otaudit_collector.storage import streams as store
from otaudit_collector.storage.kept import KeptConnection
from otaudit_collector.streams.formats import render
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record, Transport

__all__ = ["RunnerSettings", "StreamRunner", "make_transport"]

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """The ``streams`` section of the configuration, and what delivery needs from the rest."""

    conninfo: str
    secrets_key: bytes
    plans: Mapping[str, Plan]
    default_plan: str
    owner: str
    max_active: int = 8
    batch_records: int = 500
    poll_seconds: float = 1.0
    lease_seconds: float = 30.0
    backoff_max_seconds: float = 300.0
    metrics: Metrics = field(default_factory=Metrics)
    catalogs: Callable[[], CatalogSet | None] = lambda: None
    """The catalogs in force (a stream of format ``ocsf`` reads its events' OCSF classes there)."""


class _Stop(Exception):
    """The stream is no longer this collector's to deliver as it was: paused, deleted, changed or taken over."""


CLOSE_WAIT_SECONDS = 5.0
_READER_CONNECTION: dict[str, Any] = {  # unless the database URL sets them
    "connect_timeout": 10,
    # A read blocks its thread until the server answers; on a TCP connection to a server that
    # vanished without a reset, these end it within about 25 s rather than the system's 2 hours
    # (a process exits only once its threads have; libpq ignores them on Unix sockets).
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class _Reader:
    """Reads a stream's batches on a blocking connection of its own, in a worker thread
    (``storage.streams.read_batch`` says why), and reads the batch after the one being sent
    while that one is sent, so that PostgreSQL reads while the destination writes.

    What was read ahead is used only when the next read asks for exactly it (the same cursor,
    condition and non-time parameters: a plan change since is read again); anything else, or
    any error, reads again. A read cannot be stopped halfway: one no longer wanted finishes in
    its thread and is dropped, and the lock keeps the next one off the connection until then."""

    def __init__(self, conninfo: str, limit: int, executor: ThreadPoolExecutor) -> None:
        self._conninfo = conninfo
        given = conninfo_to_dict(conninfo)  # what the database URL sets stays as set
        self._options: dict[str, Any] = {
            "autocommit": True,
            "application_name": "otaudit-stream-read",
            **{key: value for key, value in _READER_CONNECTION.items() if key not in given},
        }
        self._limit = limit
        self._executor = executor
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._ahead: asyncio.Future[tuple[list[Record], int]] | None = None
        self._key: tuple[Any, ...] | None = None

    @staticmethod
    def _key_of(after: int, where: str, params: list[Any]) -> tuple[Any, ...]:
        return (after, where, *(p if not isinstance(p, dt.datetime) else None for p in params))

    def _read_now(self, tenant: str, after: int, where: str, params: list[Any]) -> tuple[list[Record], int]:
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self._conninfo, **self._options)
            return store.read_batch(self._conn, tenant, after, where, params, self._limit)

    def _submit(self, tenant: str, after: int, where: str, params: list[Any]) -> asyncio.Future[tuple[list[Record], int]]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._read_now, tenant, after, where, params)

    async def read(self, tenant: str, after: int, where: str, params: list[Any]) -> tuple[list[Record], int]:
        """The batch after ``after``: the one read ahead when it is exactly this one, else read now."""
        ahead, key = self._ahead, self._key
        self._ahead = self._key = None
        if ahead is not None:
            if key == self._key_of(after, where, params):
                try:
                    return await ahead
                except (psycopg.Error, OSError):
                    pass  # read again below, on a connection made again if that one broke
            else:
                self._drop(ahead)
        return await self._submit(tenant, after, where, params)

    def read_ahead(self, tenant: str, after: int, where: str, params: list[Any]) -> None:
        """Start reading the batch after ``after`` (the last seq of the batch being sent)."""
        self.cancel()
        self._key = self._key_of(after, where, params)
        self._ahead = self._submit(tenant, after, where, params)

    @staticmethod
    def _drop(ahead: asyncio.Future[Any]) -> None:
        ahead.cancel()  # its thread finishes; its result or error is never looked at

    def cancel(self) -> None:
        if self._ahead is not None:
            self._drop(self._ahead)
        self._ahead = self._key = None

    def _close_now(self) -> None:
        with self._lock:  # after the read in flight, if any
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def close(self) -> None:
        """Close the connection after the read in flight, if any; waits for that at most
        ``CLOSE_WAIT_SECONDS`` (a read stuck on a server that went away ends with the TCP
        keepalives, and the connection closes then, in its thread)."""
        self.cancel()
        closing = asyncio.get_running_loop().run_in_executor(self._executor, self._close_now)
        try:
            await asyncio.wait_for(asyncio.shield(closing), CLOSE_WAIT_SECONDS)
        except TimeoutError:
            log.warning("stream read still in flight after %.0f s; its connection closes when it ends", CLOSE_WAIT_SECONDS)


def make_transport(row: Mapping[str, Any], key: bytes) -> Transport:
    """The destination of a stored stream, its secret decrypted in memory only."""
    settings = row["settings"]
    if row["kind"] == "webhook":
        from otaudit_collector.streams.webhook import WebhookTransport

        if row["secret"] is None:
            raise SecretUnreadable("the webhook stream has no secret; delete it and make it again")
        secret = decrypt_secret(key, row["tenant"], row["id"], bytes(row["secret"]))
        return WebhookTransport(
            settings["url"],
            secret_bytes(secret),
            stream_id=row["id"],
            timeout_seconds=float(settings.get("timeout_seconds", 10.0)),
        )
    if row["kind"] == "otlp":
        from otaudit_collector.streams.otlp import OtlpTransport

        headers = {}
        if row["secret"] is not None:  # the receiver's credential, e.g. "Bearer otaudit_..." for another otaudit
            headers[settings.get("auth_header", "Authorization")] = decrypt_secret(
                key, row["tenant"], row["id"], bytes(row["secret"])
            )
        return OtlpTransport(
            settings["endpoint"],
            protocol=settings.get("protocol", "http"),
            headers=headers,
            timeout_seconds=float(settings.get("timeout_seconds", 10.0)),
            ca_pem=settings.get("ca"),
        )
    if row["kind"] == "syslog":
        from otaudit_collector.streams.syslog import SyslogTransport

        optional = {key: settings[key] for key in ("server_name", "hostname", "facility", "sd_id") if key in settings}
        return SyslogTransport(
            settings["host"],
            int(settings["port"]),
            tls=bool(settings.get("tls", False)),
            ca_pem=settings.get("ca"),
            timeout_seconds=float(settings.get("timeout_seconds", 10.0)),
            **optional,
        )
    from otaudit_collector.streams.files import FileTransport

    options: dict[str, Any] = {}
    if "rotate_seconds" in settings:
        options["rotate_seconds"] = float(settings["rotate_seconds"])
    if "rotate_bytes" in settings:
        options["rotate_bytes"] = int(settings["rotate_bytes"])
    return FileTransport(Path(settings["folder"]), tenant=row["tenant"], stream_id=row["id"], **options)


class StreamRunner:
    """Claims and delivers streams on this collector."""

    def __init__(self, settings: RunnerSettings, *, wake: asyncio.Event | None = None) -> None:
        self.s = settings
        self.wake = wake or asyncio.Event()
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._claims = KeptConnection(settings.conninfo, "otaudit-stream-claim")  # polled every poll_seconds

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.claim_due()
                except psycopg.OperationalError as exc:
                    log.warning("streams: the database is unreachable; trying again", extra={"error": str(exc)})
                except Exception:
                    log.exception("streams: unexpected error while claiming; going on")
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), self.s.poll_seconds)
                except TimeoutError:
                    pass
        finally:
            await self.stop()

    async def stop(self) -> None:
        """End every delivery (each gives its lease back, so another replica takes over at once)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        await self._claims.close()

    @property
    def _readers(self) -> ThreadPoolExecutor:
        """The threads streams read in: one connection each at a time (a dropped read-ahead may
        still hold one while the next read waits: twice as many as streams delivering)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2 * self.s.max_active, thread_name_prefix="otaudit-stream-read")
        return self._executor

    async def claim_due(self) -> int:
        """Claim due streams while fewer than ``max_active`` run here; returns how many were claimed."""
        for key in [k for k, t in self._tasks.items() if t.done()]:
            del self._tasks[key]
        claimed = 0
        if len(self._tasks) >= self.s.max_active:
            return 0
        conn = await self._claims.get()
        while len(self._tasks) < self.s.max_active:
            row = await store.claim(conn, self.s.owner, self.s.lease_seconds, exclude=list(self._tasks))
            if row is None:
                break
            key = (row["tenant"], row["id"])
            self._tasks[key] = asyncio.create_task(self._deliver(row), name=f"otaudit-stream-{row['id']}")
            claimed += 1
        return claimed

    # -- one stream ---------------------------------------------------------------------

    async def _deliver(self, row: dict[str, Any]) -> None:
        tenant, stream_id = row["tenant"], row["id"]
        metrics = self.s.metrics
        transport: Transport | None = None
        try:
            async with await psycopg.AsyncConnection.connect(self.s.conninfo, autocommit=True) as conn:
                try:
                    log.info("stream %s: delivering from seq %d", stream_id, row["cursor"] + 1, extra={"tenant": tenant})
                    metrics.stream_status(tenant, stream_id, "delivering")
                    metrics.stream_cursor.labels(tenant, stream_id).set(row["cursor"])
                    try:
                        transport = make_transport(row, self.s.secrets_key)
                    except (SecretUnreadable, ValueError, OSError) as exc:
                        await self._failed(conn, row, None, str(exc), row["attempts"] + 1)
                        return
                    await self._loop(conn, row, transport)
                except _Stop:
                    pass
                finally:
                    await asyncio.shield(self._release(conn, tenant, stream_id))
        except psycopg.OperationalError as exc:
            log.warning(
                "stream %s: the database went away; the lease runs out and delivery resumes", stream_id, extra={"error": str(exc)}
            )
        except Exception:
            log.exception("stream %s: delivery stopped by an unexpected error; it is claimed again", stream_id)
        finally:
            if transport is not None:
                try:
                    await transport.close()
                except Exception:
                    log.exception("stream %s: closing its destination failed", stream_id)
            metrics.forget_stream(tenant, stream_id)

    async def _release(self, conn: Conn, tenant: str, stream_id: str) -> None:
        try:
            await store.release(conn, tenant, stream_id, self.s.owner)
        except psycopg.Error as exc:
            log.warning("stream %s: could not give its lease back; it runs out by itself", stream_id, extra={"error": str(exc)})

    async def _loop(self, conn: Conn, row: dict[str, Any], transport: Transport) -> None:
        reader = _Reader(self.s.conninfo, self.s.batch_records, self._readers)
        try:
            await self._batches(conn, row, transport, reader)
        finally:
            await asyncio.shield(reader.close())

    async def _batches(self, conn: Conn, row: dict[str, Any], transport: Transport, reader: _Reader) -> None:
        tenant, stream_id, version = row["tenant"], row["id"], row["version"]
        cursor: int = row["cursor"]
        attempts: int = row["attempts"]
        fmt: str = row["format"]
        metrics = self.s.metrics
        pending: tuple[list[Record], int] | None = None
        while True:
            await self._renew(conn, tenant, stream_id, version)
            if pending is None:
                plan = await self._plan(conn, tenant)
                if plan is None:
                    await self._failed(conn, row, None, await self._no_plan(conn, tenant), attempts + 1)
                    attempts += 1
                    continue
                where, params = self._where(tenant, row["filter"], plan)
                records, upto = await reader.read(tenant, cursor, where, params)
                if len(records) == self.s.batch_records:  # more to come: read it while this one is sent
                    reader.read_ahead(tenant, upto, where, params)
                try:
                    records = list(render(records, fmt, self.s.catalogs))
                except ValueError as exc:  # cannot happen to what the database wrote; never skipped if it does
                    attempts += 1
                    await self._failed(conn, row, None, str(exc), attempts)
                    continue
                if not records:
                    if upto > cursor:  # events the filter or the plan leave out: passed over
                        await self._advance(conn, row, cursor, upto, 0)
                        cursor = upto
                    await self._report_lag(conn, tenant, stream_id, cursor)
                    await asyncio.sleep(self.s.poll_seconds)
                    continue
                pending = (records, upto)
            records, upto = pending
            try:
                await self._send(conn, transport, Batch(tenant, stream_id, records, fmt), version)
            except (asyncio.CancelledError, _Stop, psycopg.Error):
                raise
            except DeliveryFailed as exc:
                attempts += 1
                await self._failed(conn, row, exc.retry_after, exc.message, attempts)
                continue
            except Exception as exc:  # noqa: BLE001 - a destination's own fault (a full disk): reported, retried
                attempts += 1
                await self._failed(conn, row, None, f"{type(exc).__name__}: {exc}", attempts)
                continue
            await self._advance(conn, row, cursor, upto, len(records))
            cursor, attempts, pending = upto, 0, None
            metrics.stream_delivered.labels(tenant, stream_id).inc(len(records))
            metrics.stream_last_success.labels(tenant, stream_id).set(time.time())
            metrics.stream_status(tenant, stream_id, "delivering")
            await self._report_lag(conn, tenant, stream_id, cursor)

    async def _send(self, conn: Conn, transport: Transport, batch: Batch, version: int) -> None:
        """``transport.send``, renewing the lease while it runs (a slow receiver must not let another
        collector take the stream over and send the same batch meanwhile)."""
        sending = asyncio.ensure_future(transport.send(batch))
        try:
            while True:
                done, _ = await asyncio.wait({sending}, timeout=self.s.lease_seconds / 3)
                if done:
                    sending.result()
                    return
                await self._renew(conn, batch.tenant, batch.stream_id, version, lease_only=True)  # a pause waits for the answer
        finally:
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)

    async def _renew(self, conn: Conn, tenant: str, stream_id: str, version: int, *, lease_only: bool = False) -> None:
        now = await store.renew(conn, tenant, stream_id, self.s.owner, self.s.lease_seconds)
        if now is None:
            log.warning("stream %s: another collector took it over, or it was deleted", stream_id, extra={"tenant": tenant})
            raise _Stop
        if not lease_only and (now["state"] != "active" or now["version"] != version):
            raise _Stop

    async def _advance(self, conn: Conn, row: dict[str, Any], old: int, new: int, delivered: int) -> None:
        moved = await store.advance(
            conn,
            row["tenant"],
            row["id"],
            self.s.owner,
            old=old,
            new=new,
            delivered=delivered,
            lease_seconds=self.s.lease_seconds,
        )
        if not moved:  # the lease was lost: the cursor is the new holder's to move
            log.warning("stream %s: lost its lease; the cursor stays for the collector now delivering it", row["id"])
            raise _Stop
        self.s.metrics.stream_cursor.labels(row["tenant"], row["id"]).set(new)

    async def _failed(self, conn: Conn, row: dict[str, Any], retry_after: float | None, message: str, attempts: int) -> None:
        """Note the failure, then wait the backoff out (renewing the lease, watching for a pause or a change)."""
        tenant, stream_id = row["tenant"], row["id"]
        delay = backoff_seconds(attempts, max_seconds=self.s.backoff_max_seconds, retry_after=retry_after)
        noted = await store.record_failure(conn, tenant, stream_id, self.s.owner, message, delay)
        if noted is None:
            raise _Stop
        self.s.metrics.stream_failed.labels(tenant, stream_id).inc()
        self.s.metrics.stream_status(tenant, stream_id, "retrying")
        log.warning(
            "stream %s: delivery failed (attempt %d); retrying in %.1f s: %s",
            stream_id,
            attempts,
            delay,
            message,
            extra={"tenant": tenant},
        )
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, self.s.lease_seconds / 3))
            await self._renew(conn, tenant, stream_id, row["version"])

    async def _plan(self, conn: Conn, tenant: str) -> Plan | None:
        name = await store.tenant_plan(conn, tenant) or self.s.default_plan
        return self.s.plans.get(name)

    async def _no_plan(self, conn: Conn, tenant: str) -> str:
        name = await store.tenant_plan(conn, tenant) or self.s.default_plan
        return f"the tenant's plan {name!r} is not configured; nothing is delivered (or skipped) until it is"

    def _where(self, tenant: str, terms: Mapping[str, list[str]], plan: Plan) -> tuple[str, list[Any]]:
        """The stream's filter within what the plan reads now: its categories and its query window."""
        filters = parse_filters(terms)
        categories = delivery_categories(plan, filters.categories)
        filters.since, _ = clamp_since(filters.since, plan, dt.datetime.now(dt.UTC))
        return where_sql(tenant, categories, filters)

    async def _report_lag(self, conn: Conn, tenant: str, stream_id: str, cursor: int) -> None:
        behind = await store.lag(conn, tenant, cursor)
        self.s.metrics.stream_lag_events.labels(tenant, stream_id).set(behind.events)
        self.s.metrics.stream_lag_seconds.labels(tenant, stream_id).set(behind.seconds)
