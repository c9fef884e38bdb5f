"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.logs.v1.LogsService/Export``.

The handler takes the raw request bytes (no generated servicer) so that undecodable
input is answered by our decoder with a message that names the problem, and a broken
record is rejected on its own.
"""

from __future__ import annotations

import logging
import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from otaudit_collector.core.errors import IngestError, internal_error
from otaudit_collector.pipeline import Ingestor
from otaudit_collector.receivers.auth import GRPC_METADATA, IngestAuth

__all__ = ["create_grpc_server", "error_trailers"]

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"

log = logging.getLogger(__name__)


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


def _authorization(context: grpc.aio.ServicerContext[bytes, bytes]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _handler(ingestor: Ingestor, auth: IngestAuth | None):  # type: ignore[no-untyped-def]
    async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        with ingestor.metrics.request("grpc") as timer:
            try:
                principal = await auth.check(_authorization(context), via=GRPC_METADATA) if auth is not None else None
                result = await ingestor.export(request, principal=principal, transport="grpc")
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
    ingestor: Ingestor, *, max_request_bytes: int, max_concurrent_requests: int, auth: IngestAuth | None = None
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_requests * 2,
    )
    handler = grpc.unary_unary_rpc_method_handler(_handler(ingestor, auth), request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
    return server
