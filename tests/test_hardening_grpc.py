"""OTLP/gRPC under stalled-stream attack, and the SDK's reading of RESOURCE_EXHAUSTED (issue 11).

An attacker opens Export calls and never sends their message. Such a call must not hold a
slot for long (``ingest.body_timeout_seconds``), must not be let in without a token when one
is required, and must not starve honest clients: they are served, or told UNAVAILABLE with
RetryInfo, never RESOURCE_EXHAUSTED (which clients read as "request too large"). The SDK
splits a batch only on a RESOURCE_EXHAUSTED that says the request is too large.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from sdk_fakes import FakeCollector, Reply
from support import RunningCollector, count, good_attributes, record, request, rows, settings_for, wait_until
from test_ingest_clients import EXPORT, emit_with_stock_sdk

from otaudit_collector.storage import access
from otaudit_sdk._transport import GrpcTransport

PEPPER = "a-test-pepper-of-at-least-16-chars"
WAIT = 30.0
"""The most any test here waits for an answer: a stalled call still open then is a failure."""


@dataclass(frozen=True)
class Ended:
    """How a call ended, as its client saw it."""

    code: grpc.StatusCode
    details: str
    retry_delay: float | None


def retry_delay(trailers: Sequence[tuple[str, Any]] | None) -> float | None:
    for key, value in trailers or ():
        if key == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo.FromString(value)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


class Stalls:
    """Export calls that start and send nothing more, on their own event loop and connections.

    ``per_connection`` calls on each of ``connections`` channels: each channel has its own
    subchannel pool, hence its own TCP connection. ``message`` (if any) is sent and the
    stream is then held open without a half-close. ``wait``: return once every call has
    been sent (not possible when calls queue in the client).
    """

    def __init__(
        self,
        target: str,
        *,
        connections: int,
        per_connection: int,
        metadata: tuple[tuple[str, str], ...] = (),
        message: bytes | None = None,
        wait: bool = True,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stalls", daemon=True)
        self.thread.start()
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[Any] = []
        self._tasks: list[asyncio.Task[Ended | None]] = []
        self._call(self._open(target, connections, per_connection, metadata, message, wait))

    def _call(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(
        self,
        target: str,
        connections: int,
        per_connection: int,
        metadata: tuple[tuple[str, str], ...],
        message: bytes | None,
        wait: bool,
    ) -> None:
        self._release = asyncio.Event()

        async def requests() -> AsyncIterator[bytes]:
            if message is not None:
                yield message
            await self._release.wait()  # never set while the test runs

        for _ in range(connections):
            channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            self._channels.append(channel)
            export = channel.stream_unary(EXPORT, request_serializer=None, response_deserializer=None)
            for _ in range(per_connection):
                call = export(requests(), metadata=metadata)
                self._calls.append(call)
                self._tasks.append(asyncio.ensure_future(self._outcome(call)))
        # Each call's headers are sent (or the call already ended) before the test goes on; unless the calls
        # queue in the client (over a connection's bound), where they would wait for ever.
        if wait:
            await asyncio.gather(*(call.wait_for_connection() for call in self._calls), return_exceptions=True)

    @staticmethod
    async def _outcome(call: Any) -> Ended | None:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            return Ended(exc.code(), exc.details() or "", retry_delay(exc.trailing_metadata()))
        return None  # answered OK: not what a stalled call should get

    def ended(self) -> list[Ended | None]:
        """The answers of the calls that have ended so far."""

        async def done() -> list[Ended | None]:
            return [task.result() for task in self._tasks if task.done()]

        return self._call(done())  # type: ignore[no-any-return]

    def wait_all(self) -> list[Ended | None]:
        """Every call's answer; fails the test if one is still open after ``WAIT`` seconds."""

        async def all_of() -> list[Ended | None]:
            return list(await asyncio.wait_for(asyncio.gather(*self._tasks), WAIT))

        return self._call(all_of(), WAIT + 10)  # type: ignore[no-any-return]

    def close(self) -> None:
        async def shut() -> None:
            for call in self._calls:
                call.cancel()
            for channel in self._channels:
                await channel.close()
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]  # grpc's request feeders
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self._call(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def assert_retryable_overload(ended: Sequence[Ended | None]) -> None:
    for answer in ended:
        assert answer is not None, "a stalled call was answered OK"
        assert answer.code == grpc.StatusCode.UNAVAILABLE, answer
        assert answer.retry_delay is not None, f"no RetryInfo with {answer}"


def export_raw(target: str, body: bytes, **kwargs: Any) -> ExportLogsServiceResponse:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 128 << 20)]) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString)
        return call(body, timeout=30, **kwargs)  # type: ignore[no-any-return]


class Collectors:
    """Starts collectors with this file's settings (a long body timeout unless said), and stops them after the test."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.started: list[RunningCollector] = []

    def start(self, extra: dict[tuple[str, ...], Any] | None = None) -> RunningCollector:
        settings = {("ingest", "body_timeout_seconds"): 300, ("auth", "token_pepper"): PEPPER, **(extra or {})}
        self.started.append(RunningCollector(settings_for(self.db, settings)))
        return self.started[-1]


@pytest.fixture
def collectors(db: str) -> Iterator[Collectors]:
    made = Collectors(db)
    yield made
    for running in made.started:
        running.stop()


@pytest.fixture
def stalls() -> Iterator[list[Stalls]]:
    opened: list[Stalls] = []
    yield opened
    for each in opened:
        each.close()


# -- the collector -----------------------------------------------------------------------


def test_stalled_streams_do_not_starve_honest_clients(collectors: Collectors, stalls: list[Stalls]) -> None:
    """200 stalled calls over 20 connections (over the 64 calls that may wait for their message): honest unary
    clients are still served, and the stalled calls ended are told UNAVAILABLE with RetryInfo."""
    running = collectors.start({("ingest", "max_request_bytes"): 1 << 20})
    target = running.grpc_target
    stalls.append(Stalls(target, connections=20, per_connection=10))

    # A plain stub, with and without gzip.
    plain = export_raw(target, request([record()]).SerializeToString())
    assert plain.partial_success.rejected_log_records == 0
    zipped = export_raw(target, request([record()]).SerializeToString(), compression=grpc.Compression.Gzip)
    assert zipped.partial_success.rejected_log_records == 0
    # The otaudit SDK's transport, gzip on.
    transport = GrpcTransport(f"http://{target}", {}, gzip_body=True, certificate=None)
    try:
        answer = transport.send(request([record()]).SerializeToString(), timeout=30)
        assert (answer.kind, answer.rejected) == ("ok", 0), answer
        # Over max_request_bytes: still the size answer, read by the SDK as "split the batch".
        oversized = transport.send(request([record(attrs=good_attributes(pad="x" * (2 << 20)))]).SerializeToString(), 30)
        assert oversized.kind == "too_large" and "larger than max" in oversized.message, oversized
    finally:
        transport.close()
    # The stock OpenTelemetry exporter (it retries what it may: it must not have to).
    uid = str(uuid.uuid4())
    emit_with_stock_sdk(
        GrpcLogExporter(endpoint=target, insecure=True, timeout=30),
        [{"event": "updateRole", "attributes": good_attributes(**{"log.record.uid": uid, "audit.tenant.id": None})}],
    )
    assert [r["id"] for r in rows(running.conninfo, "SELECT id FROM events WHERE id = %s", (uid,))] == [uid]
    assert count(running.conninfo) == 4

    # No stalled call was let in past the bound and none was told RESOURCE_EXHAUSTED: those ended
    # (the ones waiting longest when newer calls came) may retry.
    wait_until(lambda: len(stalls[0].ended()) >= 200 - 64, WAIT, "the stalled calls over the bound to be ended")
    ended = stalls[0].ended()
    assert_retryable_overload(ended)
    assert all("waited longest" in e.details for e in ended if e is not None)


def test_calls_whose_message_does_not_arrive_whole_in_time_are_ended(collectors: Collectors, stalls: list[Stalls]) -> None:
    running = collectors.start({("ingest", "body_timeout_seconds"): 1})
    target = running.grpc_target
    # Calls that send nothing, and calls that send their message but never end their side.
    silent = Stalls(target, connections=2, per_connection=8)
    stalls.append(silent)
    unfinished = Stalls(target, connections=1, per_connection=4, message=request([record()]).SerializeToString())
    stalls.append(unfinished)

    for answer in silent.wait_all() + unfinished.wait_all():
        assert_retryable_overload([answer])
        assert answer is not None and "body_timeout_seconds" in answer.details
    assert count(running.conninfo) == 0  # a message whose call did not end is not stored

    # Their slots are free: nothing is left in flight, and honest clients are served.
    gauge = running.collector.metrics.requests_in_flight.labels("grpc")
    wait_until(lambda: gauge._value.get() == 0, WAIT, "the ended calls to leave")
    assert export_raw(target, request([record()]).SerializeToString()).partial_success.rejected_log_records == 0

    # Two messages in one Export call: refused, nothing stored.
    async def two_messages() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(target) as channel:
            body = request([record()]).SerializeToString()

            async def both() -> AsyncIterator[bytes]:
                yield body
                yield body

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.stream_unary(EXPORT, request_serializer=None, response_deserializer=None)(both(), timeout=30)
            assert "one ExportLogsServiceRequest per call" in (caught.value.details() or "")
            return caught.value.code()

    assert asyncio.run(two_messages()) == grpc.StatusCode.INVALID_ARGUMENT
    assert count(running.conninfo) == 1


def test_the_token_is_checked_before_the_message_is_read(collectors: Collectors, stalls: list[Stalls]) -> None:
    """The body timeout is 300 s here: a call ended within WAIT was refused for its token, not for its silence."""
    running = collectors.start({("auth", "require_ingest_token"): True})
    target = running.grpc_target
    with psycopg.connect(running.conninfo, autocommit=True) as conn:
        token = access.create_token(conn, tenant="acme", role="ingest", name="acme ingest", pepper=PEPPER)[1]
    no_token = Stalls(target, connections=1, per_connection=3)
    stalls.append(no_token)
    unknown = Stalls(
        target, connections=1, per_connection=3, metadata=(("authorization", "Bearer otaudit_000000000000_" + "x" * 43),)
    )
    stalls.append(unknown)
    for answer in no_token.wait_all() + unknown.wait_all():
        assert answer is not None and answer.code == grpc.StatusCode.UNAUTHENTICATED, answer
    # A stalled call with a valid token is let in and waits for its message; an honest one is served.
    valid = Stalls(target, connections=1, per_connection=2, metadata=(("authorization", f"Bearer {token}"),))
    stalls.append(valid)
    gauge = running.collector.metrics.requests_in_flight.labels("grpc")
    wait_until(lambda: gauge._value.get() == 2, WAIT, "the calls with a valid token to wait for their message")
    answer = export_raw(target, request([record()]).SerializeToString(), metadata=(("authorization", f"Bearer {token}"),))
    assert answer.partial_success.rejected_log_records == 0
    assert valid.ended() == []


def test_calls_on_one_connection_are_bounded(collectors: Collectors, stalls: list[Stalls]) -> None:
    """HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a connection's calls past the bound wait in the client, unseen by the collector."""
    running = collectors.start({("ingest", "grpc_max_streams_per_connection"): 4})
    stalls.append(Stalls(running.grpc_target, connections=1, per_connection=10, wait=False))
    gauge = running.collector.metrics.requests_in_flight.labels("grpc")
    wait_until(lambda: gauge._value.get() >= 4, WAIT, "the stalled calls to reach the collector")
    # A whole call on another connection: the collector has read what came before it on the first one.
    assert export_raw(running.grpc_target, request([record()]).SerializeToString()).partial_success.rejected_log_records == 0
    assert gauge._value.get() == 4
    assert stalls[0].ended() == []


# -- the SDK's reading of RESOURCE_EXHAUSTED ------------------------------------------------


class Busy:
    """A real grpc server whose own concurrency limit is 1 and whose one call is held: any other call
    is answered by grpcio with RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded", no RetryInfo."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), maximum_concurrent_rpcs=1)
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        service = "opentelemetry.proto.collector.logs.v1.LogsService"
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _export(self, body: bytes, context: Any) -> bytes:
        self.holding.set()
        self.release.wait(WAIT)
        return ExportLogsServiceResponse().SerializeToString()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(None)


def test_sdk_retries_resource_exhausted_without_a_size_hint(tmp_path: Path) -> None:
    busy = Busy()
    held = GrpcTransport(f"http://127.0.0.1:{busy.port}", {}, gzip_body=False, certificate=None)
    other = GrpcTransport(f"http://127.0.0.1:{busy.port}", {}, gzip_body=False, certificate=None)
    worker = threading.Thread(target=held.send, args=(request([record()]).SerializeToString(), WAIT), daemon=True)
    try:
        worker.start()
        assert busy.holding.wait(WAIT)
        answer = other.send(request([record()]).SerializeToString(), timeout=30)
        assert "RESOURCE_EXHAUSTED" in answer.message and "Concurrent RPC limit" in answer.message, answer
        assert (answer.kind, answer.retry_after) == ("retry", None), answer
    finally:
        busy.stop()
        worker.join(WAIT)
        held.close()
        other.close()

    # Scripted answers of a real server: only a size hint splits; a retry delay is kept.
    fake = FakeCollector()
    transport = GrpcTransport(fake.endpoint, {}, gzip_body=False, certificate=None)
    cases = [
        (Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded", retry_after=0.25), "retry", 0.25),
        (Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited"), "retry", None),
        (
            Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many records: the request holds more than 10 log records"),
            "too_large",
            None,
        ),
        (Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, "the request body is larger than 1024 bytes"), "too_large", None),
    ]
    try:
        for reply, kind, delay in cases:
            fake.answer = lambda records, reply=reply: reply  # type: ignore[misc]
            answer = transport.send(request([record()]).SerializeToString(), timeout=30)
            assert (answer.kind, answer.retry_after) == (kind, delay), (reply, answer)
    finally:
        transport.close()
        fake.stop()

    # Through the whole SDK: the events are delivered after the overload, none is dead-lettered.
    import otaudit_sdk as audit
    from otaudit_sdk._config import settings_from

    answers = iter([Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")] * 2)
    fake = FakeCollector(answer=lambda records: next(answers, Reply()))
    buffer_dir = tmp_path / "buffer"
    settings = settings_from(
        endpoint=fake.endpoint,
        protocol="grpc",
        service_name="accounts-api",
        tenant="acme",
        buffer_dir=buffer_dir,
        environ={},
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
    )
    client = audit.AuditClient(settings)
    try:
        actor = audit.Actor.user("u-17", email="ann@acme.test")
        ids = [client.record("siteAccess", category="site_access", actor=actor, details={"method": "sso"}) for _ in range(3)]
        assert client.flush(WAIT)
    finally:
        client.shutdown()
        fake.stop()
    assert sorted(fake.stored) == sorted(ids)
    assert not (buffer_dir / "dead-letter.jsonl").exists()
