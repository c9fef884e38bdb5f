"""Nothing lost, nothing twice: the collector killed, the database stopped, the collector saturated."""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from pgcontrol import ControlledPostgres, free_port
from support import CollectorProcess, RunningCollector, count, good_attributes, record, request, rows, settings_for, wait_until
from test_ingest_clients import EXPORT

from otaudit_collector.app import ensure_partitions
from otaudit_collector.storage.migrate import apply_migrations

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


class RetryingClient:
    """Sends pre-built requests one after another, each until it is acknowledged, like a well-behaved OTLP client."""

    def __init__(self, target: str, bodies: list[bytes]) -> None:
        self.target = target
        self.bodies = bodies
        self.acknowledged = 0
        self.retryable_answers: list[grpc.RpcError] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 300),
        ]
        try:
            with grpc.insecure_channel(self.target, options=options) as channel:
                call = channel.unary_unary(
                    EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
                )
                for body in self.bodies:
                    deadline = time.monotonic() + 120
                    while True:
                        try:
                            response = call(body, timeout=15)
                        except grpc.RpcError as exc:
                            if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                                raise
                            self.retryable_answers.append(exc)
                            time.sleep(0.05)
                            continue
                        assert response.partial_success.rejected_log_records == 0, response.partial_success.error_message
                        self.acknowledged += 1
                        break
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.failure = exc

    def start(self) -> RetryingClient:
        self.thread.start()
        return self

    def join(self, timeout: float = 240) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "client did not finish"
        if self.failure is not None:
            raise self.failure


def batches(n_requests: int, per_request: int, tenant: str = "acme") -> list[bytes]:
    return [
        request([record(attrs=good_attributes(**{"audit.tenant.id": tenant})) for _ in range(per_request)]).SerializeToString()
        for _ in range(n_requests)
    ]


def assert_exactly_once(conninfo: str, expected: int, tenants: int = 1) -> None:
    stored = rows(conninfo, "SELECT tenant, seq, id FROM events ORDER BY tenant, seq")
    assert len(stored) == expected
    assert len({(r["tenant"], r["id"]) for r in stored}) == expected
    per_tenant: dict[str, list[int]] = {}
    for r in stored:
        per_tenant.setdefault(r["tenant"], []).append(r["seq"])
    assert len(per_tenant) == tenants
    for seqs in per_tenant.values():
        assert seqs == list(range(1, len(seqs) + 1))  # gap-free


@pytest.mark.slow
def test_collector_killed_mid_stream_and_restarted(db: str, tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    args = ["serve", "--database-url", db, "--grpc-port", ports[0], "--http-port", ports[1], "--api-port", ports[2]]
    proc = CollectorProcess(args, cwd=tmp_path).start()
    bodies = batches(120, 50)
    client = RetryingClient(proc.grpc_target, bodies).start()
    try:
        for kill_after in (20, 60):
            while client.acknowledged < kill_after and client.thread.is_alive():
                time.sleep(0.01)
            proc.kill()
            time.sleep(0.3)
            proc = CollectorProcess(args, cwd=tmp_path).start()
        client.join()
    finally:
        proc.terminate()
    assert client.acknowledged == len(bodies)
    assert client.retryable_answers, "the kills were not seen by the client"
    assert_exactly_once(db, 120 * 50)


@pytest.fixture
def controlled_pg() -> Iterator[ControlledPostgres]:
    # Not under tmp_path: a second pytest run on the machine prunes older temp roots.
    folder = Path(tempfile.mkdtemp(prefix="otaudit-test-controlled-pg-"))
    pg = ControlledPostgres(folder).init()
    pg.start()
    try:
        yield pg
    finally:
        try:
            pg.stop()
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgres_stopped_and_started_under_load(controlled_pg: ControlledPostgres) -> None:
    apply_migrations(controlled_pg.url)
    ensure_partitions(controlled_pg.url, 1)
    running = RunningCollector(settings_for(controlled_pg.url))
    try:
        bodies = batches(150, 40)
        clients = [RetryingClient(running.grpc_target, bodies[i::3]).start() for i in range(3)]
        while sum(c.acknowledged for c in clients) < 30:
            time.sleep(0.01)
        controlled_pg.stop()
        # While it is away: readiness is false, gRPC answers UNAVAILABLE with RetryInfo, HTTP 503 with Retry-After.
        deadline = time.monotonic() + 30
        while requests.get(running.api_url + "/readyz", timeout=5).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "database unreachable" in requests.get(running.api_url + "/readyz", timeout=5).json()["problems"][0]
        with grpc.insecure_channel(running.grpc_target) as channel:
            call = channel.unary_unary(
                EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
            )
            with pytest.raises(grpc.RpcError) as caught:
                call(request([record()]).SerializeToString(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(caught.value.trailing_metadata())
        assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 1
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
        http = requests.post(
            running.http_url,
            data=request([record()]).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert http.status_code == 503 and http.headers["Retry-After"] == "1"
        message = status_pb2.Status.FromString(http.content).message
        assert message == "the database is unreachable: retry later"  # no host or port for clients
        time.sleep(1.0)
        controlled_pg.start()
        for client in clients:
            client.join()
        assert requests.get(running.api_url + "/readyz", timeout=5).status_code == 200
        assert sum(len(c.retryable_answers) for c in clients) > 0
        assert_exactly_once(controlled_pg.url, 150 * 40)
    finally:
        running.stop()


def _lock_tenant_sequence(conninfo: str, tenant: str) -> psycopg.Connection[Any]:
    """Hold the tenant's sequence row lock so that the next commit for it waits."""
    with psycopg.connect(conninfo, autocommit=True) as setup:
        setup.execute("INSERT INTO tenant_seq VALUES (%s, 0) ON CONFLICT DO NOTHING", (tenant,))
    conn = psycopg.connect(conninfo)
    conn.execute("SELECT * FROM tenant_seq WHERE tenant = %s FOR UPDATE", (tenant,))
    return conn


def test_saturation_is_refused_as_retryable_and_nothing_is_lost(db: str) -> None:
    running = RunningCollector(settings_for(db, {("ingest", "max_concurrent_requests"): 2, ("ingest", "max_pending_records"): 6}))
    blocker = _lock_tenant_sequence(db, "acme")
    try:
        first = RetryingClient(running.grpc_target, batches(1, 4)).start()
        wait_until(lambda: running.collector.writer.pending_records >= 4, what="4 records waiting for their commit")
        # 4 records wait for their commit; 4 more would pass the limit of 6.
        with grpc.insecure_channel(running.grpc_target) as channel:
            call = channel.unary_unary(
                EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
            )
            with pytest.raises(grpc.RpcError) as caught:
                call(batches(1, 4)[0], timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "waiting to be committed (limit 6)" in caught.value.details()
        assert "google.rpc.retryinfo-bin" in dict(caught.value.trailing_metadata())
        http = requests.post(
            running.http_url, data=batches(1, 4)[0], headers={"Content-Type": "application/x-protobuf"}, timeout=10
        )
        assert http.status_code == 429 and http.headers["Retry-After"] == "1"
        blocker.rollback()
        first.join()
        assert count(db) == 4
        assert running.collector.writer.pending_records == 0
        retry = RetryingClient(running.grpc_target, batches(2, 4)).start()
        retry.join()
        assert count(db) == 12
    finally:
        blocker.close()
        running.stop()


def test_too_many_concurrent_requests_is_refused_as_retryable(db: str) -> None:
    running = RunningCollector(settings_for(db, {("ingest", "max_concurrent_requests"): 1}))
    blocker = _lock_tenant_sequence(db, "acme")
    try:
        first = RetryingClient(running.grpc_target, batches(1, 1)).start()
        wait_until(lambda: running.collector.ingestor.in_flight >= 1, what="a request in flight")
        http = requests.post(
            running.http_url, data=batches(1, 1)[0], headers={"Content-Type": "application/x-protobuf"}, timeout=10
        )
        assert http.status_code == 429
        assert "requests are being processed (limit 1)" in status_pb2.Status.FromString(http.content).message
        blocker.rollback()
        first.join()
        assert count(db) == 1
    finally:
        blocker.close()
        running.stop()


def test_sigterm_under_load_loses_nothing_acknowledged(db: str, tmp_path: Path) -> None:
    proc = CollectorProcess(
        ["serve", "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"], cwd=tmp_path
    ).start()
    acknowledged: list[int] = []

    def send() -> None:
        with grpc.insecure_channel(proc.grpc_target) as channel:
            call = channel.unary_unary(
                EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
            )
            for body in batches(400, 20):
                try:
                    call(body, timeout=15)
                except grpc.RpcError:
                    return
                acknowledged.append(20)

    sender = threading.Thread(target=send)
    sender.start()
    while sum(acknowledged) < 400:
        time.sleep(0.01)
    assert proc.terminate() == 0
    sender.join(30)
    # Every acknowledged record is stored; at most the one request in flight was committed unanswered.
    stored = count(db)
    assert sum(acknowledged) <= stored <= sum(acknowledged) + 20
    assert len({r["id"] for r in rows(db, "SELECT id FROM events")}) == stored
    assert uuid.UUID(rows(db, "SELECT id FROM events LIMIT 1")[0]["id"])


def _held_collector(db: str, tmp_path: Path, grace_seconds: float) -> tuple[CollectorProcess, psycopg.Connection[Any]]:
    """A collector whose next commit for tenant acme blocks: acme's tenant_seq row is locked
    by a transaction of the test's, until the test ends it."""
    config = tmp_path / "otaudit.yaml"
    config.write_text(f"shutdown:\n  grace_seconds: {grace_seconds}\n", encoding="utf-8")
    proc = CollectorProcess(
        ["serve", "--config", str(config), "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"],
        cwd=tmp_path,
    ).start()
    with grpc.insecure_channel(proc.grpc_target) as channel:
        channel.unary_unary(EXPORT)(batches(1, 1)[0], timeout=30)  # acme's tenant_seq row exists
    lock = psycopg.connect(db)
    lock.execute("SELECT * FROM tenant_seq WHERE tenant = 'acme' FOR UPDATE")
    return proc, lock


def _send_in_background(target: str, body: bytes) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def send() -> None:
        with grpc.insecure_channel(target) as channel:
            try:
                answers.append(channel.unary_unary(EXPORT)(body, timeout=60))
            except grpc.RpcError as exc:
                answers.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, answers


def _held_in_commit(db: str) -> bool:
    found = rows(db, "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
    return bool(found[0]["n"])


def test_sigterm_stops_taking_requests_and_answers_the_one_in_flight_once_committed(db: str, tmp_path: Path) -> None:
    proc, lock = _held_collector(db, tmp_path, grace_seconds=30)
    try:
        thread, answers = _send_in_background(proc.grpc_target, batches(1, 5)[0])
        wait_until(lambda: _held_in_commit(db), what="the request to wait in its commit")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any("stopping: finishing requests in flight" in line for line in proc.output), what="the stop")
        with grpc.insecure_channel(proc.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(EXPORT)(batches(1, 1)[0], timeout=10)  # no new request is taken
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.proc.poll() is None and not answers, "still draining: the request in flight waits for its commit"
    finally:
        lock.rollback()  # the commit goes through
        lock.close()
    thread.join(60)
    assert proc.proc.wait(60) == 0
    (answer,) = answers
    assert not isinstance(answer, grpc.RpcError), f"the request in flight was answered with an error: {answer}"
    assert count(db) == 6, "acknowledged, so stored: 1 before, 5 in flight"
    assert (
        rows(db, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")[0][
            "n"
        ]
        == 0
    ), "the database connections are closed"


def test_sigterm_exits_within_the_grace_period_and_acknowledges_nothing_uncommitted(db: str, tmp_path: Path) -> None:
    proc, lock = _held_collector(db, tmp_path, grace_seconds=2)
    try:
        thread, answers = _send_in_background(proc.grpc_target, batches(1, 5)[0])
        wait_until(lambda: _held_in_commit(db), what="the request to wait in its commit")
        assert proc.terminate(timeout=60) == 0, "the grace period ended the drain, and the exit is clean"
        thread.join(60)
        (answer,) = answers
        assert isinstance(answer, grpc.RpcError), "the commit did not finish: the request is not acknowledged"
        assert answer.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert any("did not finish in time and is abandoned" in line for line in proc.output)
    finally:
        lock.rollback()
        lock.close()
    assert count(db) == 1, "only what was acknowledged before is stored"


def test_readiness_needs_the_schema_and_comes_back_without_a_restart(collector: RunningCollector) -> None:
    ready = collector.api_url + "/readyz"
    assert requests.get(ready, timeout=10).status_code == 200
    with psycopg.connect(collector.conninfo, autocommit=True) as conn:
        latest = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version DESC LIMIT 1").fetchone()
        assert latest is not None
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (latest[0],))  # as if restored from an old backup
        wait_until(lambda: requests.get(ready, timeout=10).status_code == 503, timeout=30, what="readiness to turn false")
        problems = requests.get(ready, timeout=10).json()["problems"]
        assert problems == [
            f"database schema is at migration {latest[0] - 1}, this collector needs {latest[0]}: run 'otaudit migrate'"
        ]
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", latest)
    wait_until(lambda: requests.get(ready, timeout=10).status_code == 200, timeout=30, what="readiness to come back")
