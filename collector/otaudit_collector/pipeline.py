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
from otaudit_collector.receivers.admission import ByteBudget, Slots, Ticket
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
        max_inflight_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], int] = time.time_ns,
        metrics: Metrics | None = None,
        seal: bool = True,
    ) -> None:
        self._writer = writer
        self._seal = seal  # integrity.enabled: each event gets its seals and leaf hash
        self.metrics = metrics if metrics is not None else Metrics()  # the receivers count their requests in it too
        self._catalogs = catalogs
        self._policy = policy
        self._clock = clock
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="otaudit-prepare")
        self.retry_after_seconds = retry_after_seconds
        self._slots = Slots(max_concurrent_requests)
        self.bytes = ByteBudget(max_inflight_bytes)
        """Memory of request bodies in flight (``ingest.max_inflight_bytes``), charged by the receivers
        that hold bodies before ``export``: each admitted request's ``Ticket.bytes``."""

    @property
    def in_flight(self) -> int:
        """Requests admitted now (``ingest.max_concurrent_requests`` at most)."""
        return self._slots.in_use

    @in_flight.setter
    def in_flight(self, value: int) -> None:  # a test saturates the collector with it
        self._slots.in_use = value

    def admit(self) -> Ticket:
        """Admit one request: its concurrency slot, and an empty charge against ``bytes``.

        A receiver takes it *before* reading the body, so that a saturated collector refuses
        the request (``Overloaded``, retryable) without holding its bytes; it then passes the
        ticket to ``export`` (the limit is counted once) and releases it with ``with``.
        """
        slot = self._slots.take()
        if slot is None:
            raise Overloaded(
                f"{self._slots.in_use} requests are being processed (limit {self._slots.limit}): retry later",
                retry_after_seconds=self.retry_after_seconds,
            )
        return Ticket(slot, self.bytes.charge())

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)

    @property
    def policy(self) -> Policy:
        """What this ingestor accepts: the API bounds its own audit events to it."""
        return self._policy

    def rejection(self, body: bytes, *, as_json: bool = False) -> str | None:
        """Why ``export`` would reject a record of ``body`` (None: it would store them all), storing nothing:
        the API asks before a read whose audit event must be storable."""
        received_ns = self._clock()
        prepared = self._prepare(body, as_json, received_ns, self._catalogs(), None)
        return (prepared.partial_success_message() or "rejected") if prepared.rejected else None

    def _prepare(
        self, body: bytes, as_json: bool, received_ns: int, catalogs: CatalogSet, tenant: str | None, token_id: str | None = None
    ) -> Prepared:
        policy = self._policy if tenant is None else dataclasses.replace(self._policy, default_tenant=tenant)
        depth, most = policy.max_depth, policy.max_records_per_request
        decoded = decode_json(body, depth, most) if as_json else decode_protobuf(body, depth, most)
        candidates = normalize_request(decoded, received_ns, policy)
        return prepare(
            candidates,
            catalogs,
            received_ns,
            tenant=tenant,
            token_id=token_id,
            max_rejects=policy.max_rejects_per_request,
            seal=self._seal,
        )

    async def export(
        self,
        body: bytes,
        *,
        as_json: bool = False,
        principal: Principal | None = None,
        transport: str = "internal",
        ticket: Ticket | None = None,
    ) -> ExportResult:
        """Decode, validate and store one request body; answer only once it is committed.

        ``principal``: the request's ingest token. Its tenant is given to records that name
        none, and records naming another tenant are refused. ``transport`` (metrics.TRANSPORTS):
        the receiver the request came through. ``ticket``: the one ``admit`` gave this request,
        still held (the concurrency limit is then not counted twice); without it, one is taken here.
        """
        if ticket is not None and not ticket.released:
            return await self._export(body, as_json, principal, transport)
        with self.admit():
            return await self._export(body, as_json, principal, transport)

    async def _export(self, body: bytes, as_json: bool, principal: Principal | None, transport: str) -> ExportResult:
        received_ns = self._clock()
        catalogs = self._catalogs()  # the set in force when the request arrived, even if a reload swaps it
        tenant = principal.tenant if principal is not None else None
        token_id = principal.token_id if principal is not None else None
        if len(body) >= OFFLOAD_BYTES:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(
                self._workers, self._prepare, body, as_json, received_ns, catalogs, tenant, token_id
            )
        else:
            prepared = self._prepare(body, as_json, received_ns, catalogs, tenant, token_id)
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
