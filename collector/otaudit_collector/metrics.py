"""The collector's own metrics, served as ``GET /metrics`` on the API port (Prometheus text format).

Each ``Collector`` owns one ``Metrics`` and with it its own ``CollectorRegistry``, never the
process-wide default one: several collectors in one process (the tests do that) keep their
counts apart. The pipeline, the writer, the receivers, the export routes and the retention
loop are handed the same object, and each counts what it knows when it knows it: a record
is counted as stored once its transaction has committed, not before.

Label values come from small fixed sets (``TRANSPORTS``, ``REQUEST_OUTCOMES``,
``core.prepare.REJECT_REASONS``, ...) or from the categories of the loaded catalogs: never
an event id, a tenant, a token, an attribute's value or an error's text. The one exception
is the streams' metrics: each stream is labeled with its tenant and id (an operator watches
each one), and only the collector delivering a stream reports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from otaudit_collector.core.errors import IngestError

__all__ = [
    "CONTENT_TYPE",
    "EXPORT_JOB_STATES",
    "EXPORT_STREAM_OUTCOMES",
    "Metrics",
    "PoolStats",
    "REPLICA_SERVERS",
    "REQUEST_OUTCOMES",
    "ReplicaFigures",
    "RETENTION_OUTCOMES",
    "STREAM_STATES",
    "RequestTimer",
    "TRANSPORTS",
    "UNKNOWN_CATEGORY",
    "merge_expositions",
    "request_outcome",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of ``/metrics``: the Prometheus text format."""

TRANSPORTS = ("grpc", "http", "internal")
"""Where a request came from: an OTLP receiver, or the collector itself (its API's audit events)."""

REQUEST_OUTCOMES = ("ok", "partial", "invalid", "refused", "unavailable", "overloaded", "internal_error", "cancelled")
"""How an OTLP request was answered: every record stored, some rejected (``partial_success``),
undecodable or too large (400/413/415, INVALID_ARGUMENT), no valid ingest token (401/403),
database away (503, UNAVAILABLE), saturated (429, UNAVAILABLE), the collector failed, the
client went away."""

EXPORT_STREAM_OUTCOMES = ("success", "failure", "busy", "unavailable")
RETENTION_OUTCOMES = ("done", "stopped", "skipped", "failed")
EXPORT_JOB_STATES = ("done", "failed")
STREAM_STATES = ("delivering", "retrying")
"""A stream this collector delivers: up to date or sending (delivering), or failing and backing off (retrying)."""
UNKNOWN_CATEGORY = "unknown"
"""The category label of a rejected record that names no loaded category."""

PoolStats = Callable[[], Mapping[str, int]]
"""A connection pool's ``get_stats()``: psycopg_pool's keys ``pool_max``, ``pool_size``
(connections open), ``pool_available`` (idle) and ``requests_waiting``."""

REPLICA_SERVERS = ("replica", "primary")
"""Where a lag-tolerant read (event pages, search, one event) was answered (database.read_url)."""


@dataclass(frozen=True, slots=True)
class ReplicaFigures:
    """The read replica as last measured (storage/replica.py ``ReadReplica.figures``)."""

    up: bool  # it answers as a standby
    in_use: bool  # lag-tolerant reads go to it
    lag_seconds: float  # its replay lag; NaN when not known (down, not a standby)
    reads: Mapping[str, int]  # lag-tolerant reads answered, by REPLICA_SERVERS

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RECORDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)


def request_outcome(err: IngestError) -> str:
    """The ``outcome`` label of a request answered with ``err``, from its status (core.errors)."""
    status = err.status
    if status.http_status in (401, 403):
        return "refused"
    if status.retryable:
        return "overloaded" if status.http_status == 429 else "unavailable"
    if 400 <= status.http_status < 500:
        return "invalid"
    return "internal_error"


class RequestTimer:
    """One OTLP request: in flight while inside ``with``, then observed with its outcome.

    The outcome is ``internal_error`` unless the handler says otherwise (``answered`` or
    ``failed``), or ``cancelled`` when the request was cancelled.
    """

    __slots__ = ("_metrics", "_started", "_transport", "outcome")

    def __init__(self, metrics: Metrics, transport: str) -> None:
        self._metrics = metrics
        self._transport = transport
        self._started = 0.0
        self.outcome = ""

    def answered(self, rejected: int) -> None:
        self.outcome = "partial" if rejected else "ok"

    def failed(self, err: IngestError) -> None:
        self.outcome = request_outcome(err)

    def __enter__(self) -> RequestTimer:
        self._started = time.perf_counter()
        self._metrics.requests_in_flight.labels(self._transport).inc()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        metrics = self._metrics
        metrics.requests_in_flight.labels(self._transport).dec()
        outcome = self.outcome or ("cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error")
        metrics.request_duration.labels(self._transport, outcome).observe(time.perf_counter() - self._started)


class _Pools(Collector):
    """Database connections, read from each pool's stats when scraped."""

    def __init__(self) -> None:
        self.sources: dict[str, PoolStats] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(self.sources)

    @staticmethod
    def _families(sources: Mapping[str, PoolStats]) -> list[Metric]:
        connections = GaugeMetricFamily(
            "otaudit_db_connections", "Open database connections by pool, used or idle.", labels=["pool", "state"]
        )
        maximum = GaugeMetricFamily("otaudit_db_connections_max", "The most connections a pool opens.", labels=["pool"])
        waiting = GaugeMetricFamily(
            "otaudit_db_connection_requests_waiting",
            "Requests waiting for a pool's connection (the writer's: requests waiting for their commit).",
            labels=["pool"],
        )
        for name, source in sorted(sources.items()):
            stats = source()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            connections.add_metric([name, "used"], max(size - idle, 0))
            connections.add_metric([name, "idle"], idle)
            maximum.add_metric([name], stats.get("pool_max", 0))
            waiting.add_metric([name], stats.get("requests_waiting", 0))
        return [connections, maximum, waiting]


class _Replica(Collector):
    """The read replica (``database.read_url``), read when scraped; no series without one."""

    def __init__(self) -> None:
        self.source: Callable[[], ReplicaFigures] | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return []
        figures = self.source()
        up = GaugeMetricFamily("otaudit_replica_up", "1 while database.read_url answers as a streaming standby.")
        up.add_metric([], 1 if figures.up else 0)
        in_use = GaugeMetricFamily(
            "otaudit_replica_in_use",
            "1 while event pages and search read from the replica; 0 while they fall back to the primary"
            " (replica down, not a standby, or lagging more than database.max_replica_lag_seconds).",
        )
        in_use.add_metric([], 1 if figures.in_use else 0)
        lag = GaugeMetricFamily(
            "otaudit_replica_lag_seconds", "The replica's replay lag behind the primary, as last measured; NaN when not known."
        )
        lag.add_metric([], figures.lag_seconds)
        reads = CounterMetricFamily(
            "otaudit_replica_reads",
            "Lag-tolerant reads (event pages, search, one event) by the server that answered them: replica or primary.",
            labels=["server"],
        )
        for server in REPLICA_SERVERS:
            reads.add_metric([server], figures.reads.get(server, 0))
        return [up, in_use, lag, reads]


class Metrics:
    """The instruments of one collector, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        # -- ingest --------------------------------------------------------------------
        self.records_received = Counter(
            "otaudit_records_received",
            "Records in the OTLP requests the collector could decode, by transport (internal: the API's own audit events).",
            ["transport"],
            registry=r,
        )
        self.records_accepted = Counter(
            "otaudit_records_accepted", "Records stored as new events (counted when their transaction commits).", registry=r
        )
        self.records_duplicates = Counter(
            "otaudit_records_duplicates",
            "Records not stored again because their event was already stored (a retried request), answered as accepted.",
            registry=r,
        )
        self.records_rejected = Counter(
            "otaudit_records_rejected",
            "Records rejected in partial_success, by catalog category (or 'unknown') and reason.",
            ["category", "reason"],
            registry=r,
        )
        self.records_quarantined = Counter(
            "otaudit_records_quarantined",
            "Rejected records written to the rejects quarantine (all rejects but tenant_mismatch).",
            registry=r,
        )
        self.request_duration = Histogram(
            "otaudit_request_duration_seconds",
            "OTLP export requests, from arrival to answer (after the commit), by transport and outcome.",
            ["transport", "outcome"],
            buckets=_SECONDS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "otaudit_requests_in_flight", "OTLP export requests being processed, by transport.", ["transport"], registry=r
        )
        self.queued_records = Gauge(
            "otaudit_queued_records", "Records waiting for the writer to commit them (ingest.max_pending_records).", registry=r
        )
        self.batch_commit_duration = Histogram(
            "otaudit_batch_commit_duration_seconds",
            "Committed group-commit transactions: time to make a batch durable, retries included.",
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "otaudit_batch_size_records",
            "Records (events and rejects) per committed group-commit transaction.",
            buckets=_RECORDS,
            registry=r,
        )
        self._pools = _Pools()
        r.register(self._pools)
        self._replica = _Replica()
        r.register(self._replica)

        # -- exports -------------------------------------------------------------------
        self.export_jobs_created = Counter("otaudit_export_jobs_created", "Export jobs created (POST /v1/exports).", registry=r)
        self.export_jobs_finished = Counter(
            "otaudit_export_jobs_finished", "Export jobs this collector ran to an end, by state.", ["state"], registry=r
        )
        self.export_jobs_running = Gauge("otaudit_export_jobs_running", "Export jobs this collector is running.", registry=r)
        self.export_rows = Counter(
            "otaudit_export_rows",
            "Events exported by finished export jobs (kind job) and complete streamed exports (kind stream).",
            ["kind"],
            registry=r,
        )
        self.export_streams = Counter(
            "otaudit_export_streams",
            "Streamed exports (GET /v1/export), by outcome: success, failure (cut short), busy (429), unavailable (503).",
            ["outcome"],
            registry=r,
        )

        # -- retention -----------------------------------------------------------------
        self.retention_runs = Counter(
            "otaudit_retention_runs",
            "Scheduled retention runs, by outcome (skipped: another replica held the lock).",
            ["outcome"],
            registry=r,
        )
        self.retention_events_deleted = Counter(
            "otaudit_retention_events_deleted", "Events deleted by retention runs.", registry=r
        )
        self.retention_partitions_dropped = Counter(
            "otaudit_retention_partitions_dropped", "Monthly partitions dropped by retention runs.", registry=r
        )
        self.retention_last_run = Gauge(
            "otaudit_retention_last_run_timestamp_seconds",
            "When this collector's last retention run (done or stopped) ended, in Unix seconds.",
            registry=r,
        )

        # -- streams (labeled by tenant and stream id; only while this collector delivers the stream) --
        stream = ["tenant", "stream"]
        self.stream_state = Gauge(
            "otaudit_stream_state",
            "1 for the state of each stream this collector delivers: delivering or retrying (failing, backing off).",
            [*stream, "state"],
            registry=r,
        )
        self.stream_cursor = Gauge(
            "otaudit_stream_cursor", "The last seq a stream delivered (or passed over).", stream, registry=r
        )
        self.stream_lag_events = Gauge(
            "otaudit_stream_lag_events", "Events of the tenant committed after the stream's cursor.", stream, registry=r
        )
        self.stream_lag_seconds = Gauge(
            "otaudit_stream_lag_seconds",
            "How long ago the oldest event after the stream's cursor was received.",
            stream,
            registry=r,
        )
        self.stream_delivered = Counter(
            "otaudit_stream_delivered", "Records a stream's destination took, delivered by this collector.", stream, registry=r
        )
        self.stream_failed = Counter(
            "otaudit_stream_failed", "Delivery attempts of a stream that failed (each is retried).", stream, registry=r
        )
        self.stream_last_success = Gauge(
            "otaudit_stream_last_success_timestamp_seconds",
            "When a batch of the stream last arrived, in Unix seconds.",
            stream,
            registry=r,
        )

        for transport in TRANSPORTS:
            self.records_received.labels(transport)
        for transport in ("grpc", "http"):
            self.requests_in_flight.labels(transport)
        for state in EXPORT_JOB_STATES:
            self.export_jobs_finished.labels(state)
        for kind in ("job", "stream"):
            self.export_rows.labels(kind)
        for outcome in EXPORT_STREAM_OUTCOMES:
            self.export_streams.labels(outcome)
        for outcome in RETENTION_OUTCOMES:
            self.retention_runs.labels(outcome)

    # -- what the parts call -----------------------------------------------------------

    def request(self, transport: str) -> RequestTimer:
        """``with metrics.request("grpc") as timer:`` around one OTLP request."""
        return RequestTimer(self, transport)

    def count_rejects(self, reasons: Iterable[tuple[str | None, str]]) -> None:
        """Count rejected records: (a loaded category or None, a reason of core.prepare.REJECT_REASONS)."""
        for category, reason in reasons:
            self.records_rejected.labels(category or UNKNOWN_CATEGORY, reason).inc()

    def watch_pool(self, name: str, stats: PoolStats) -> None:
        """Report a connection pool's use as ``otaudit_db_connections{pool=name}`` and the rest."""
        self._pools.sources[name] = stats

    def watch_replica(self, figures: Callable[[], ReplicaFigures]) -> None:
        """Report the read replica as ``otaudit_replica_up``, ``_in_use``, ``_lag_seconds`` and ``_reads_total``."""
        self._replica.source = figures

    def retention_run(
        self, outcome: str, *, events_deleted: int = 0, partitions_dropped: int = 0, now: Callable[[], float] = time.time
    ) -> None:
        """Count a scheduled retention run that ended with ``outcome`` (RETENTION_OUTCOMES)."""
        self.retention_runs.labels(outcome).inc()
        self.retention_events_deleted.inc(events_deleted)
        self.retention_partitions_dropped.inc(partitions_dropped)
        if outcome in ("done", "stopped"):
            self.retention_last_run.set(now())

    def stream_status(self, tenant: str, stream_id: str, state: str) -> None:
        """Say which of ``STREAM_STATES`` a stream this collector delivers is in."""
        for name in STREAM_STATES:
            self.stream_state.labels(tenant, stream_id, name).set(1 if name == state else 0)

    def forget_stream(self, tenant: str, stream_id: str) -> None:
        """A stream this collector no longer delivers: its series go (the collector now delivering it reports it)."""
        for gauge in (self.stream_cursor, self.stream_lag_events, self.stream_lag_seconds, self.stream_last_success):
            _remove(gauge, tenant, stream_id)
        for counter in (self.stream_delivered, self.stream_failed):
            _remove(counter, tenant, stream_id)
        for name in STREAM_STATES:
            _remove(self.stream_state, tenant, stream_id, name)

    def render(self) -> bytes:
        """The exposition of every metric, in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never set


def merge_expositions(expositions: Iterable[bytes], *, workers: int) -> bytes:
    """The expositions of a collector's worker processes as one collector's: samples with the same
    name and labels are added up (counters, histograms, in-flight and pool gauges), except the
    times: ``*_created`` keeps the earliest, ``*_timestamp_seconds`` the latest. Dashboards and
    alerts then read the same series whatever ``listen.workers`` is; ``otaudit_workers_reporting``
    says how many processes the figures include (fewer than ``workers`` while one restarts)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    reporting = 0
    for text in expositions:
        reporting += 1
        for family in text_string_to_metric_families(text.decode("utf-8")):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = merged.get(key)
                if old is None:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(old, sample.value)
                elif sample.name.endswith("_timestamp_seconds"):
                    merged[key] = max(old, sample.value)
                else:
                    merged[key] = old + sample.value
    registry = CollectorRegistry(auto_describe=False)
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    gauge = GaugeMetricFamily(
        "otaudit_workers_reporting", f"Worker processes whose figures /metrics includes, of {workers} (listen.workers)."
    )
    gauge.add_metric([], reporting)
    registry.register(_Fixed([*families.values(), gauge]))
    return generate_latest(registry)


class _Fixed(Collector):
    """Metrics gathered already: what ``merge_expositions`` hands to the exposition writer."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics
