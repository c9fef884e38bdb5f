"""Bad input never crashes a server or poisons a batch: each gets a clear answer, then the next request is served."""

from __future__ import annotations

import gzip
import json
from typing import Any

import grpc
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from support import RunningCollector, any_value, count, good_attributes, record, request, rows
from test_ingest_clients import EXPORT, grpc_export


def raw_grpc(target: str, body: bytes) -> ExportLogsServiceResponse:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 128 << 20)]) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString)
        return call(body, timeout=60)  # type: ignore[no-any-return]


def still_serving(collector: RunningCollector) -> None:
    before = count(collector.conninfo)
    response = grpc_export(collector.grpc_target, request([record()]))
    assert response.partial_success.rejected_log_records == 0
    assert count(collector.conninfo) == before + 1
    http = requests.post(
        collector.http_url,
        data=request([record()]).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert http.status_code == 200
    assert count(collector.conninfo) == before + 2


def nested(depth: int) -> AnyValue:
    value = any_value("bottom")
    for _ in range(depth):
        outer = AnyValue()
        outer.kvlist_value.values.append(KeyValue(key="k", value=value))
        value = outer
    return value


# -- whole requests that cannot be decoded ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe garbage \x00\x01\x02" * 10, "not a valid OTLP protobuf ExportLogsServiceRequest"),
        (request([record(), record()]).SerializeToString()[:-7], "truncated"),
    ],
    ids=["garbage", "truncated"],
)
def test_undecodable_grpc_request(collector: RunningCollector, body: bytes, expected: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        raw_grpc(collector.grpc_target, body)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()
    assert count(collector.conninfo) == 0
    still_serving(collector)


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status", "expected"),
    [
        (b"{not json", "application/json", {}, 400, "not valid JSON"),
        (b"[1, 2]", "application/json", {}, 400, "must be a JSON object"),
        (b'{"resourceLogs": {"a": 1}}', "application/json", {}, 400, "resourceLogs: must be an array"),
        (b'{"resourceLogs": [] }\xff', "application/json", {}, 400, "not valid UTF-8"),
        (b"\x0a\x40abc", "application/x-protobuf", {}, 400, "truncated"),
        (b"hello", "text/plain", {}, 415, "Content-Type must be application/x-protobuf or application/json"),
        (b"hello", "application/x-protobuf", {"Content-Encoding": "br"}, 415, "Content-Encoding 'br' is not supported"),
        (
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff",
            "application/x-protobuf",
            {"Content-Encoding": "gzip"},
            400,
            "compressed stream is corrupt",
        ),
        (
            gzip.compress(b"\x0a\x00" * 100)[:-12],
            "application/x-protobuf",
            {"Content-Encoding": "gzip"},
            400,
            "compressed stream is truncated",
        ),
    ],
    ids=[
        "invalid-json",
        "json-array",
        "json-shape",
        "json-bad-utf8",
        "proto-truncated",
        "wrong-type",
        "unknown-encoding",
        "corrupt-gzip",
        "truncated-gzip",
    ],
)
def test_undecodable_http_request(
    collector: RunningCollector, body: bytes, content_type: str, headers: dict[str, str], status: int, expected: str
) -> None:
    response = requests.post(collector.http_url, data=body, headers={"Content-Type": content_type, **headers}, timeout=30)
    assert response.status_code == status
    if response.headers["Content-Type"].startswith("application/json"):
        message = response.json()["message"]
        assert response.json()["code"] == 3
    else:
        message = status_pb2.Status.FromString(response.content).message
    assert expected in message
    assert count(collector.conninfo) == 0
    still_serving(collector)


def test_chunked_http_body_without_content_length(collector: RunningCollector) -> None:
    data = request([record(), record()]).SerializeToString()
    chunks = (data[i : i + 100] for i in range(0, len(data), 100))  # requests sends a generator chunked
    response = requests.post(collector.http_url, data=chunks, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
    assert response.status_code == 200
    assert count(collector.conninfo) == 2


def test_empty_requests_are_accepted_and_store_nothing(collector: RunningCollector) -> None:
    assert raw_grpc(collector.grpc_target, b"").partial_success.rejected_log_records == 0
    assert (
        requests.post(collector.http_url, data=b"", headers={"Content-Type": "application/x-protobuf"}, timeout=30).status_code
        == 200
    )
    assert requests.post(collector.http_url, data=b"{}", headers={"Content-Type": "application/json"}, timeout=30).json() == {}
    empty_scope = request([])
    assert grpc_export(collector.grpc_target, empty_scope).partial_success.rejected_log_records == 0
    assert count(collector.conninfo) == 0
    still_serving(collector)


# -- one bad record among good ones: only it is rejected --------------------------------


def _with_invalid_utf8() -> bytes:
    marker = "MARKER-0123456789"
    req = request([record(), record(attrs=good_attributes(**{"user.name": marker})), record()])
    data = req.SerializeToString()
    assert data.count(marker.encode()) == 1
    return data.replace(marker.encode(), b"\xff\xfe\xfd" + marker.encode()[3:])


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    size, prefix = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        prefix.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(prefix) + payload


def _deeply_nested() -> bytes:
    # upb will not build a message nested this deep, so the record is encoded by hand:
    # AnyValue.kvlist_value(6) -> KeyValueList.values(1) -> KeyValue.value(2) -> ...
    value = _field(1, b"bottom")
    for _ in range(400):
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    bad = record().SerializeToString() + _field(6, _field(1, b"audit.details") + _field(2, value))
    resource = request([]).resource_logs[0].resource.SerializeToString()
    scope = b"".join(_field(2, r) for r in (record().SerializeToString(), bad, record().SerializeToString()))
    return _field(1, _field(1, resource) + _field(2, scope))


def _attrs(**over: Any) -> bytes:
    return request([record(), record(attrs=good_attributes(**over)), record()]).SerializeToString()


def _many_attributes() -> bytes:
    bad = record()
    bad.attributes.extend(KeyValue(key=f"extra.{n}", value=any_value(n)) for n in range(5000))
    return request([record(), bad, record()]).SerializeToString()


def _moderately_nested() -> bytes:
    bad = record()
    bad.attributes.append(KeyValue(key="audit.details", value=nested(20)))
    return request([record(), bad, record()]).SerializeToString()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_with_invalid_utf8(), "string field holds invalid UTF-8"),
        (_deeply_nested(), "nested deeper than"),
        (_moderately_nested(), "values are nested deeper than 16 levels"),
        (_attrs(**{"user.name": "Ann\x00Evil"}), "NUL character"),
        (_attrs(**{"audit.reason": "x" * 200_000}), "holds a string of 200000 characters"),
        (_many_attributes(), "has 5016 attributes; at most 512"),
        (_attrs(**{"audit.tenant.id": None}), "names no tenant"),
        (_attrs(**{"user.id": 1.5}), "attribute 'user.id' must be a string, got a double"),
        (_attrs(**{"audit.changes": "not a list"}), "'audit.changes' must be an array"),
        (_attrs(**{"audit.outcome": "maybe"}), "/outcome"),
    ],
    ids=[
        "invalid-utf8",
        "nested-400",
        "nested-20",
        "nul",
        "huge-string",
        "5000-attributes",
        "no-tenant",
        "wrong-type",
        "bad-changes",
        "bad-outcome",
    ],
)
def test_one_bad_record_is_rejected_alone(collector: RunningCollector, body: bytes, expected: str) -> None:
    response = raw_grpc(collector.grpc_target, body)
    assert response.partial_success.rejected_log_records == 1
    assert "record 1 (resource_logs[0].scope_logs[0].log_records[1]" in response.partial_success.error_message
    assert expected in response.partial_success.error_message
    assert count(collector.conninfo) == 2
    assert count(collector.conninfo, "rejects") == 1
    still_serving(collector)


def test_json_lone_surrogate_and_bad_values_reject_only_their_record(collector: RunningCollector) -> None:
    good = {"key": "audit.tenant.id", "value": {"stringValue": "acme"}}
    actor = [{"key": "audit.actor.type", "value": {"stringValue": "user"}}, {"key": "user.id", "value": {"stringValue": "u"}}]
    records = [
        {"eventName": "siteAccess", "attributes": [good, *actor]},
        {"eventName": "siteAccess", "attributes": [good, *actor, {"key": "user.name", "value": {"stringValue": "\ud800"}}]},
        {"eventName": "siteAccess", "attributes": [good, *actor, {"key": "n", "value": {"intValue": "12x"}}]},
        {"eventName": "siteAccess", "timeUnixNano": -5, "attributes": [good, *actor]},
    ]
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]})
    response = requests.post(collector.http_url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "3"
    message = partial["errorMessage"]
    assert "unpaired UTF-16 surrogate" in message
    assert "must be an integer or a decimal string" in message
    assert "timeUnixNano: must not be negative" in message
    assert count(collector.conninfo) == 1
    still_serving(collector)


# -- size limits ---------------------------------------------------------------------


def test_oversized_requests(collector: RunningCollector) -> None:
    huge = b"\x00" * (65 << 20)  # 65 MiB: over the 64 MiB limit once decompressed
    response = requests.post(
        collector.http_url,
        data=gzip.compress(huge, compresslevel=1),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        timeout=120,
    )
    assert response.status_code == 413
    assert "larger than 67108864 bytes after decompression" in status_pb2.Status.FromString(response.content).message
    with pytest.raises(grpc.RpcError) as caught:
        raw_grpc(collector.grpc_target, huge)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert count(collector.conninfo) == 0
    still_serving(collector)


def test_nothing_rejected_is_lost_from_quarantine(collector: RunningCollector) -> None:
    bad = record(attrs=good_attributes(**{"audit.target.type": "license"}))
    for _ in range(2):  # a retried request quarantines its rejects once
        raw_grpc(collector.grpc_target, request([bad]).SerializeToString())
    quarantined = rows(collector.conninfo, "SELECT * FROM rejects")
    assert len(quarantined) == 1
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    assert LogRecord.FromString(quarantined[0]["record"]) == bad


def test_an_internal_failure_is_answered_and_logged_and_the_server_keeps_serving(
    collector: RunningCollector, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from otaudit_collector import pipeline

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline, "prepare", broken)
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(collector.grpc_target, request([record()]))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "error was logged with its traceback" in caught.value.details()
    http = requests.post(
        collector.http_url,
        data=request([record()]).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert http.status_code == 500
    assert "ZeroDivisionError: a bug" in caplog.text
    monkeypatch.undo()
    still_serving(collector)


def test_an_undecodable_record_is_quarantined_with_its_bytes_as_received(collector: RunningCollector) -> None:
    marker = "MARKER-0123456789"
    broken = (
        record(attrs=good_attributes(**{"user.name": marker}))
        .SerializeToString()
        .replace(marker.encode(), b"\xff\xfe" + marker.encode()[2:])
    )
    resource = request([]).resource_logs[0].resource.SerializeToString()
    body = _field(1, _field(1, resource) + _field(2, _field(2, record().SerializeToString()) + _field(2, broken)))
    response = raw_grpc(collector.grpc_target, body)
    assert response.partial_success.rejected_log_records == 1
    assert "invalid UTF-8" in response.partial_success.error_message
    quarantined = rows(collector.conninfo, "SELECT record, resource, reasons FROM rejects")
    assert len(quarantined) == 1
    assert bytes(quarantined[0]["record"]) == broken  # nothing the client sent is lost
    assert bytes(quarantined[0]["resource"]) == resource
    assert count(collector.conninfo) == 1
