"""OTLP/HTTP receiver: ``POST /v1/logs`` with protobuf or JSON bodies, gzip or not.

The body is decompressed here, not by aiohttp (its server must run with
``auto_decompress=False``): aiohttp would answer an unknown encoding with a bare 400 and
read a corrupt gzip stream as an empty body, which would acknowledge data never stored.
The 64 MiB limit applies to the decompressed size. The answer uses the request's encoding. Errors are ``google.rpc.Status`` bodies with the
status code of ``core.errors``, and ``Retry-After`` when the client should retry.
"""

from __future__ import annotations

import json
import logging
import math
import zlib

from aiohttp import web
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from otaudit_collector.core.errors import BadRequest, IngestError, PayloadTooLarge, UnsupportedMediaType, internal_error
from otaudit_collector.metrics import RequestTimer
from otaudit_collector.pipeline import ExportResult, Ingestor
from otaudit_collector.receivers.auth import HTTP_HEADER, IngestAuth

__all__ = ["create_http_app", "PROTOBUF", "JSON"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
log = logging.getLogger(__name__)
_ENCODINGS = {"", "identity", "gzip", "deflate"}
_INGESTOR = web.AppKey("ingestor", Ingestor)
_MAX_BYTES = web.AppKey("max_request_bytes", int)
_AUTH = web.AppKey("auth", IngestAuth)


def create_http_app(ingestor: Ingestor, *, max_request_bytes: int, auth: IngestAuth | None = None) -> web.Application:
    app = web.Application(client_max_size=max_request_bytes)
    app[_INGESTOR] = ingestor
    app[_MAX_BYTES] = max_request_bytes
    if auth is not None:
        app[_AUTH] = auth
    app.router.add_post("/v1/logs", _logs)
    return app


async def _logs(request: web.Request) -> web.StreamResponse:
    ingestor = request.app[_INGESTOR]
    with ingestor.metrics.request("http") as timer:
        return await _export(request, ingestor, timer)


async def _export(request: web.Request, ingestor: Ingestor, timer: RequestTimer) -> web.StreamResponse:
    as_json = request.content_type == JSON
    try:
        auth = request.app.get(_AUTH)
        principal = await auth.check(request.headers.get("Authorization"), via=HTTP_HEADER) if auth is not None else None
        if request.content_type not in (PROTOBUF, JSON):
            raise UnsupportedMediaType(f"Content-Type must be {PROTOBUF} or {JSON}, got {request.content_type or 'none'!r}")
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: send gzip or no encoding")
        body = await _read(request, encoding)
        result = await ingestor.export(body, as_json=as_json, principal=principal, transport="http")
    except IngestError as err:
        timer.failed(err)
        return _error(err, as_json)
    except Exception:
        log.exception("OTLP/HTTP export failed")
        failure = internal_error()
        timer.failed(failure)
        return _error(failure, as_json)
    timer.answered(result.rejected)
    return _answer(result, as_json)


async def _read(request: web.Request, encoding: str) -> bytes:
    limit = request.app[_MAX_BYTES]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        body = b""
        too_large = True
    else:
        too_large = False
    if not too_large and encoding in ("gzip", "deflate"):
        body = _inflate(body, 31 if encoding == "gzip" else 15, limit)
        too_large = len(body) > limit
    if too_large:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes after decompression: send smaller batches")
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the request body could not be read: its compressed stream is corrupt ({exc})") from None
    if len(out) <= limit and not inflater.eof:
        raise BadRequest("the request body could not be read: its compressed stream is truncated")
    return out


def _answer(result: ExportResult, as_json: bool) -> web.Response:
    if as_json:
        doc: dict[str, object] = {}
        if result.rejected:
            doc["partialSuccess"] = {"rejectedLogRecords": str(result.rejected), "errorMessage": result.message}
        return web.Response(body=json.dumps(doc).encode(), content_type=JSON)
    response = ExportLogsServiceResponse()
    if result.rejected:
        response.partial_success.rejected_log_records = result.rejected
        response.partial_success.error_message = result.message
    return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)


def _error(err: IngestError, as_json: bool) -> web.Response:
    code = err.status.grpc_code.value[0]
    headers = {}
    if err.status.retryable and err.retry_after_seconds is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_seconds)))
    if err.status.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if as_json:
        body = json.dumps({"code": code, "message": err.message}).encode()
        content_type = JSON
    else:
        body = status_pb2.Status(code=code, message=err.message).SerializeToString()
        content_type = PROTOBUF
    return web.Response(status=err.status.http_status, body=body, content_type=content_type, headers=headers)
