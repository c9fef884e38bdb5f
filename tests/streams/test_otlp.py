"""The OTLP transport against a real second otaudit collector, over gRPC and HTTP.

Events are sent into a first collector, read back as the stream reads them (``seq``, id and
the stored document with ``DOCUMENT_SQL``), and sent by the transport to a second collector
on its own database. Fields the receiver sets itself differ: ``seq``, ``received_at``, the
flag ``derived_id`` (the id now comes as ``log.record.uid``), and ``attributes`` gains
``otaudit.seq`` and ``otaudit.source.tenant``; everything else is equal field by field.
RetryInfo and Retry-After are read from small real servers of the test's own.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import psycopg
import pytest
from aiohttp import web
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from support import RunningCollector, good_attributes, record, request, rows, settings_for

from otaudit_collector.core.query import DOCUMENT_SQL
from otaudit_collector.storage import access
from otaudit_collector.streams.otlp import EXPORT_METHOD, OtlpTransport
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record

PROTOCOLS = ["grpc", "http"]
PEPPER = "otlp-stream-tests-pepper-0123456789"
RECEIVER_SET = ("seq", "received_at")
"""Top-level fields the receiving collector sets itself (besides its own flags and attributes)."""


def start(conninfo: str, **auth: Any) -> RunningCollector:
    overrides: dict[tuple[str, ...], Any] = {("auth", "token_cache_seconds"): 0, ("auth", "token_pepper"): PEPPER}
    overrides.update({("auth", key): value for key, value in auth.items()})
    return RunningCollector(settings_for(conninfo, overrides))


@pytest.fixture
def first(db: str) -> Iterator[RunningCollector]:
    running = start(db)
    yield running
    running.stop()


@pytest.fixture
def second(second_db: str) -> Iterator[RunningCollector]:
    running = start(second_db)
    yield running
    running.stop()


def endpoint(collector: RunningCollector, protocol: str) -> str:
    if protocol == "grpc":
        return collector.grpc_target
    host, port = collector.endpoints.http
    return f"http://{host}:{port}"


def post(collector: RunningCollector, body: bytes) -> None:
    sent = urllib.request.Request(collector.http_url, data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(sent, timeout=30) as answer:
        assert answer.status == 200


def stored_batch(collector: RunningCollector, tenant: str = "acme") -> Batch:
    """The tenant's trail as a stream reads it: seq, id and the stored document with seq and received_at."""
    found = rows(
        collector.conninfo, f"SELECT seq, id, {DOCUMENT_SQL} AS text FROM events WHERE tenant = %s ORDER BY seq", [tenant]
    )
    return Batch(tenant, "s-otlp", [Record(row["seq"], row["id"], row["text"]) for row in found])


def fill(collector: RunningCollector) -> Batch:
    """Real events in the first collector: from two services, one without an id of its own, with details and related."""
    now = time.time_ns()
    post(collector, request([record(time_ns=now - 3_000_000_000), record(time_ns=now - 2_000_000_000)]).SerializeToString())
    no_uid = record(attrs=good_attributes(log__record__uid=None, audit__details={"via": "console", "n": 3}), time_ns=now - 1_000)
    related = good_attributes(audit__related=[{"type": "license", "id": "L-1", "name": "Pro"}], audit__reason="asked by support")
    post(collector, request([no_uid, record(attrs=related, time_ns=now)], service="admin-console").SerializeToString())
    batch = stored_batch(collector)
    assert len(batch.records) == 4
    return batch


def documents(collector: RunningCollector) -> dict[str, dict[str, Any]]:
    found = rows(collector.conninfo, f"SELECT {DOCUMENT_SQL} AS text FROM events ORDER BY tenant, seq")
    return {doc["id"]: doc for doc in (json.loads(row["text"]) for row in found)}


def assert_same_events(sent: Batch, receiver: RunningCollector) -> None:
    """Every sent event is stored once by the receiver, equal field by field but for what it sets itself."""
    got = documents(receiver)
    assert sorted(got) == sorted(r.id for r in sent.records)
    for rec in sent.records:
        want, have = json.loads(rec.text), got[rec.id]
        for name in RECEIVER_SET:
            want.pop(name), have.pop(name)
        want_flags = [flag for flag in want.pop("flags", []) if flag != "derived_id"]
        assert have.pop("flags", []) == want_flags, rec.id
        extra = have.pop("attributes")
        assert extra == {**want.pop("attributes", {}), "otaudit.seq": rec.seq, "otaudit.source.tenant": sent.tenant}
        assert sorted(have) == sorted(want), rec.id
        for name in want:
            assert have[name] == want[name], f"{rec.id}: {name}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_batch_arrives_with_the_same_ids_and_documents_once(
    protocol: str, first: RunningCollector, second: RunningCollector
) -> None:
    batch = fill(first)
    transport = OtlpTransport(endpoint(second, protocol), protocol=protocol, max_records_per_request=3)
    try:
        await transport.send(batch)
        assert_same_events(batch, second)
        assert any("derived_id" in json.loads(r.text).get("flags", []) for r in batch.records)
        await transport.send(batch)  # a retry after a lost answer: nothing is stored twice
    finally:
        await transport.close()
    assert_same_events(batch, second)
    assert len(rows(second.conninfo, "SELECT id FROM events")) == len(batch.records)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_ingest_token_goes_in_headers_and_a_wrong_one_is_named_not_shown(
    protocol: str, first: RunningCollector, second_db: str
) -> None:
    batch = fill(first)
    receiver = start(second_db, require_ingest_token=True)
    with psycopg.connect(second_db) as conn:
        token = access.create_token(conn, tenant="acme", role="ingest", name="stream", pepper=PEPPER)[1]
    wrong = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    try:
        bad = OtlpTransport(endpoint(receiver, protocol), protocol=protocol, headers={"Authorization": f"Bearer {wrong}"})
        try:
            with pytest.raises(DeliveryFailed) as failed:
                await bad.send(batch)
        finally:
            await bad.close()
        assert ("UNAUTHENTICATED" if protocol == "grpc" else "401") in failed.value.message
        assert wrong not in failed.value.message and wrong.rsplit("_", 1)[-1] not in failed.value.message
        assert wrong not in repr(bad)
        assert rows(second_db, "SELECT id FROM events") == []

        good = OtlpTransport(endpoint(receiver, protocol), protocol=protocol, headers={"Authorization": f"Bearer {token}"})
        try:
            await good.send(batch)
        finally:
            await good.close()
        assert_same_events(batch, receiver)
    finally:
        receiver.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_record_the_receiver_rejects_fails_the_batch_naming_it(
    protocol: str, first: RunningCollector, second: RunningCollector
) -> None:
    batch = fill(first)
    doc = json.loads(batch.records[1].text)
    doc["event"] = "noSuchEvent"
    records = list(batch.records)
    records[1] = Record(records[1].seq, records[1].id, json.dumps(doc))
    transport = OtlpTransport(endpoint(second, protocol), protocol=protocol)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await transport.send(Batch(batch.tenant, batch.stream_id, records))
    finally:
        await transport.close()
    message = failed.value.message
    assert "rejected 1 of the 4 records" in message and "partial_success" in message
    assert "noSuchEvent" in message, message
    assert failed.value.retry_after is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_stopped_receiver_is_a_connection_failure(protocol: str, first: RunningCollector, second_db: str) -> None:
    batch = fill(first)
    receiver = start(second_db)
    where = endpoint(receiver, protocol)
    receiver.stop()
    transport = OtlpTransport(where, protocol=protocol, timeout_seconds=5)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await transport.send(batch)
    finally:
        await transport.close()
    message = failed.value.message
    assert "connect" in message.lower(), message
    if protocol == "grpc":
        assert "UNAVAILABLE" in message


# -- RetryInfo and Retry-After, from servers of the test's own --------------------------------


def one_event_batch() -> Batch:
    doc = {
        "id": "e-1",
        "tenant": "acme",
        "event": "updateRole",
        "category": "accounts_configuration",
        "occurred_at": "2026-01-01T00:00:00.000001Z",
        "outcome": "success",
        "actor": {"type": "system"},
        "source": {"service": "accounts-api"},
        "seq": 1,
        "received_at": "2026-01-01T00:00:01.000000Z",
    }
    return Batch("acme", "s-otlp", [Record(1, "e-1", json.dumps(doc))])


@pytest.fixture
async def busy_grpc() -> AsyncIterator[str]:
    """A gRPC server answering every export UNAVAILABLE with a RetryInfo of 7.5 seconds."""

    async def export(_request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7, nanos=500_000_000))
        status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="busy: come back later")
        status.details.add().Pack(info)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "busy: come back later",
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
        raise AssertionError("unreachable")

    service, method = EXPORT_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(export)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_grpc_unavailable_with_retry_info_gives_retry_after(busy_grpc: str) -> None:
    transport = OtlpTransport(busy_grpc, protocol="grpc", headers={"authorization": "Bearer s3cret-token-text"})
    try:
        with pytest.raises(DeliveryFailed) as failed:
            await transport.send(one_event_batch())
    finally:
        await transport.close()
    assert failed.value.retry_after == 7.5
    assert "UNAVAILABLE" in failed.value.message and "busy: come back later" in failed.value.message
    assert "s3cret" not in failed.value.message


@pytest.fixture
async def busy_http() -> AsyncIterator[str]:
    """An HTTP server answering /v1/logs 503 with Retry-After: 12, then 429 with Retry-After: 3, then 500."""
    answers = [(503, "12"), (429, "3"), (500, None)]

    async def logs(request: web.Request) -> web.Response:
        await request.read()
        status, retry = answers.pop(0)
        headers = {"Retry-After": retry} if retry else {}
        return web.Response(status=status, text=f"overloaded ({request.headers.get('Authorization')})", headers=headers)

    app = web.Application()
    app.router.add_post("/v1/logs", logs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_503_and_429_with_retry_after_give_retry_after(busy_http: str) -> None:
    transport = OtlpTransport(busy_http, protocol="http", headers={"Authorization": "Bearer s3cret-token-text"})
    seen: list[DeliveryFailed] = []
    try:
        for _ in range(3):
            with pytest.raises(DeliveryFailed) as failed:
                await transport.send(one_event_batch())
            seen.append(failed.value)
    finally:
        await transport.close()
    assert [f.retry_after for f in seen] == [12.0, 3.0, None]
    assert "503" in seen[0].message and "429" in seen[1].message and "500" in seen[2].message
    assert "overloaded" in seen[0].message
    assert all("s3cret" not in f.message for f in seen), [f.message for f in seen]
