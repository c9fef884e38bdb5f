"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.logs.v1.LogsService/Export``.

The handler takes the raw request bytes (no generated servicer) so that undecodable
input is answered by our decoder with a message that names the problem, and a broken
record is rejected on its own.

Export is registered as a client-streaming method although clients call it unary (the
wire is the same: one message, then the end of the stream). A unary handler is called by
grpcio only once the whole message has arrived, so a call that opens and never sends
holds a slot out of the handler's reach. A streaming handler gets control when the call
starts, and so:

- checks the ingest token from the metadata before reading anything;
- reads the one message within ``ingest.body_timeout_seconds``, else ends the call
  (UNAVAILABLE with RetryInfo: an honest slow client retries);
- bounds the calls reading their message: over the bound, the one reading longest is
  ended (UNAVAILABLE with RetryInfo). Honest clients send their message with the call,
  so the oldest reader is the likeliest to be stalled, and a newcomer is served;
- refuses a second message (INVALID_ARGUMENT).

grpcio's own ``maximum_concurrent_rpcs`` is not set: it answers RESOURCE_EXHAUSTED
without RetryInfo, which clients read as "request too large". Every call is instead
refused at once, reading (bounded above), or processing (bounded by the Ingestor's
``max_concurrent_requests``, UNAVAILABLE with RetryInfo beyond it). HTTP/2 bounds the
calls of one connection (``ingest.grpc_max_streams_per_connection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from otaudit_collector.core.errors import BadRequest, IngestError, Overloaded, internal_error
from otaudit_collector.pipeline import Ingestor
from otaudit_collector.receivers.auth import GRPC_METADATA, IngestAuth

__all__ = ["create_grpc_server", "error_trailers", "IDLE_CONNECTION_SECONDS"]

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"

IDLE_CONNECTION_SECONDS = 300
"""A connection without a call for this long is closed (a graceful GOAWAY).

Clients reconnect by themselves on their next call; connections left by clients that went
away, or opened only to be held, do not stay forever.
"""

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"


def error_trailers(err: IngestError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata for an error: the Status with its details, and RetryInfo when retryable.

    The Python exporter reads ``google.rpc.retryinfo-bin``; Go clients read
    ``grpc-status-details-bin``: both are sent.
    """
    status = status_pb2.Status(code=err.status.grpc_code.value[0], message=err.message)
    trailers: list[tuple[str, bytes]] = []
    if err.status.retryable and err.retry_after_seconds is not None:
        seconds = max(err.retry_after_seconds, 0.0)
        whole = math.floor(seconds)
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9)))
        status.details.add().Pack(info)
        trailers.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    trailers.append(("grpc-status-details-bin", status.SerializeToString()))
    return tuple(trailers)


def _authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


@dataclass(eq=False, slots=True)
class _Reader:
    """One call reading its message, and the deadline that ends it."""

    deadline: asyncio.Timeout
    evicted: bool = False


class _Readers:
    """The calls reading their request message: at most ``limit``; a newcomer over it ends the oldest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reading: dict[_Reader, None] = {}  # in arrival order

    @contextlib.contextmanager
    def admit(self, deadline: asyncio.Timeout) -> Iterator[_Reader]:
        while len(self._reading) >= self.limit:
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            oldest.evicted = True
            oldest.deadline.reschedule(asyncio.get_running_loop().time())  # its read ends with TimeoutError now
        reader = _Reader(deadline)
        self._reading[reader] = None
        try:
            yield reader
        finally:
            self._reading.pop(reader, None)


class _Receiver:
    """Reads the one request message of a call, under the body timeout and the bound on readers."""

    def __init__(self, readers: _Readers, timeout_seconds: float, retry_after_seconds: float) -> None:
        self._readers = readers
        self._timeout = timeout_seconds
        self._retry_after = retry_after_seconds

    async def receive(self, context: Context) -> bytes:
        reader: _Reader | None = None
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                with self._readers.admit(deadline) as reader:
                    return await _one_message(context)
        except TimeoutError:
            if reader is not None and reader.evicted:
                raise Overloaded(
                    f"{self._readers.limit} calls were waiting for their request message (ingest.max_concurrent_requests)"
                    " and this one had waited longest: send the message with the call, and retry",
                    retry_after_seconds=self._retry_after,
                ) from None
            raise Overloaded(
                f"the request message did not arrive whole within {self._timeout:g} s (ingest.body_timeout_seconds):"
                " send it with the call, and retry",
                retry_after_seconds=self._retry_after,
            ) from None


async def _one_message(context: Context) -> bytes:
    """The call's message, once the client has ended its side: Export takes exactly one."""
    body = await context.read()
    if not isinstance(body, bytes):  # grpc.aio.EOF: no message, or grpc ended the call (a message over the size limit)
        raise BadRequest("the Export call ended without a request message: send one ExportLogsServiceRequest")
    if await context.read() is not grpc.aio.EOF:
        raise BadRequest("Export takes one ExportLogsServiceRequest per call and this call sent more: send each in its own call")
    return body


def _handler(ingestor: Ingestor, auth: IngestAuth | None, receiver: _Receiver):  # type: ignore[no-untyped-def]
    async def export(requests: AsyncIterator[bytes], context: Context) -> bytes:
        del requests  # read through context.read(), under a deadline
        with ingestor.metrics.request("grpc") as timer:
            try:
                principal = await auth.check(_authorization(context), via=GRPC_METADATA) if auth is not None else None
                result = await ingestor.export(await receiver.receive(context), principal=principal, transport="grpc")
            except IngestError as err:
                timer.failed(err)
                await context.abort(err.status.grpc_code, err.message, trailing_metadata=error_trailers(err))
                raise  # unreachable: abort raises
            except Exception:
                log.exception("OTLP/gRPC export failed")
                failure = internal_error()
                timer.failed(failure)
                await context.abort(failure.status.grpc_code, failure.message, trailing_metadata=error_trailers(failure))
                raise
            response = ExportLogsServiceResponse()
            if result.rejected:
                response.partial_success.rejected_log_records = result.rejected
                response.partial_success.error_message = result.message
            timer.answered(result.rejected)
            return response.SerializeToString()

    return export


def create_grpc_server(
    ingestor: Ingestor,
    *,
    max_request_bytes: int,
    max_concurrent_requests: int,
    body_timeout_seconds: float,
    max_streams_per_connection: int,
    retry_after_seconds: float,
    auth: IngestAuth | None = None,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """The OTLP/gRPC server; ``max_concurrent_requests`` also bounds the calls reading their message.
    ``reuse_port``: share the port with the other workers of ``--workers`` (off otherwise, so that a
    second collector started on the same port fails instead of silently taking half the traffic)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.max_concurrent_streams", max_streams_per_connection),
            ("grpc.max_connection_idle_ms", IDLE_CONNECTION_SECONDS * 1000),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    receiver = _Receiver(_Readers(max_concurrent_requests), body_timeout_seconds, retry_after_seconds)
    handler = grpc.stream_unary_rpc_method_handler(
        _handler(ingestor, auth, receiver), request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
    return server
