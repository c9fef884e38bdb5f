"""The streams of a running collector: the key of their secrets, the streams declared in the
configuration kept in step with it, and the delivery loop (``runner.py``) when
``streams.enabled``. ``app.py`` makes one at start and asks it for the API's context and for
its delivery task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from otaudit_collector.api.streams import StreamsContext
from otaudit_collector.config import ConfigError, Settings
from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.plans import plans_from
from otaudit_collector.core.streams import BadStream, DeclaredSpec, decrypt_secret, encrypt_secret, parse_declared, secrets_key
from otaudit_collector.metrics import Metrics
from otaudit_collector.selfaudit import SelfAudit
from otaudit_collector.storage import streams as store
from otaudit_collector.streams.runner import RunnerSettings, StreamRunner

__all__ = ["DECLARED_SYNC_SECONDS", "Streams"]

log = logging.getLogger("otaudit")

DECLARED_SYNC_SECONDS = 60.0
"""How often the declared streams for every tenant are made for tenants that appeared since."""


class Streams:
    """Made before the collector starts anything, so a bad ``streams.declared`` stops the start."""

    def __init__(
        self, settings: Settings, conninfo: str, metrics: Metrics, catalogs: Callable[[], CatalogSet | None] = lambda: None
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.metrics = metrics
        self.catalogs = catalogs
        self.declared = _declared(settings)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"  # whose lease a stream's is
        self._pool: AsyncConnectionPool[Any] | None = None
        self._ctx: StreamsContext | None = None

    async def open(self, pool: AsyncConnectionPool[Any], audit: SelfAudit) -> StreamsContext:
        """The API routes' context; makes the declared streams (and deletes those no longer declared)."""
        self._pool = pool
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT secret FROM server_keys WHERE name = 'stream_secrets'")
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError("the database has no key for streams' secrets: run 'otaudit migrate'")
        self._ctx = StreamsContext(secrets_key=secrets_key(bytes(row[0]), self.settings.token_pepper), audit=audit)
        await self._sync_declared(self._ctx.secrets_key, self.declared)
        return self._ctx

    async def deliver(self) -> None:
        """The delivery loop, and every minute the declared streams of tenants that appeared since."""
        assert self._ctx is not None, "open() first"
        runner = StreamRunner(self._runner_settings(self._ctx), wake=self._ctx.wake)
        if not any(item.tenants is None for item in self.declared):
            await runner.run()
            return
        task = asyncio.create_task(runner.run(), name="otaudit-stream-runner")
        try:
            while True:
                await asyncio.sleep(DECLARED_SYNC_SECONDS)
                try:
                    await self._sync_declared(self._ctx.secrets_key, self.declared)
                except Exception as exc:  # noqa: BLE001 - tried again next time
                    log.warning("could not make the declared streams of new tenants; will try again", extra={"error": str(exc)})
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _runner_settings(self, ctx: StreamsContext) -> RunnerSettings:
        config = self.settings.get("streams")
        return RunnerSettings(
            conninfo=self.conninfo,
            secrets_key=ctx.secrets_key,
            plans=plans_from(self.settings.raw["plans"]),
            default_plan=self.settings.raw["default_plan"],
            owner=self.owner,
            max_active=int(config["max_active"]),
            batch_records=int(config["batch_records"]),
            poll_seconds=float(config["poll_seconds"]),
            lease_seconds=float(config["lease_seconds"]),
            backoff_max_seconds=float(config["backoff_max_seconds"]),
            metrics=self.metrics,
            catalogs=self.catalogs,
        )

    async def _sync_declared(self, key: bytes, declared: Sequence[DeclaredSpec]) -> None:
        """Make the table's declared streams those of the configuration, for every tenant they name
        (with ``tenants: "*"``, every tenant known now: called again as tenants appear)."""
        assert self._pool is not None

        def opened(tenant: str, stream_id: str, stored: bytes) -> str | None:
            try:
                return decrypt_secret(key, tenant, stream_id, stored)
            except Exception:  # noqa: BLE001 - unreadable: stored again from the configuration
                return None

        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('otaudit streams declared'))")  # one replica at a time
            known = await store.tenants(conn)
            wanted = [
                store.Declared(tenant, item.spec, item.secret)
                for item in declared
                for tenant in (item.tenants if item.tenants is not None else known)
            ]
            problems = await store.sync_declared(
                conn, wanted, seal=lambda t, i, secret: encrypt_secret(key, t, i, secret), opened=opened
            )
        for problem in problems:
            log.error("declared stream not made: %s", problem)


def _declared(settings: Settings) -> list[DeclaredSpec]:
    """``streams.declared``, checked like the API's streams: a bad one is a configuration error.
    A ``ca_file`` is read here, once, into the stream's ``ca`` (its PEM text)."""
    items = []
    for n, given in enumerate(settings.get("streams", "declared")):
        item = {k: v for k, v in given.items() if k != "ca_file"}
        if "ca_file" in given:
            try:
                item["ca"] = Path(given["ca_file"]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError("streams.declared", [f"streams.declared[{n}].ca_file: cannot be read: {exc}"]) from None
        items.append(item)
    try:
        return parse_declared(items, environ=os.environ, now=datetime.now(UTC))
    except BadStream as exc:
        raise ConfigError("streams.declared", [str(exc)]) from None
