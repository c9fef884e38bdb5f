"""``GET /metrics`` against a real collector, the stock OTel exporters and raw gRPC and HTTP
clients, and a real PostgreSQL: every count is exact and agrees with what the clients were
answered and what the database holds; the exposition needs no token, names no event, tenant,
person or token; each collector has a registry of its own; export jobs, streamed exports and
retention runs are counted. Parsed with prometheus_client's own parser."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
import psycopg
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from prometheus_client.parser import text_string_to_metric_families
from support import RunningCollector, count, good_attributes, record, request, rows, settings_for, wait_until
from test_ingest_clients import EXPORT, emit_with_stock_sdk, grpc_export
from test_retention import settings as retention_settings
from test_retention import store

from otaudit_collector.core.catalog import bundled_catalog_dirs, load_catalogs
from otaudit_collector.core.normalize import Policy, normalize_request
from otaudit_collector.core.otlp_proto import decode_protobuf
from otaudit_collector.core.prepare import MAX_EVENT_BYTES, REJECT_REASONS, prepare
from otaudit_collector.metrics import (
    EXPORT_STREAM_OUTCOMES,
    REQUEST_OUTCOMES,
    RETENTION_OUTCOMES,
    TRANSPORTS,
    UNKNOWN_CATEGORY,
    Metrics,
)
from otaudit_collector.storage import access

README = Path(__file__).resolve().parents[1] / "README.md"
NOW = time.time_ns()
CATEGORIES = set(load_catalogs(bundled_catalog_dirs()).categories)
# Every label and the values it may take: small fixed sets, or the loaded catalogs' categories.
ALLOWED: dict[str, set[str]] = {
    "transport": set(TRANSPORTS),
    "outcome": {*REQUEST_OUTCOMES, *EXPORT_STREAM_OUTCOMES, *RETENTION_OUTCOMES},
    "category": {*CATEGORIES, UNKNOWN_CATEGORY},
    "reason": set(REJECT_REASONS),
    "pool": {"api", "writer"},
    "state": {"used", "idle", "done", "failed"},
    "kind": {"job", "stream"},
}


class Scrape:
    """One ``GET /metrics``, parsed: each sample's value by its name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families:
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; the sample must be there."""
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels} in the exposition"
        return self.samples[key]

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Every sample of ``name`` that is not zero, by the values of ``labels``."""
        return {
            tuple(dict(key)[label] for label in labels): value
            for (sample, key), value in self.samples.items()
            if sample == name and value
        }


def scrape(collector: RunningCollector) -> Scrape:
    answer = requests.get(collector.api_url + "/metrics", timeout=30)  # no token
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version="), answer.headers["Content-Type"]
    return Scrape(answer.text)


def make_token(collector: RunningCollector, role: str, tenant: str = "acme") -> str:
    with psycopg.connect(collector.conninfo) as conn:
        pepper = collector.settings.token_pepper
        return access.create_token(conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper=pepper)[1]


def grpc_raw(target: str, body: bytes, token: str | None = None) -> ExportLogsServiceResponse:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return call(body, timeout=30, metadata=metadata)  # type: ignore[no-any-return]


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand (to send a record that cannot be decoded)."""
    size, prefix = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        prefix.append(byte | (0x80 if size else 0))
        if not size:
            return bytes([number << 3 | 2]) + bytes(prefix) + payload


def post(
    collector: RunningCollector, body: bytes, content_type: str = "application/x-protobuf", **headers: str
) -> requests.Response:
    return requests.post(collector.http_url, data=body, headers={"Content-Type": content_type, **headers}, timeout=30)


def uid(attrs: dict[str, Any]) -> str:
    return str(attrs["log.record.uid"])


# -- ingest ------------------------------------------------------------------------------


def test_ingest_is_counted_exactly_as_answered_and_stored(collector: RunningCollector) -> None:
    before = scrape(collector)
    for transport in TRANSPORTS:
        assert before("otaudit_records_received_total", transport=transport) == 0
    for name in ("accepted", "duplicates", "quarantined"):
        assert before(f"otaudit_records_{name}_total") == 0
    assert before.by("otaudit_records_rejected_total", "category", "reason") == {}

    # The stock gRPC exporter sends one request per record: three stored, two rejected.
    stock = [good_attributes(**{"audit.tenant.id": None}) for _ in range(3)]  # the tenant comes from the resource
    bad_schema = good_attributes(**{"audit.tenant.id": None, "audit.target.type": "license"})  # updateRole needs a role
    unknown_event = good_attributes(**{"audit.tenant.id": None, "audit.category": None})
    emit_with_stock_sdk(
        GrpcLogExporter(endpoint=collector.grpc_target, insecure=True),
        [{"event": "updateRole", "attributes": dict(a)} for a in stock]
        + [{"event": "updateRole", "attributes": bad_schema}, {"event": "noSuchEvent", "attributes": unknown_event}],
    )
    # The stock HTTP exporter: two stored, one naming a category no catalog has.
    stock_http = [good_attributes(**{"audit.tenant.id": None}) for _ in range(2)]
    no_category = good_attributes(**{"audit.tenant.id": None, "audit.category": "no_such_category"})
    emit_with_stock_sdk(
        HttpLogExporter(endpoint=collector.http_url),
        [{"event": "updateRole", "attributes": dict(a)} for a in stock_http]
        + [{"event": "updateRole", "attributes": no_category}],
    )
    # Raw OTLP/HTTP: an event stored before, one new event twice, an event two categories
    # define (and no category), a record that names no tenant.
    twin = good_attributes()
    answer = post(
        collector,
        request(
            [
                record(attrs=good_attributes(**{"log.record.uid": uid(stock[0])})),
                record(attrs=twin),
                record(attrs=twin),
                record("createAdUserPathScanningTarget", good_attributes(**{"audit.category": None})),
                record(attrs=good_attributes(**{"audit.tenant.id": None})),
            ]
        ).SerializeToString(),
    )
    assert answer.status_code == 200
    assert ExportLogsServiceResponse.FromString(answer.content).partial_success.rejected_log_records == 2
    # Raw OTLP/gRPC with acme's ingest token: a record of acme, one claiming globex (refused,
    # not quarantined) and one whose bytes cannot be decoded.
    token = make_token(collector, "ingest")
    mine, foreign = good_attributes(**{"audit.tenant.id": None}), good_attributes(**{"audit.tenant.id": "globex"})
    broken = record(attrs=good_attributes(**{"user.name": "MARKER-0123456789"})).SerializeToString()
    broken = broken.replace(b"MARKER-01", b"\xff\xfeRKER-01")
    resource = request([]).resource_logs[0].resource.SerializeToString()
    records = b"".join(
        field(2, r) for r in (record(attrs=mine).SerializeToString(), record(attrs=foreign).SerializeToString(), broken)
    )
    response = grpc_raw(collector.grpc_target, field(1, field(1, resource) + field(2, records)), token)
    assert response.partial_success.rejected_log_records == 2
    # Requests refused whole: no record of theirs is counted.
    with pytest.raises(grpc.RpcError) as caught:
        grpc_raw(collector.grpc_target, request([record(), record()]).SerializeToString()[:-7])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert post(collector, b"{}", "text/plain").status_code == 415
    unknown_token = "otaudit_000000000000_" + "x" * 43
    assert post(collector, request([record()]).SerializeToString(), Authorization=f"Bearer {unknown_token}").status_code == 401

    after = scrape(collector)
    received = {t: after("otaudit_records_received_total", transport=t) for t in TRANSPORTS}
    assert received == {"grpc": 5 + 3, "http": 3 + 5, "internal": 0}
    accepted = after("otaudit_records_accepted_total")
    duplicates = after("otaudit_records_duplicates_total")
    quarantined = after("otaudit_records_quarantined_total")
    rejected = after.by("otaudit_records_rejected_total", "category", "reason")
    assert (accepted, duplicates, quarantined) == (3 + 2 + 1 + 1, 2, 2 + 1 + 2 + 1)
    assert rejected == {
        ("accounts_configuration", "schema"): 1,
        ("unknown", "unknown_event"): 1,
        ("unknown", "unknown_category"): 1,  # the category named is not a label: it is no catalog's
        ("unknown", "ambiguous_event"): 1,
        ("unknown", "invalid_record"): 1,
        ("accounts_configuration", "tenant_mismatch"): 1,
        ("unknown", "undecodable"): 1,
    }
    # Sent == stored + duplicates + rejected, and the database agrees.
    assert sum(received.values()) == accepted + duplicates + sum(rejected.values())
    assert count(collector.conninfo) == accepted
    assert count(collector.conninfo, "rejects") == quarantined
    assert after.by("otaudit_request_duration_seconds_count", "transport", "outcome") == {
        ("grpc", "ok"): 3,
        ("grpc", "partial"): 2 + 1,
        ("grpc", "invalid"): 1,
        ("http", "ok"): 2,
        ("http", "partial"): 1 + 1,
        ("http", "invalid"): 1,
        ("http", "refused"): 1,
    }
    # One transaction per request (the clients waited for each answer); each holds its events,
    # duplicates included, and its rejects.
    assert after("otaudit_batch_commit_duration_seconds_count") == after("otaudit_batch_size_records_count") == 10
    assert after("otaudit_batch_size_records_sum") == accepted + duplicates + quarantined
    assert after("otaudit_batch_commit_duration_seconds_sum") > 0
    for histogram, labels in (
        ("otaudit_request_duration_seconds", {"transport": "grpc", "outcome": "ok"}),
        ("otaudit_batch_commit_duration_seconds", {}),
        ("otaudit_batch_size_records", {}),
    ):
        buckets = sorted(
            (float(dict(key)["le"]), value)
            for (name, key), value in after.samples.items()
            if name == f"{histogram}_bucket" and {k: v for k, v in key if k != "le"} == labels
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1] == (float("inf"), after(f"{histogram}_count", **labels))
    # Nothing in flight or queued once every answer is in; the connections are reported.
    assert after("otaudit_requests_in_flight", transport="grpc") == after("otaudit_requests_in_flight", transport="http") == 0
    assert after("otaudit_queued_records") == 0
    assert after("otaudit_db_connections_max", pool="writer") == 1
    assert (
        after("otaudit_db_connections", pool="writer", state="used")
        + after("otaudit_db_connections", pool="writer", state="idle")
        == 1
    )
    assert after("otaudit_db_connections_max", pool="api") == 4
    assert after("otaudit_db_connection_requests_waiting", pool="api") == 0

    # Bounded labels: every value from its fixed set; nothing a client sent is in the exposition.
    assert_bounded(after)
    sent = [*stock, bad_schema, unknown_event, *stock_http, no_category, twin, mine, foreign]
    for secret in [uid(a) for a in sent] + [token, unknown_token, "acme", "globex", "ann@acme.test", "u-17", "Auditors"]:
        assert secret not in after.text
    for name in ("noSuchEvent", "no_such_category", "MARKER", "203.0.113.9"):
        assert name not in after.text


def assert_bounded(scraped: Scrape) -> None:
    for (name, labels), _ in scraped.samples.items():
        assert name.startswith("otaudit_"), name
        for label, value in labels:
            if label == "le":
                float(value)  # a bucket bound
                continue
            assert label in ALLOWED, f"{name}: unexpected label {label}"
            assert value in ALLOWED[label], f"{name}: {label}={value!r} is not in its fixed set"


def test_metrics_need_no_token_and_each_collector_has_its_own(collector: RunningCollector) -> None:
    answer = requests.get(collector.api_url + "/metrics", headers={"Authorization": "Bearer nonsense"}, timeout=30)
    assert answer.status_code == 200 and "otaudit_records_received_total" in answer.text
    assert requests.get(collector.api_url + "/v1/whoami", timeout=30).status_code == 401  # the API itself does need one
    other = RunningCollector(settings_for(collector.conninfo))  # a second collector in this process, same database
    try:
        assert grpc_export(other.grpc_target, request([record(), record()])).partial_success.rejected_log_records == 0
        assert scrape(other)("otaudit_records_accepted_total") == 2
        assert scrape(other)("otaudit_records_received_total", transport="grpc") == 2
        assert scrape(collector)("otaudit_records_accepted_total") == 0
        assert scrape(collector)("otaudit_records_received_total", transport="grpc") == 0
        assert other.collector.metrics.registry is not collector.collector.metrics.registry
    finally:
        other.stop()
    assert "otaudit_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()  # not the global one


def test_every_metric_is_documented_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    names = [family.name + ("_total" if family.type == "counter" else "") for family in Metrics().registry.collect()]
    assert len(names) == len(set(names)) >= 20
    missing = [name for name in names if f"`{name}`" not in readme and not re.search(rf"`{name}\{{", readme)]
    assert missing == [], "README.md does not document these metrics"


def test_each_reject_reason_is_known_where_the_record_is_prepared() -> None:
    """Pure: ``prepare`` names each rejected record's reason from a fixed set, and its category only when loaded."""
    catalogs = load_catalogs(bundled_catalog_dirs())
    policy = Policy(max_string_length=2 * MAX_EVENT_BYTES)
    cases: list[tuple[str, Any, str | None, str]] = [
        ("updateRole", good_attributes(**{"audit.target.type": "license"}), "accounts_configuration", "schema"),
        ("noSuchEvent", good_attributes(**{"audit.category": None}), None, "unknown_event"),
        ("noSuchEvent", good_attributes(), "accounts_configuration", "unknown_event"),
        ("updateRole", good_attributes(**{"audit.category": "nope"}), None, "unknown_category"),
        ("createAdUserPathScanningTarget", good_attributes(**{"audit.category": None}), None, "ambiguous_event"),
        ("updateRole", good_attributes(**{"audit.tenant.id": None}), None, "invalid_record"),
        (
            "updateRole",
            good_attributes(**{"audit.details": {"note": "x" * (MAX_EVENT_BYTES + 1)}}),
            "accounts_configuration",
            "too_large",
        ),
        ("updateRole", good_attributes(**{"audit.target.name": "a\x00b"}), "accounts_configuration", "unstorable"),
    ]
    records = [record(event, attrs) for event, attrs, _, _ in cases]
    records.append(record(attrs=good_attributes(**{"user.name": "MARKER-0123456789"})))  # made undecodable below
    body = request([*records, record()]).SerializeToString().replace(b"MARKER-01", b"\xff\xfeRKER-01")
    prepared = prepare(normalize_request(decode_protobuf(body, 16), NOW, policy), catalogs, NOW)
    assert len(prepared.lines) == 1 and prepared.rejected == len(cases) + 1
    assert prepared.reasons == [*((category, reason) for _, _, category, reason in cases), (None, "undecodable")]

    foreign = request([record(attrs=good_attributes(**{"audit.tenant.id": "globex"}))]).SerializeToString()
    refused = prepare(normalize_request(decode_protobuf(foreign, 16), NOW, policy), catalogs, NOW, tenant="acme")
    assert refused.refused == 1 and refused.reasons == [("accounts_configuration", "tenant_mismatch")]
    assert {reason for _, reason in [*prepared.reasons, *refused.reasons]} == set(REJECT_REASONS)


# -- exports and retention ---------------------------------------------------------------


@pytest.fixture
def exporting(db: str) -> Iterator[RunningCollector]:
    running = RunningCollector(settings_for(db, {("exports", "poll_seconds"): 0.05, ("auth", "token_cache_seconds"): 0}))
    yield running
    running.stop()


def test_export_jobs_and_streamed_exports_are_counted(exporting: RunningCollector) -> None:
    collector = exporting
    assert grpc_export(collector.grpc_target, request([record() for _ in range(5)])).partial_success.rejected_log_records == 0
    admin = make_token(collector, "admin")
    auth = {"Authorization": f"Bearer {admin}"}
    streamed = requests.get(
        collector.api_url + "/v1/export", params={"format": "ndjson", "event": "updateRole"}, headers=auth, timeout=30
    )
    assert streamed.status_code == 200 and len(streamed.text.splitlines()) == 5
    scraped = scrape(collector)
    assert scraped.by("otaudit_export_streams_total", "outcome") == {("success",): 1}
    assert scraped.by("otaudit_export_rows_total", "kind") == {("stream",): 5}
    assert scraped("otaudit_export_jobs_created_total") == 0

    made = requests.post(
        collector.api_url + "/v1/exports", json={"format": "csv", "event": ["updateRole"]}, headers=auth, timeout=30
    )
    assert made.status_code == 202, made.text
    wait_until(lambda: scrape(collector)("otaudit_export_jobs_finished_total", state="done") == 1, 30, "the export job")
    with psycopg.connect(collector.conninfo) as conn:  # a job whose filters no longer parse: it fails
        conn.execute(
            "INSERT INTO export_jobs (id, tenant, token_id, format, filters) VALUES ('exp_badfilter', 'acme', %s, 'csv',"
            ' \'{"since": ["last tuesday"]}\')',
            (admin.split("_")[1],),
        )
    wait_until(lambda: scrape(collector)("otaudit_export_jobs_finished_total", state="failed") == 1, 30, "the failed job")
    scraped = scrape(collector)
    assert scraped("otaudit_export_jobs_created_total") == 1  # the other was not made through the API
    assert scraped.by("otaudit_export_jobs_finished_total", "state") == {("done",): 1, ("failed",): 1}
    assert scraped("otaudit_export_jobs_running") == 0
    assert scraped.by("otaudit_export_rows_total", "kind") == {("stream",): 5, ("job",): 5}
    assert scraped("otaudit_db_connections_max", pool="api") == 4
    assert_bounded(scraped)
    assert admin not in scraped.text

    # The API's own audit events (a session, each export) go through the pipeline as transport "internal".
    def audited() -> list[dict[str, Any]]:
        return rows(collector.conninfo, "SELECT id FROM events WHERE doc->'source'->>'service' = 'otaudit-collector'")

    wait_until(lambda: len(audited()) == 4, 30, "a session and three exports in the trail")
    wait_until(lambda: scrape(collector)("otaudit_records_accepted_total") == 5 + 4, 30, "the audit events counted")
    scraped = scrape(collector)
    assert scraped("otaudit_records_received_total", transport="internal") == 4
    assert count(collector.conninfo) == scraped("otaudit_records_accepted_total")


def test_retention_runs_are_counted_with_what_they_deleted(db: str) -> None:
    now = datetime.now(UTC)
    store(db, "acme", [now - timedelta(days=800), now - timedelta(days=200), now - timedelta(days=10)], plan="short")
    with psycopg.connect(db) as conn:  # every run fails until the table is back
        conn.execute("ALTER TABLE retention_runs RENAME TO retention_runs_away")
    running = RunningCollector(retention_settings(db, retention__interval_seconds=0.05))
    try:
        wait_until(lambda: scrape(running)("otaudit_retention_runs_total", outcome="failed") >= 1, 30, "a failed run")
        scraped = scrape(running)
        assert scraped("otaudit_retention_runs_total", outcome="done") == 0
        assert scraped("otaudit_retention_last_run_timestamp_seconds") == 0
        with psycopg.connect(db) as conn:
            conn.execute("ALTER TABLE retention_runs_away RENAME TO retention_runs")
        wait_until(lambda: scrape(running)("otaudit_retention_runs_total", outcome="done") >= 2, 30, "two runs")
        scraped = scrape(running)
        # The first run deleted two events (one with its month's partition, one in a batch); the next ones nothing.
        assert scraped("otaudit_retention_events_deleted_total") == 2
        assert scraped("otaudit_retention_partitions_dropped_total") == 1
        assert now.timestamp() < scraped("otaudit_retention_last_run_timestamp_seconds") <= time.time()
        assert_bounded(scraped)
    finally:
        running.stop()
