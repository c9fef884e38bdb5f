"""Scriptable OTLP servers for the SDK's tests (gRPC and HTTP, real servers on port 0); answers
chosen per request, so the tests can play collectors that are slow, busy, strict or
foreign (a collector that does not name its rejected records)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

_PATH = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


@dataclass
class Reply:
    """What the fake answers to one request."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    rejected: tuple[int, ...] = ()  # indices of the records refused (partial_success)
    message: str = ""
    retry_after: float | None = None


def uid(record: LogRecord) -> str:
    return next(kv.value.string_value for kv in record.attributes if kv.key == "log.record.uid")


@dataclass
class FakeCollector:
    """``answer(records)`` decides each reply; ``stored`` keeps the ids of accepted records."""

    answer: Callable[[list[LogRecord]], Reply] = field(default=lambda records: Reply())
    delay_seconds: float = 0.0
    stored: list[str] = field(default_factory=list)
    requests: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, records)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.logs.v1.LogsService",
            {"Export": grpc.unary_unary_rpc_method_handler(self._export)},
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _export(self, body: bytes, context: Any) -> bytes:
        request = ExportLogsServiceRequest.FromString(body)
        records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
        with self._lock:
            self.requests.append((time.monotonic(), len(records)))
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        reply = self.answer(records)
        if reply.code != grpc.StatusCode.OK:
            if reply.retry_after is not None:
                info = error_details_pb2.RetryInfo(retry_delay=Duration(nanos=int(reply.retry_after * 1e9)))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(reply.code, reply.details)
        with self._lock:
            self.stored.extend(uid(r) for i, r in enumerate(records) if i not in reply.rejected)
        response = ExportLogsServiceResponse()
        if reply.rejected:
            response.partial_success.rejected_log_records = len(reply.rejected)
            response.partial_success.error_message = reply.message
        return response.SerializeToString()

    def stop(self) -> None:
        self._server.stop(0).wait()


HttpAnswer = tuple[int, dict[str, str], bytes]


class FakeHttpCollector:
    """A plain HTTP server on port 0 whose ``respond(request)`` decides each answer
    (status, headers, body); the request comes decoded, with the time it arrived."""

    def __init__(self, respond: Callable[[ExportLogsServiceRequest], HttpAnswer]) -> None:
        self.arrivals: list[tuple[float, list[str]]] = []  # (monotonic time, record ids)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportLogsServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
                fake.arrivals.append((time.monotonic(), [uid(r) for r in records]))
                status, headers, body = respond(request)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.port = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
