"""Issue 11: every bad record is rejected alone and quarantined storably, the quarantine goes in
bulk, a request is bounded in records and in rejects, and a replay obeys the ingest token's
tenant rule. Against a real collector and PostgreSQL over real gRPC and HTTP clients where it
is about the wire; the pure parts directly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
import requests
from google.protobuf.json_format import MessageToDict
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from support import RunningCollector, count, good_attributes, record, request, rows, settings_for
from test_bad_input import nested
from test_ingest_clients import EXPORT

from otaudit_collector.core import otlp_proto
from otaudit_collector.core.catalog import bundled_catalog_dirs, load_catalogs
from otaudit_collector.core.errors import BadRequest, PayloadTooLarge
from otaudit_collector.core.normalize import Policy, normalize_request, storable_text
from otaudit_collector.core.otlp_json import decode_json
from otaudit_collector.core.otlp_model import BrokenRecord
from otaudit_collector.core.prepare import prepare
from otaudit_collector.rejects import list_command, replay_command
from otaudit_collector.storage import access

PEPPER = "hardening-ingest-tests-pepper-0123456789"
TRANSPORTS = ["grpc", "http-protobuf", "http-json"]


# -- sending --------------------------------------------------------------------------


def as_json(req: ExportLogsServiceRequest) -> bytes:
    """The request as OTLP/JSON (no ids are set, so proto3 JSON is OTLP JSON here); NULs become \\u0000 escapes."""
    return json.dumps(MessageToDict(req)).encode()


def send(
    collector: RunningCollector, transport: str, body: ExportLogsServiceRequest | bytes, token: str | None = None
) -> tuple[int, str]:
    """(rejected records, the partial_success message) of an accepted request; fails on any other answer."""
    auth = {"authorization": f"Bearer {token}"} if token else {}
    if transport == "grpc":
        data = body if isinstance(body, bytes) else body.SerializeToString()
        with grpc.insecure_channel(collector.grpc_target) as channel:
            call = channel.unary_unary(
                EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
            )
            answer = call(data, timeout=60, metadata=tuple(auth.items()) or None)
        return answer.partial_success.rejected_log_records, answer.partial_success.error_message
    is_json = transport == "http-json"
    data = body if isinstance(body, bytes) else as_json(body) if is_json else body.SerializeToString()
    content_type = "application/json" if is_json else "application/x-protobuf"
    response = requests.post(collector.http_url, data=data, headers={"Content-Type": content_type, **auth}, timeout=60)
    assert response.status_code == 200, response.content[:500]
    if is_json:
        partial = response.json().get("partialSuccess", {})
        return int(partial.get("rejectedLogRecords", 0)), partial.get("errorMessage", "")
    parsed = ExportLogsServiceResponse.FromString(response.content)
    return parsed.partial_success.rejected_log_records, parsed.partial_success.error_message


def refusal(collector: RunningCollector, transport: str, body: bytes) -> tuple[str, str]:
    """(status, message) of a request refused whole: the gRPC code's name or the HTTP status."""
    if transport == "grpc":
        with grpc.insecure_channel(collector.grpc_target, options=[("grpc.max_send_message_length", 128 << 20)]) as channel:
            call = channel.unary_unary(
                EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
            )
            with pytest.raises(grpc.RpcError) as caught:
                call(body, timeout=120)
        return caught.value.code().name, caught.value.details() or ""
    content_type = "application/json" if transport == "http-json" else "application/x-protobuf"
    response = requests.post(collector.http_url, data=body, headers={"Content-Type": content_type}, timeout=120)
    if response.headers["Content-Type"].startswith("application/json"):
        return str(response.status_code), str(response.json()["message"])
    return str(response.status_code), status_pb2.Status.FromString(response.content).message


def encoded(req: ExportLogsServiceRequest, transport: str) -> bytes:
    return as_json(req) if transport == "http-json" else req.SerializeToString()


def start(db: str, **extra: Any) -> RunningCollector:
    overrides: dict[tuple[str, ...], Any] = {("auth", "token_cache_seconds"): 0, ("auth", "token_pepper"): PEPPER}
    overrides.update({tuple(key.split("__")): value for key, value in extra.items()})
    return RunningCollector(settings_for(db, overrides))


@pytest.fixture
def shallow(db: str) -> Iterator[RunningCollector]:
    """A collector that decodes values nested at most 2 levels, and requires ingest tokens."""
    running = start(db, ingest__max_depth=2, auth__require_ingest_token=True)
    yield running
    running.stop()


def make_token(db: str, tenant: str) -> tuple[str, str]:
    """(token id, token)."""
    with psycopg.connect(db) as conn:
        return access.create_token(conn, tenant=tenant, role="ingest", name=f"{tenant} ingest", pepper=PEPPER)


def uid(attrs: dict[str, Any]) -> str:
    return str(attrs["log.record.uid"])


def no_unstorable_text(*values: str | list[str] | None) -> bool:
    """Whether PostgreSQL can store each text (or each text of a list): no NUL, no lone surrogate."""
    texts = [t for value in values if value is not None for t in ([value] if isinstance(value, str) else value)]
    return all("\x00" not in t and storable_text(t) == t for t in texts)


# -- 1. a NUL in a key field: that record alone is rejected, and quarantined storably ------------

NUL_FIELDS = {
    "category": ("audit.category", "attribute 'audit.category' contains a NUL character"),
    "event": (None, "the event name (LogRecord.event_name) contains a NUL character"),
    "tenant": ("audit.tenant.id", "attribute 'audit.tenant.id' contains a NUL character"),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("field", sorted(NUL_FIELDS))
def test_a_nul_in_a_key_field_rejects_that_record_alone(collector: RunningCollector, transport: str, field: str) -> None:
    key, message = NUL_FIELDS[field]
    good = [good_attributes(), good_attributes()]
    if key is None:
        bad = record("update\x00Role", good_attributes())
    else:
        value = {"audit.category": "accounts_\x00configuration", "audit.tenant.id": "ac\x00me"}[key]
        bad = record(attrs=good_attributes(**{key: value}))
    req = request([record(attrs=good[0]), bad, record(attrs=good[1])])

    rejected, text = send(collector, transport, req)

    assert rejected == 1
    assert "record 1 (resource_logs[0].scope_logs[0].log_records[1]" in text and message in text
    assert sorted(r["id"] for r in rows(collector.conninfo)) == sorted(uid(a) for a in good)
    (quarantined,) = rows(collector.conninfo, "SELECT * FROM rejects")
    assert no_unstorable_text(quarantined["tenant"], quarantined["category"], quarantined["event"], quarantined["reasons"])
    assert any(message in reason for reason in quarantined["reasons"])
    assert LogRecord.FromString(bytes(quarantined["record"])) == bad  # the original, NUL and all
    assert quarantined["record_encoding"] == "protobuf"
    if field == "event":
        assert quarantined["event"] == "update\\u0000Role"  # escaped, so that it can be stored and read


@pytest.mark.parametrize("field", sorted(NUL_FIELDS))
def test_a_lone_surrogate_in_a_key_field_over_json_is_rejected_alone_and_kept_as_sent(
    collector: RunningCollector, field: str
) -> None:
    req = request([record(), record(attrs=good_attributes(**{"user.name": "MARK"})), record()])
    doc = MessageToDict(req)
    bad = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][1]
    if field == "event":
        bad["eventName"] = "update\ud800Role"
    else:
        key = {"category": "audit.category", "tenant": "audit.tenant.id"}[field]
        next(a for a in bad["attributes"] if a["key"] == key)["value"] = {"stringValue": "x\ud800"}
    body = json.dumps(doc).encode()  # json.dumps writes the lone surrogate as the escape \ud800
    assert b"\\ud800" in body

    rejected, text = send(collector, "http-json", body)

    assert rejected == 1 and "unpaired UTF-16 surrogate" in text
    assert count(collector.conninfo) == 2
    (quarantined,) = rows(collector.conninfo, "SELECT * FROM rejects")
    assert json.loads(bytes(quarantined["record"])) == bad  # the record itself, surrogate and all
    assert quarantined["record_encoding"] == "json"
    assert no_unstorable_text(quarantined["tenant"], quarantined["category"], quarantined["event"], quarantined["reasons"])


def test_a_nul_anywhere_else_is_rejected_naming_where(collector: RunningCollector) -> None:
    details = good_attributes(**{"audit.details": {"note": "a\x00b"}})
    rejected, text = send(collector, "grpc", request([record(), record(attrs=details)]))
    assert rejected == 1 and "the event's /details/note contains a NUL character" in text
    (quarantined,) = rows(collector.conninfo, "SELECT reasons FROM rejects")
    assert no_unstorable_text(quarantined["reasons"])


def test_quarantine_text_is_storable_whatever_the_record_holds() -> None:
    """Unit: the text columns of a reject never hold a NUL or a lone surrogate, from any path."""
    assert storable_text("plain ascii") == "plain ascii"
    assert storable_text("grüße") == "grüße"
    assert storable_text("a\x00b") == "a\\u0000b"
    assert storable_text("x\ud800y") == "x\\ud800y"
    catalogs = load_catalogs(bundled_catalog_dirs())
    policy = Policy()
    # NUL in a key field: refused by normalization as unstorable, before a catalog quotes it back.
    req = request([record(attrs=good_attributes(**{"audit.category": "a\x00b"})), record("up\x00date")])
    decoded = otlp_proto.decode_protobuf(req.SerializeToString(), 16)
    prepared = prepare(normalize_request(decoded, time.time_ns(), policy), catalogs, time.time_ns(), tenant="acme", token_id="t1")
    assert [kind for _, kind in prepared.reasons] == ["unstorable", "unstorable"]
    for row in prepared.rejects:
        assert no_unstorable_text(row.tenant, row.category, row.event, list(row.reasons))
        assert (row.token_id, row.token_tenant, row.encoding) == ("t1", "acme", "protobuf")
    assert prepared.rejects[1].event == "up\\u0000date"


# -- 2. undecodable OTLP/JSON records keep their own bytes, and replay ------------------


def _too_deep_json_record(marker: str, tenant: str | None = "acme") -> dict[str, Any]:
    attrs = good_attributes(**{"audit.details": {"a": {"b": {"c": {"d": marker}}}}})
    if tenant is None:
        attrs.pop("audit.tenant.id")
    else:
        attrs["audit.tenant.id"] = tenant
    return MessageToDict(request([record(attrs=attrs)]))["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]  # type: ignore[no-any-return]


def test_distinct_undecodable_json_records_are_distinct_rows_and_replay_after_a_fix(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _too_deep_json_record("one"), _too_deep_json_record("two")
    body = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [first, second, _too_deep_json_record("three")]}]}]})
    collector = start(db, ingest__max_depth=2)
    try:
        rejected, text = send(collector, "http-json", body.encode())
        assert rejected == 3 and "nested deeper than 2 levels" in text
        rejected, _ = send(collector, "http-json", body.encode())  # a retry quarantines nothing twice
        assert rejected == 3
    finally:
        collector.stop()
    quarantined = rows(db, "SELECT * FROM rejects ORDER BY id")
    assert len(quarantined) == 3
    assert [json.loads(bytes(q["record"])) for q in quarantined[:2]] == [first, second]
    assert {q["record_encoding"] for q in quarantined} == {"json"}
    assert len({bytes(q["fingerprint"]) for q in quarantined}) == 3

    # The fix: a deeper limit (the default, 16). Replay decodes the kept JSON and stores the events.
    assert replay_command(settings_for(db), ids=[quarantined[0]["id"], quarantined[1]["id"]], dry_run=False) == 0
    assert "2 replayed, 0 still rejected" in capsys.readouterr().out
    stored = rows(db)
    assert sorted(r["id"] for r in stored) == sorted(
        next(a["value"]["stringValue"] for a in rec["attributes"] if a["key"] == "log.record.uid") for rec in (first, second)
    )
    assert sorted(r["doc"]["details"]["a"]["b"]["c"]["d"] for r in stored) == ["one", "two"]


def test_json_decoder_keeps_each_broken_record_as_json() -> None:
    """Unit: the JSON decoder's broken records carry their own JSON, which decodes to the same value."""
    records = [
        {"eventName": 5},
        {"eventName": "x", "timeUnixNano": -1},
        {"attributes": [{"key": "k", "value": {"doubleValue": "NaN"}}]},
    ]
    decoded = decode_json(json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}).encode(), 16)
    broken = decoded[0][2][0][:2]
    assert all(isinstance(b, BrokenRecord) and b.encoding == "json" for b in broken)
    assert [json.loads(b.raw) for b in broken if isinstance(b, BrokenRecord)] == records[:2]


# -- 3. bounded per request, quarantine in bulk, the writer not held ------------------------


def test_a_request_of_200000_empty_records_is_refused_and_other_tenants_are_served(collector: RunningCollector) -> None:
    body = request([LogRecord() for _ in range(200_000)]).SerializeToString()
    allowed = request([LogRecord() for _ in range(100_000)]).SerializeToString()  # as many as allowed: all rejected
    answers: dict[str, tuple[str, str]] = {}

    def big() -> None:
        answers["big"] = refusal(collector, "grpc", body)
        answers["allowed"] = refusal(collector, "http-protobuf", allowed)

    sender = threading.Thread(target=big)
    sender.start()
    others: list[str] = []
    try:
        for _ in range(5):  # meanwhile, another tenant's requests
            attrs = good_attributes(**{"audit.tenant.id": "globex"})
            assert send(collector, "http-protobuf", request([record(attrs=attrs)]))[0] == 0
            others.append(uid(attrs))
    finally:
        sender.join(120)
    assert not sender.is_alive()
    status, message = answers["big"]
    assert status == "RESOURCE_EXHAUSTED"
    assert "too many records" in message and "100000" in message and "send smaller batches" in message
    status, message = answers["allowed"]
    assert status == "400" and "at least 1001 of its 100000 records of this request were rejected" in message
    assert "more than 1000 rejected records refuse a request whole" in message and "has no event name" in message
    assert sorted(r["id"] for r in rows(collector.conninfo)) == sorted(others)
    assert count(collector.conninfo, "rejects") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_with_more_rejects_than_the_bound_is_refused_whole(db: str, transport: str) -> None:
    collector = start(db, ingest__max_rejects_per_request=50)
    try:
        good = [record(), record()]
        empty = [LogRecord(event_name="") for _ in range(60)]
        status, message = refusal(collector, transport, encoded(request([good[0], *empty, good[1]]), transport))
        assert status == ("INVALID_ARGUMENT" if transport == "grpc" else "400")
        assert "records of this request were rejected; more than 50 rejected records refuse a request whole" in message
        assert "record 1 (resource_logs[0].scope_logs[0].log_records[1]): the record has no event name" in message
        assert count(db) == 0 and count(db, "rejects") == 0  # nothing of it stored, nothing quarantined
        # 50 rejects are within the bound: the good ones are stored, the bad ones quarantined.
        bad = [record(attrs=good_attributes(**{"audit.target.type": f"license-{n}"})) for n in range(50)]
        rejected, _ = send(collector, transport, request([*good, *bad]))
        assert rejected == 50 and count(db) == 2 and count(db, "rejects") == 50
    finally:
        collector.stop()


def test_catalog_rejects_over_the_bound_are_refused_whole_too() -> None:
    """Unit: the bound counts rejects from the catalogs (in prepare), not only those normalization finds."""
    catalogs = load_catalogs(bundled_catalog_dirs())
    bad = [record(attrs=good_attributes(**{"audit.target.type": f"license-{n}"})) for n in range(4)]
    decoded = otlp_proto.decode_protobuf(request(bad).SerializeToString(), 16)
    candidates = normalize_request(decoded, time.time_ns(), Policy(max_rejects_per_request=3))
    with pytest.raises(BadRequest) as caught:
        prepare(candidates, catalogs, time.time_ns(), max_rejects=3)
    assert "more than 3 rejected records refuse a request whole" in caught.value.message
    assert len(prepare(candidates, catalogs, time.time_ns(), max_rejects=4).rejects) == 4


def test_900_rejects_are_quarantined_in_one_statement(db: str) -> None:
    token_id, token = make_token(db, "acme")
    collector = start(db, auth__require_ingest_token=True)
    try:
        bad = [record(attrs=good_attributes(**{"audit.target.type": f"license-{n}"})) for n in range(900)]
        rejected, _ = send(collector, "grpc", request([record(), *bad]), token)
    finally:
        collector.stop()
    assert rejected == 900 and count(db) == 1
    quarantined = rows(db, "SELECT *, cmin FROM rejects ORDER BY id")
    assert len(quarantined) == 900
    assert sorted(LogRecord.FromString(bytes(q["record"])).SerializeToString() for q in quarantined) == sorted(
        b.SerializeToString() for b in bad
    )
    assert {(q["tenant"], q["token_id"], q["token_tenant"]) for q in quarantined} == {("acme", token_id, "acme")}
    assert all(any("/target/type" in reason for reason in q["reasons"]) for q in quarantined)
    # One INSERT put them all in: every row carries the same command id of the transaction.
    assert len({q["cmin"] for q in quarantined}) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_records_per_request_bound(db: str, transport: str) -> None:
    collector = start(db, ingest__max_records_per_request=10)
    try:
        status, message = refusal(collector, transport, encoded(request([record() for _ in range(11)]), transport))
        assert status == ("RESOURCE_EXHAUSTED" if transport == "grpc" else "413")
        assert "too many records" in message and "more than 10 log records" in message and "send smaller batches" in message
        assert count(db) == 0 and count(db, "rejects") == 0
        assert send(collector, transport, request([record() for _ in range(10)])) == (0, "")
        assert count(db) == 10
    finally:
        collector.stop()


@pytest.mark.parametrize("compiled", [True, False], ids=["c-decoder", "python-decoder"])
def test_the_decoders_count_records_before_building_them(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not compiled:
        monkeypatch.setattr(otlp_proto, "_compiled", None)
    elif not otlp_proto.COMPILED:
        pytest.fail("the C decoder is not built (pip install -e ./collector)")
    two_scopes = request([LogRecord(), LogRecord()])
    two_scopes.resource_logs[0].scope_logs.add().log_records.extend([LogRecord(), LogRecord()])
    body = two_scopes.SerializeToString()
    assert len(otlp_proto.decode_protobuf(body, 16, 4)[0][2]) == 2
    with pytest.raises(PayloadTooLarge, match="too many records: the request holds more than 3 log records"):
        otlp_proto.decode_protobuf(body, 16, 3)
    with pytest.raises(PayloadTooLarge, match="send smaller batches"):
        decode_json(as_json(two_scopes), 16, 3)
    assert len(decode_json(as_json(two_scopes), 16, 4)[0][2]) == 2


# -- 4. replay obeys the ingest token's tenant rule -------------------------------------------


def _too_deep(attrs: dict[str, Any]) -> LogRecord:
    rec = record(attrs=attrs)
    rec.attributes.append(KeyValue(key="audit.details", value=nested(4)))  # deeper than max_depth 2
    return rec


def test_replay_of_a_too_deep_record_obeys_its_tokens_tenant(
    shallow: RunningCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    db = shallow.conninfo
    token_id, token = make_token(db, "acme")
    foreign = good_attributes(**{"audit.tenant.id": "globex"})
    unnamed = good_attributes(**{"audit.tenant.id": None})
    own = good_attributes()
    rejected, text = send(shallow, "grpc", request([_too_deep(foreign), _too_deep(unnamed), _too_deep(own)]), token)
    assert rejected == 3 and "nested deeper than 2 levels" in text
    quarantined = rows(db, "SELECT * FROM rejects ORDER BY id")
    assert [q["tenant"] for q in quarantined] == ["acme"] * 3  # it could not be read: the token's tenant

    # Replayed with the default depth: the record naming another tenant stays in quarantine.
    assert replay_command(settings_for(db), ids=[], dry_run=False) == 1
    out = capsys.readouterr().out
    assert f"#{quarantined[0]['id']} still rejected: tenant 'globex' is not the token's tenant 'acme'" in out
    assert "2 replayed, 1 still rejected" in out
    assert {r["id"]: r["tenant"] for r in rows(db)} == {uid(unnamed): "acme", uid(own): "acme"}
    assert [(q["token_id"], q["token_tenant"]) for q in quarantined] == [(token_id, "acme")] * 3
    assert list_command(settings_for(db), tenant=None, limit=10, include_replayed=True, as_json=True) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [item["token_id"] for item in listed] == [token_id] * 3
    (left,) = rows(db, "SELECT id, reasons FROM rejects WHERE replayed_at IS NULL")
    assert left["id"] == quarantined[0]["id"]
    assert any("is not the token's tenant 'acme'" in reason for reason in left["reasons"])
    assert "globex" not in {r["tenant"] for r in rows(db, "SELECT tenant FROM tenants")}


def test_a_reject_without_a_token_replays_as_before(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    collector = start(db, ingest__max_depth=2)
    try:
        foreign = good_attributes(**{"audit.tenant.id": "globex"})
        assert send(collector, "grpc", request([_too_deep(foreign)]))[0] == 1
    finally:
        collector.stop()
    (quarantined,) = rows(db, "SELECT token_id, token_tenant FROM rejects")
    assert quarantined == {"token_id": None, "token_tenant": None}
    assert replay_command(settings_for(db), ids=[], dry_run=False) == 0
    assert "1 replayed, 0 still rejected" in capsys.readouterr().out
    assert [r["tenant"] for r in rows(db)] == ["globex"]


# -- one large request does not hold the writer -----------------------------------------


async def test_a_large_request_commits_in_parts_and_lets_others_in_between(db: str) -> None:
    """A request over max_batch_records is committed in parts, each queued after the last one
    committed: a small request sent meanwhile is committed before the large one's last part,
    and the large one is answered once all of it is stored, with a gap-free seq."""
    from otaudit_collector.storage.writer import Writer

    catalogs = load_catalogs(bundled_catalog_dirs([]))
    received = time.time_ns()

    def prepared(n: int, tenant: str) -> Any:
        body = request([record(attrs=good_attributes(audit__tenant__id=tenant)) for _ in range(n)]).SerializeToString()
        return prepare(normalize_request(otlp_proto.decode_protobuf(body, 16), received, Policy()), catalogs, received)

    writer = Writer(db, max_batch_records=50)
    await writer.start()
    try:
        import asyncio

        large = asyncio.create_task(writer.submit(prepared(500, "acme")))
        while writer.stats.transactions < 1:
            await asyncio.sleep(0.001)
        small = await writer.submit(prepared(1, "globex"))
        assert small == 1
        assert not large.done(), "the small request waited for the whole large one"
        assert await large == 500
        assert writer.stats.transactions >= 11  # ten parts of 50, and the small request's
    finally:
        await writer.close()
    stored = rows(db, "SELECT tenant, seq FROM events ORDER BY tenant, seq")
    assert [r["seq"] for r in stored if r["tenant"] == "acme"] == list(range(1, 501))
    assert [r["seq"] for r in stored if r["tenant"] == "globex"] == [1]
