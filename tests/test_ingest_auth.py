"""Ingest tokens on OTLP, against a real collector and PostgreSQL, with the stock OTel
exporters, raw gRPC and HTTP clients and the project's SDK: who may write, to which tenant,
and what a refused client is told."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceProto
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from pgcontrol import ControlledPostgres, free_port
from support import RunningCollector, any_value, count, good_attributes, record, request, rows, settings_for, wait_until
from test_faults import controlled_pg  # noqa: F401 - a fixture
from test_ingest_clients import EXPORT

import otaudit_sdk as audit
from otaudit_collector.app import ensure_partitions
from otaudit_collector.config import ConfigError, load_settings
from otaudit_collector.core.errors import PermissionDenied, Unauthenticated, Unavailable
from otaudit_collector.core.tokens import parse_token
from otaudit_collector.receivers.auth import GRPC_METADATA, IngestAuth
from otaudit_collector.storage import access
from otaudit_collector.storage.migrate import apply_migrations

PEPPER = "ingest-auth-tests-pepper-0123456789"
UNKNOWN = "otaudit_000000000000_" + "x" * 43
TRANSPORTS = ["grpc", "http"]
# What each transport answers for a missing or wrong token, and for a token of the wrong role.
UNAUTHENTICATED = {"grpc": "UNAUTHENTICATED", "http": "401"}
PERMISSION_DENIED = {"grpc": "PERMISSION_DENIED", "http": "403"}


def start(db: str, *, required: bool = True, cache_seconds: float = 10, **extra: Any) -> RunningCollector:
    overrides: dict[tuple[str, ...], Any] = {
        ("auth", "token_pepper"): PEPPER,
        ("auth", "require_ingest_token"): required,
        ("auth", "token_cache_seconds"): cache_seconds,
    }
    overrides.update({tuple(key.split("__")): value for key, value in extra.items()})
    return RunningCollector(settings_for(db, overrides))


@pytest.fixture
def secured(db: str) -> Iterator[RunningCollector]:
    """A collector that requires ingest tokens."""
    running = start(db)
    yield running
    running.stop()


def make_token(db: str, tenant: str = "acme", role: str = "ingest") -> str:
    with psycopg.connect(db) as conn:
        return access.create_token(conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper=PEPPER)[1]


def revoke(db: str, token: str) -> None:
    with psycopg.connect(db) as conn:
        assert access.revoke_token(conn, token)


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- clients ---------------------------------------------------------------------------


def send_grpc(target: str, req: ExportLogsServiceRequest, authorization: str | None = None) -> ExportLogsServiceResponse:
    metadata = (("authorization", authorization),) if authorization is not None else None
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString)
        return call(req.SerializeToString(), timeout=30, metadata=metadata)  # type: ignore[no-any-return]


def send_http(url: str, req: ExportLogsServiceRequest, authorization: str | None = None) -> requests.Response:
    headers = {"Content-Type": "application/x-protobuf"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.post(url, data=req.SerializeToString(), headers=headers, timeout=30)


def send(
    collector: RunningCollector, transport: str, req: ExportLogsServiceRequest, authorization: str | None
) -> ExportLogsServiceResponse:
    """An accepted request's answer, over either transport."""
    if transport == "grpc":
        return send_grpc(collector.grpc_target, req, authorization)
    answer = send_http(collector.http_url, req, authorization)
    assert answer.status_code == 200, answer.content
    return ExportLogsServiceResponse.FromString(answer.content)


def refusal(
    collector: RunningCollector, transport: str, authorization: str | None, req: ExportLogsServiceRequest | None = None
) -> tuple[str, str]:
    """(status, message) of a refused request: the gRPC code's name, or the HTTP status."""
    req = req if req is not None else request([record()])
    if transport == "grpc":
        with pytest.raises(grpc.RpcError) as caught:
            send_grpc(collector.grpc_target, req, authorization)
        return caught.value.code().name, caught.value.details() or ""
    answer = send_http(collector.http_url, req, authorization)
    assert answer.status_code != 200
    if answer.status_code == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    return str(answer.status_code), status_pb2.Status.FromString(answer.content).message


class Recorder:
    """Wraps a stock exporter and keeps what each export returned (the stock SDK drops it)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.results: list[LogRecordExportResult] = []

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        result: LogRecordExportResult = self.inner.export(batch)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self.inner.shutdown()


def stock_exporter(collector: RunningCollector, transport: str, token: str | None) -> Any:
    if transport == "grpc":
        headers = {"authorization": bearer(token)} if token else None
        return GrpcLogExporter(endpoint=collector.grpc_target, insecure=True, headers=headers)
    return HttpLogExporter(endpoint=collector.http_url, headers={"Authorization": bearer(token)} if token else None)


def emit_stock(
    exporter: Any, events: list[dict[str, Any]], resource: dict[str, Any] | None = None
) -> list[LogRecordExportResult]:
    """Emit ``events`` (attribute maps of updateRole events) with the stock OTel SDK; what each export returned."""
    recorder = Recorder(exporter)
    provider = LoggerProvider(resource=Resource.create(resource or {"service.name": "stock-sdk-service"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(recorder))  # type: ignore[arg-type]
    logger = provider.get_logger("audit")
    for attributes in events:
        logger.emit(event_name="updateRole", timestamp=time.time_ns(), attributes=attributes)
    provider.shutdown()
    return recorder.results


def tenantless(**over: Any) -> dict[str, Any]:
    """updateRole attributes naming no tenant."""
    return good_attributes(**{"audit.tenant.id": None, **over})


def uid_of(attributes: dict[str, Any]) -> str:
    return str(attributes["log.record.uid"])


# -- configuration ---------------------------------------------------------------------


def test_the_settings_default_to_no_token_required_and_are_checked() -> None:
    defaults = load_settings(None, environ={})
    assert (defaults.get("auth", "require_ingest_token"), defaults.get("auth", "token_cache_seconds")) == (False, 10)
    for said, meant in (("true", True), ("1", True), ("Yes\n", True), ("false", False), ("off", False)):
        assert load_settings(None, environ={"OTAUDIT_REQUIRE_INGEST_TOKEN": said}).get("auth", "require_ingest_token") is meant
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"OTAUDIT_REQUIRE_INGEST_TOKEN": "maybe"}, overrides={("auth", "token_cache_seconds"): -1})
    assert caught.value.problems == [
        "OTAUDIT_REQUIRE_INGEST_TOKEN: 'maybe' is not true or false",
        "auth.token_cache_seconds: -1 is less than the minimum of 0 (set by the command line)",
    ]


# -- a required token ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_without_a_token_is_refused_with_what_to_send(secured: RunningCollector, transport: str) -> None:
    for authorization in (None, "Basic dXNlcjpwYXNz", "Bearer "):
        status, message = refusal(secured, transport, authorization)
        assert status == UNAUTHENTICATED[transport]
        assert "this collector requires an ingest token" in message
        assert "'authorization: Bearer <token>'" in message
        assert "otaudit token create --tenant TENANT --role ingest" in message
    # The stock exporter without headers: refused, not retried, nothing stored.
    results = emit_stock(stock_exporter(secured, transport, None), [good_attributes()])
    assert results == [LogRecordExportResult.FAILURE]
    assert count(secured.conninfo) == 0 and count(secured.conninfo, "rejects") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_token_is_refused_and_not_echoed(secured: RunningCollector, transport: str) -> None:
    cases = [
        (UNKNOWN, "the ingest token 000000000000 is unknown or revoked: send a live ingest token"),
        ("otaudit_0123_short", "is malformed (expected otaudit_<id>_<secret>"),
        ("eyJhbGciOiJIUzI1NiJ9.gateway.jwt", "is not an otaudit token (otaudit_<id>_<secret>)"),
    ]
    for token, words in cases:
        status, message = refusal(secured, transport, bearer(token))
        assert status == UNAUTHENTICATED[transport]
        assert words in message
        assert token not in message and "x" * 43 not in message
    # A token made under another pepper does not match either.
    with psycopg.connect(secured.conninfo) as conn:
        other = access.create_token(conn, tenant="acme", role="ingest", name="elsewhere", pepper="another-pepper-of-16-chars")[1]
    status, message = refusal(secured, transport, bearer(other))
    assert status == UNAUTHENTICATED[transport] and "unknown or revoked" in message
    results = emit_stock(stock_exporter(secured, transport, UNKNOWN), [good_attributes()])
    assert results == [LogRecordExportResult.FAILURE]
    assert count(secured.conninfo) == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_admin_and_auditor_tokens_cannot_write(secured: RunningCollector, transport: str) -> None:
    for role in ("admin", "auditor"):
        token = make_token(secured.conninfo, role=role)
        status, message = refusal(secured, transport, bearer(token))
        assert status == PERMISSION_DENIED[transport]
        token_id = (parse_token(token) or ("", ""))[0]
        assert f"token {token_id} is an {role} token" in message
        assert "use an ingest token" in message
        assert token not in message
    assert count(secured.conninfo) == 0


def test_a_revoked_token_stops_working_once_the_cache_expires(db: str) -> None:
    running = start(db, cache_seconds=0.2)
    try:
        token = make_token(db)
        for transport in TRANSPORTS:
            results = emit_stock(stock_exporter(running, transport, token), [good_attributes()])
            assert results == [LogRecordExportResult.SUCCESS]
        assert count(db) == 2
        revoke(db, token)

        def refused() -> bool:
            try:
                send_grpc(running.grpc_target, ExportLogsServiceRequest(), bearer(token))  # empty: stores nothing
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc.details()
                return True
            return False

        wait_until(refused, timeout=30, what="the revoked token to be refused")
        for transport in TRANSPORTS:
            status, message = refusal(running, transport, bearer(token))
            assert status == UNAUTHENTICATED[transport] and "is unknown or revoked" in message
            results = emit_stock(stock_exporter(running, transport, token), [good_attributes()])
            assert results == [LogRecordExportResult.FAILURE]
        assert count(db) == 2
    finally:
        running.stop()


async def test_a_verified_token_is_trusted_for_token_cache_seconds(db: str) -> None:
    now = [1000.0]
    auth = IngestAuth(db, pepper=PEPPER, required=True, cache_seconds=10, retry_after_seconds=1, clock=lambda: now[0])
    token = make_token(db, tenant="globex")
    try:
        principal = await auth.check(bearer(token), via=GRPC_METADATA)
        assert principal is not None and (principal.tenant, principal.role) == ("globex", "ingest")
        revoke(db, token)
        now[0] += 9.5  # still trusted: the database is not asked again
        cached = await auth.check(bearer(token), via=GRPC_METADATA)
        assert cached == principal
        now[0] += 1  # past token_cache_seconds: looked up again, and found revoked
        with pytest.raises(Unauthenticated, match="unknown or revoked"):
            await auth.check(bearer(token), via=GRPC_METADATA)
        admin = make_token(db, role="admin")
        with pytest.raises(PermissionDenied, match="use an ingest token"):
            await auth.check(bearer(admin), via=GRPC_METADATA)
    finally:
        await auth.close()


async def test_an_unreachable_database_while_checking_a_token_is_retryable_not_a_refusal() -> None:
    now = [0.0]
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    auth = IngestAuth(nowhere, pepper=PEPPER, required=True, cache_seconds=10, retry_after_seconds=1, clock=lambda: now[0])
    try:
        for _ in range(2):  # the second is answered at once, without queueing for the database
            with pytest.raises(Unavailable) as caught:
                await auth.check(bearer(UNKNOWN), via=GRPC_METADATA)
            err = caught.value
            assert (err.status.grpc_code, err.status.http_status, err.status.retryable) == (
                grpc.StatusCode.UNAVAILABLE,
                503,
                True,
            )
            assert err.retry_after_seconds == 1
            assert err.message == "the database is unreachable, so the token cannot be checked: retry later"
    finally:
        await auth.close()


@pytest.mark.slow
def test_the_database_stopping_while_a_token_is_checked_answers_retryable(controlled_pg: ControlledPostgres) -> None:  # noqa: F811
    apply_migrations(controlled_pg.url)
    ensure_partitions(controlled_pg.url, 1)
    token = make_token(controlled_pg.url)
    running = start(controlled_pg.url)
    req = request([record()])  # the same request every time: stored once however often it is retried
    try:
        controlled_pg.stop()
        with pytest.raises(grpc.RpcError) as caught:
            send_grpc(running.grpc_target, req, bearer(token))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the token cannot be checked: retry later" in (caught.value.details() or "")
        trailers = dict(caught.value.trailing_metadata() or ())
        assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 1
        answer = send_http(running.http_url, req, bearer(token))
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        controlled_pg.start()

        def stored() -> bool:
            try:
                response = send_grpc(running.grpc_target, req, bearer(token))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                return False
            return response.partial_success.rejected_log_records == 0

        wait_until(stored, timeout=60, what="the collector to store again")
        assert count(controlled_pg.url) == 1
    finally:
        running.stop()


# -- the token's tenant ----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_records_naming_no_tenant_get_the_token_s_tenant(db: str, transport: str) -> None:
    running = start(db, ingest__default_tenant="sidecar")
    try:
        token = make_token(db, tenant="globex")
        events = [tenantless(), tenantless(), good_attributes(**{"audit.tenant.id": "globex"})]
        assert emit_stock(stock_exporter(running, transport, token), events) == [LogRecordExportResult.SUCCESS] * 3
        stored = {r["id"]: r["tenant"] for r in rows(db)}
        assert stored == {uid_of(e): "globex" for e in events}  # the token's tenant, not ingest.default_tenant
    finally:
        running.stop()


def test_a_record_claiming_another_tenant_is_rejected_and_the_rest_of_the_batch_stored(secured: RunningCollector) -> None:
    token = make_token(secured.conninfo, tenant="acme")
    good, foreign, unnamed = good_attributes(), good_attributes(**{"audit.tenant.id": "globex"}), tenantless()
    broken = tenantless(**{"audit.target.type": "license"})  # updateRole needs a role: a catalog reject
    req = request([record(attrs=good), record(attrs=foreign), record(attrs=unnamed), record(attrs=broken)])
    claimed = req.resource_logs.add()  # a second resource that names another tenant for its records
    claimed.resource.attributes.extend([KeyValue(key="audit.tenant.id", value=any_value("initech"))])
    from_resource = tenantless()
    claimed.scope_logs.add().log_records.append(record(attrs=from_resource))

    response = send_grpc(secured.grpc_target, req, bearer(token))

    assert response.partial_success.rejected_log_records == 3
    message = response.partial_success.error_message
    assert message.startswith("3 record(s) rejected, 1 of them quarantined: ")
    assert (
        "record 1 (resource_logs[0].scope_logs[0].log_records[1], event 'updateRole', category 'accounts_configuration'):"
        " tenant 'globex' is not the token's tenant 'acme'; an ingest token writes only its own tenant"
    ) in message
    assert (
        "record 4 (resource_logs[1].scope_logs[0].log_records[0], event 'updateRole', category 'accounts_configuration'):"
        " tenant 'initech' is not the token's tenant 'acme'; an ingest token writes only its own tenant"
    ) in message
    assert "record 3 (" in message and "/target/type" in message
    assert {r["id"]: r["tenant"] for r in rows(secured.conninfo)} == {uid_of(good): "acme", uid_of(unnamed): "acme"}
    # Only the catalog reject is quarantined, under the token's tenant, and its stored resource
    # now names that tenant: a replay (which has no token) cannot put it anywhere else.
    (quarantined,) = rows(secured.conninfo, "SELECT * FROM rejects")
    assert quarantined["tenant"] == "acme" and quarantined["event"] == "updateRole"
    resource = ResourceProto.FromString(bytes(quarantined["resource"]))
    assert [(kv.key, kv.value.string_value) for kv in resource.attributes if kv.key == "audit.tenant.id"] == [
        ("audit.tenant.id", "acme")
    ]
    assert [r["tenant"] for r in rows(secured.conninfo, "SELECT tenant FROM tenants")] == ["acme"]  # no tenant was made


def test_the_sdk_sends_its_token_and_hears_about_a_foreign_tenant(secured: RunningCollector, tmp_path: Path) -> None:
    token = make_token(secured.conninfo, tenant="acme")
    rejected: list[audit.Rejected] = []
    audit.configure(
        endpoint=secured.http_url,
        protocol="http/protobuf",
        service_name="accounts-api",
        tenant="acme",
        token=token,
        buffer_dir=tmp_path / "buffer",
        on_reject=rejected.append,
        retry_initial_seconds=0.05,
    )
    try:
        ann = audit.Actor.user("u-17", email="ann@acme.test")
        ours = [audit.record("siteAccess", category="site_access", actor=ann, details={"method": "sso"}) for _ in range(2)]
        theirs = audit.record("siteAccess", category="site_access", actor=ann, tenant="globex", details={"method": "sso"})
        assert audit.flush(30)
    finally:
        assert audit.shutdown(30)
    assert [r["id"] for r in rows(secured.conninfo)] == ours
    assert [(r.id, r.tenant) for r in rejected] == [(theirs, "globex")]
    assert "tenant 'globex' is not the token's tenant 'acme'; an ingest token writes only its own tenant" in rejected[0].reason
    assert count(secured.conninfo, "rejects") == 0


# -- tokens not required ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_without_the_setting_requests_without_a_token_are_stored_as_before(db: str, transport: str) -> None:
    running = start(db, required=False, ingest__default_tenant="sidecar")
    try:
        plain = good_attributes(**{"audit.tenant.id": "globex"})
        unnamed = tenantless()
        assert emit_stock(stock_exporter(running, transport, None), [plain, unnamed]) == [LogRecordExportResult.SUCCESS] * 2
        gateway = good_attributes(**{"audit.tenant.id": "initech"})  # a bearer token that is not ours is left alone
        assert (
            send(
                running, transport, request([record(attrs=gateway)]), "Bearer gateway-issued-token"
            ).partial_success.rejected_log_records
            == 0
        )
        expected = {uid_of(plain): "globex", uid_of(unnamed): "sidecar", uid_of(gateway): "initech"}
        assert {r["id"]: r["tenant"] for r in rows(db)} == expected

        # A token that is sent must still be a live ingest token, and it still binds its tenant.
        status, message = refusal(running, transport, bearer(UNKNOWN))
        assert status == UNAUTHENTICATED[transport] and "unknown or revoked" in message
        status, message = refusal(running, transport, bearer(make_token(db, role="auditor")))
        assert status == PERMISSION_DENIED[transport] and "use an ingest token" in message
        token = make_token(db, tenant="acme")
        bound = send(
            running,
            transport,
            request([record(attrs=tenantless()), record(attrs=plain | {"log.record.uid": str(uuid.uuid4())})]),
            bearer(token),
        )
        assert bound.partial_success.rejected_log_records == 1
        assert "tenant 'globex' is not the token's tenant 'acme'" in bound.partial_success.error_message
        assert sorted(r["tenant"] for r in rows(db)) == ["acme", "globex", "initech", "sidecar"]
    finally:
        running.stop()


# -- logs ------------------------------------------------------------------------------


def test_no_token_appears_in_the_logs(db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    running = start(db, cache_seconds=0)
    try:
        ingest, admin, revoked = make_token(db), make_token(db, role="admin"), make_token(db)
        revoke(db, revoked)
        malformed = ingest[:-3]
        for transport in TRANSPORTS:
            answer = send(
                running,
                transport,
                request([record(), record(attrs=good_attributes(**{"audit.tenant.id": "globex"}))]),
                bearer(ingest),
            )
            assert answer.partial_success.rejected_log_records == 1
            for token, expected in (
                (admin, PERMISSION_DENIED),
                (revoked, UNAUTHENTICATED),
                (malformed, UNAUTHENTICATED),
                (UNKNOWN, UNAUTHENTICATED),
            ):
                assert refusal(running, transport, bearer(token))[0] == expected[transport]
    finally:
        running.stop()
    said = [(r.getMessage(), vars(r)) for r in caplog.records]
    # The refusals were logged (with the token's id, which is not a secret) ...
    revoked_id = (parse_token(revoked) or ("", ""))[0]
    assert any(
        m == "OTLP request refused: the ingest token is unknown or revoked" and v.get("token_id") == revoked_id for m, v in said
    )
    assert any(m == "OTLP request refused: not an ingest token" and v.get("role") == "admin" for m, v in said)
    assert any(m == "records refused: an ingest token may write only its own tenant" and v.get("refused") == 1 for m, v in said)
    # ... and no token, nor its secret, is anywhere in what was logged.
    text = caplog.text + "".join(repr(v) for _, v in said)
    for token in (ingest, admin, revoked, malformed, UNKNOWN):
        secret = token.split("_", 2)[2]
        assert token not in text and secret not in text
