"""One OTLP export request through the collector: the path every receiver shares.

request bytes -> decode (core.otlp_proto / core.otlp_json) -> normalize (core.normalize) -> validate against catalogs and build
rows (core.prepare) -> commit (storage.writer) -> the answer. The answer exists only
after the commit: until then the client still holds its data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.errors import Overloaded
from otaudit_collector.core.normalize import Policy, normalize_request
from otaudit_collector.core.otlp_json import decode_json
from otaudit_collector.core.otlp_proto import decode_protobuf
from otaudit_collector.core.prepare import Prepared, prepare
from otaudit_collector.core.tokens import Principal
from otaudit_collector.metrics import Metrics
from otaudit_collector.storage.writer import Writer

__all__ = ["ExportResult", "Ingestor", "OFFLOAD_BYTES"]

log = logging.getLogger(__name__)

OFFLOAD_BYTES = 64 * 1024
"""Request bodies at least this large are decoded and validated on a worker thread.

The event loop then keeps driving the writer's round trips to PostgreSQL, so one batch
commits while the next is being prepared instead of the two taking turns. Smaller
bodies are prepared inline: the hop to a thread would cost more than it saves.
"""


@dataclass(frozen=True, slots=True)
class ExportResult:
    accepted: int
    rejected: int
    message: str


class Ingestor:
    """Turns decoded requests into committed events and quarantined rejects."""

    def __init__(
        self,
        *,
        writer: Writer,
        catalogs: Callable[[], CatalogSet],
        policy: Policy,
        max_concurrent_requests: int,
        retry_after_seconds: float,
        clock: Callable[[], int] = time.time_ns,
        metrics: Metrics | None = None,
    ) -> None:
        self._writer = writer
        self.metrics = metrics if metrics is not None else Metrics()  # the receivers count their requests in it too
        self._catalogs = catalogs
        self._policy = policy
        self._max_concurrent = max_concurrent_requests
        self._retry_after = retry_after_seconds
        self._clock = clock
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="otaudit-prepare")
        self.in_flight = 0

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, body: bytes, as_json: bool, received_ns: int, catalogs: CatalogSet, tenant: str | None) -> Prepared:
        policy = self._policy if tenant is None else dataclasses.replace(self._policy, default_tenant=tenant)
        depth = policy.max_depth
        decoded = decode_json(body, depth) if as_json else decode_protobuf(body, depth)
        return prepare(normalize_request(decoded, received_ns, policy), catalogs, received_ns, tenant=tenant)

    async def export(
        self, body: bytes, *, as_json: bool = False, principal: Principal | None = None, transport: str = "internal"
    ) -> ExportResult:
        """Decode, validate and store one request body; answer only once it is committed.

        ``principal``: the request's ingest token. Its tenant is given to records that name
        none, and records naming another tenant are refused. ``transport`` (metrics.TRANSPORTS):
        the receiver the request came through.
        """
        if self.in_flight >= self._max_concurrent:
            raise Overloaded(
                f"{self.in_flight} requests are being processed (limit {self._max_concurrent}): retry later",
                retry_after_seconds=self._retry_after,
            )
        self.in_flight += 1
        try:
            received_ns = self._clock()
            catalogs = self._catalogs()  # the set in force when the request arrived, even if a reload swaps it
            tenant = principal.tenant if principal is not None else None
            if len(body) >= OFFLOAD_BYTES:
                loop = asyncio.get_running_loop()
                prepared = await loop.run_in_executor(self._workers, self._prepare, body, as_json, received_ns, catalogs, tenant)
            else:
                prepared = self._prepare(body, as_json, received_ns, catalogs, tenant)
            self.metrics.records_received.labels(transport).inc(len(prepared.lines) + prepared.rejected)
            if prepared.refused and principal is not None:
                log.warning(
                    "records refused: an ingest token may write only its own tenant",
                    extra={
                        "token_id": principal.token_id,
                        "tenant": principal.tenant,
                        "refused": prepared.refused,
                    },
                )
            if prepared.lines or prepared.rejects:
                await self._writer.submit(prepared)
            self.metrics.count_rejects(prepared.reasons)  # once they are answered: stored in quarantine, or refused
            return ExportResult(len(prepared.lines), prepared.rejected, prepared.partial_success_message())
        finally:
            self.in_flight -= 1
