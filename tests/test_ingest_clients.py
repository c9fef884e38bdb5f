"""Real clients against a collector on free ports and a real PostgreSQL: rows checked in the database."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from support import RunningCollector, count, good_attributes, record, request, rows

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def grpc_export(target: str, req: ExportLogsServiceRequest, **kwargs: Any) -> ExportLogsServiceResponse:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString)
        return call(req.SerializeToString(), timeout=30, **kwargs)  # type: ignore[no-any-return]


def emit_with_stock_sdk(exporter: Any, events: list[dict[str, Any]]) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": "stock-sdk-service", "audit.tenant.id": "acme"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("audit")
    for event in events:
        logger.emit(
            timestamp=time.time_ns(), body=event.pop("body", None), attributes=event.pop("attributes"), event_name=event["event"]
        )
    provider.shutdown()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_stock_otel_exporter_events_are_stored(collector: RunningCollector, transport: str) -> None:
    exporter = (
        GrpcLogExporter(endpoint=collector.grpc_target, insecure=True)
        if transport == "grpc"
        else HttpLogExporter(endpoint=collector.http_url)
    )
    uids = [str(uuid.uuid4()) for _ in range(3)]
    emit_with_stock_sdk(
        exporter,
        [
            {
                "event": "updateRole",
                "body": "Ann gave Auditors the export permission",
                "attributes": good_attributes(**{"log.record.uid": uids[0], "audit.tenant.id": None}),
            },
            {
                "event": "siteAccess",
                "attributes": {
                    "log.record.uid": uids[1],
                    "audit.actor.type": "user",
                    "user.email": "bob@acme.test",
                    "audit.category": "site_access",
                },
            },
            {
                "event": "exportView",
                "attributes": {
                    "log.record.uid": uids[2],
                    "audit.actor.type": "user",
                    "user.id": "u-9",
                    "audit.target.type": "view",
                    "audit.target.id": "v-12",
                    "audit.details": {"format": "csv", "query": "state = active", "row_count": 1200},
                },
            },
        ],
    )
    stored = {r["id"]: r for r in rows(collector.conninfo)}
    assert set(stored) == set(uids)
    first = stored[uids[0]]
    assert first["tenant"] == "acme"  # from the resource
    assert first["category"] == "accounts_configuration"
    assert first["event"] == "updateRole"
    assert first["actor_id"] == "u-17" and first["actor_email"] == "ann@acme.test"
    assert first["target_type"] == "role" and first["target_id"] == "r-3"
    doc = first["doc"]
    assert doc["changes"] == [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}]
    assert doc["client"] == {"address": "203.0.113.9", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)", "session_id": "s-1"}
    assert doc["source"]["service"] == "stock-sdk-service"
    assert doc["message"] == "Ann gave Auditors the export permission"
    assert doc["actor"]["roles"] == ["admin"]
    # exportView has a single owner among the bundled catalogs: the category is implied.
    assert stored[uids[2]]["category"] == "data_extraction"
    assert stored[uids[2]]["doc"]["details"] == {"format": "csv", "query": "state = active", "row_count": 1200}
    # The per-tenant commit sequence is gap-free.
    assert sorted(r["seq"] for r in stored.values()) == [1, 2, 3]


def test_raw_protobuf_over_grpc_with_partial_success(collector: RunningCollector) -> None:
    good = record()
    bad = record(attrs=good_attributes(**{"audit.target.type": "license"}))  # updateRole needs a role
    unknown = record("noSuchEvent", good_attributes(**{"audit.category": None}))
    response = grpc_export(collector.grpc_target, request([good, bad, unknown]))
    assert response.partial_success.rejected_log_records == 2
    message = response.partial_success.error_message
    assert (
        "record 1 (resource_logs[0].scope_logs[0].log_records[1], event 'updateRole', category 'accounts_configuration')"
        in message
    )
    assert "/target/type" in message
    assert "record 2" in message and "'noSuchEvent' is in no loaded catalog" in message
    assert count(collector.conninfo) == 1
    quarantined = rows(collector.conninfo, "SELECT * FROM rejects ORDER BY id")
    assert [q["event"] for q in quarantined] == ["updateRole", "noSuchEvent"]
    assert any("/target/type" in reason for reason in quarantined[0]["reasons"])


def test_retried_request_is_stored_once(collector: RunningCollector) -> None:
    req = request([record() for _ in range(5)] + [record(attrs=good_attributes(**{"log.record.uid": None}))])
    for _ in range(3):
        response = grpc_export(collector.grpc_target, req)
        assert response.partial_success.rejected_log_records == 0
    stored = rows(collector.conninfo)
    assert len(stored) == 6
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5, 6]
    derived = [r for r in stored if "derived_id" in r["flags"]]
    assert len(derived) == 1 and uuid.UUID(derived[0]["id"]).version == 8


def test_otlp_http_protobuf_gzip_and_json(collector: RunningCollector) -> None:
    proto_req = request([record()])
    response = requests.post(
        collector.http_url,
        data=gzip.compress(proto_req.SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-protobuf"
    assert ExportLogsServiceResponse.FromString(response.content).partial_success.rejected_log_records == 0

    uid = str(uuid.uuid4())
    json_req = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "audit"},
                        "unknownField": {"ignored": True},
                        "logRecords": [
                            {
                                "timeUnixNano": str(time.time_ns()),
                                "eventName": "updateRole",
                                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                                "spanId": "00f067aa0ba902b7",
                                "severityNumber": 9,
                                "attributes": [
                                    {"key": k, "value": v}
                                    for k, v in {
                                        "log.record.uid": {"stringValue": uid},
                                        "audit.tenant.id": {"stringValue": "acme"},
                                        "audit.actor.type": {"stringValue": "user"},
                                        "user.id": {"intValue": "17"},
                                        "audit.target.type": {"stringValue": "role"},
                                        "audit.target.id": {"stringValue": "r-3"},
                                        "audit.sequence": {"intValue": 42},
                                        "audit.changes": {
                                            "arrayValue": {
                                                "values": [
                                                    {
                                                        "kvlistValue": {
                                                            "values": [
                                                                {"key": "field", "value": {"stringValue": "name"}},
                                                                {"key": "old", "value": {"stringValue": "Audit"}},
                                                                {"key": "new", "value": {"stringValue": "Auditors"}},
                                                            ]
                                                        }
                                                    }
                                                ]
                                            }
                                        },
                                    }.items()
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    response = requests.post(
        collector.http_url, data=json.dumps(json_req), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}
    stored = rows(collector.conninfo, "SELECT * FROM events WHERE id = %s", (uid,))
    assert len(stored) == 1
    doc = stored[0]["doc"]
    assert doc["trace"] == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    assert doc["actor"]["id"] == "17"
    assert doc["source"] == {"service": "json-svc", "sequence": 42}
    assert doc["changes"] == [{"field": "name", "old": "Audit", "new": "Auditors"}]


def test_json_partial_success_names_the_record(collector: RunningCollector) -> None:
    body: dict[str, Any] = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {"eventName": "siteAccess", "traceId": "not-hex"},
                            {
                                "eventName": "siteAccess",
                                "attributes": [
                                    {"key": "audit.tenant.id", "value": {"stringValue": "acme"}},
                                    {"key": "audit.actor.type", "value": {"stringValue": "user"}},
                                    {"key": "user.id", "value": {"stringValue": "u-1"}},
                                ],
                            },
                        ]
                    }
                ]
            }
        ]
    }
    response = requests.post(collector.http_url, json=body, timeout=30)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1"
    assert "logRecords[0].traceId: must be 32 hex digits" in partial["errorMessage"]
    stored = rows(collector.conninfo)
    assert len(stored) == 1 and "time_from_received" in stored[0]["flags"]


def test_clock_skew_is_stored_and_flagged(collector: RunningCollector) -> None:
    long_ago = record(time_ns=1_000_000_000)  # 1970
    future = record(time_ns=time.time_ns() + 10 * 86400 * 10**9)
    response = grpc_export(collector.grpc_target, request([long_ago, future]))
    assert response.partial_success.rejected_log_records == 0
    stored = rows(collector.conninfo)
    assert len(stored) == 2
    for row in stored:
        assert row["flags"] == ["clock_skew"]
        assert abs((row["occurred_at"] - row["received_at"]).total_seconds()) < 1
        assert "claimed_occurred_at" in row["doc"]
    assert sorted(r["doc"]["claimed_occurred_at"][:4] for r in stored)[0] == "1970"


def test_readiness_and_health(collector: RunningCollector) -> None:
    assert requests.get(collector.api_url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(collector.api_url + "/readyz", timeout=10).status_code == 200


def test_ids_with_tabs_newlines_and_backslashes_are_stored_verbatim(collector: RunningCollector) -> None:
    # The COPY text format gives tab, newline, carriage return and backslash a meaning: the
    # actor's and target's free text must be escaped, or the whole group's COPY fails.
    actor, target = "corp\\ann\tx\r\ny", "r\\3\t"
    attrs = good_attributes(**{"user.id": actor, "audit.target.id": target, "user.name": "Ann \\ Bob"})
    response = grpc_export(collector.grpc_target, request([record(attrs=attrs), record()]))
    assert response.partial_success.rejected_log_records == 0
    stored = rows(collector.conninfo, "SELECT actor_id, target_id, doc FROM events WHERE actor_id <> 'u-17'")
    assert [(r["actor_id"], r["target_id"]) for r in stored] == [(actor, target)]
    assert stored[0]["doc"]["actor"]["id"] == actor and stored[0]["doc"]["actor"]["name"] == "Ann \\ Bob"
