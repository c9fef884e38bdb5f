"""OTLP/HTTP receiver: ``POST /v1/logs`` with protobuf or JSON bodies, gzip or not.

A request is admitted before its body is read: it takes a slot among
``ingest.max_concurrent_requests`` (none free: 429 at once, nothing read) and its bytes are
charged to ``ingest.max_inflight_bytes``, the budget every OTLP request shares, as they are
held: a declared ``Content-Length`` before reading, a chunked body as it arrives, and each
decompressed byte, and for OTLP/JSON what parsing it will take (``otlp_json.parse_cost``:
about 8x the text for ordinary records, more for empty objects). A request that does not
fit now is answered 429 with ``Retry-After``;
one that never could, 413. The body must arrive whole within ``ingest.body_timeout_seconds``
after the headers, else 408 (retryable) and the connection is closed. So what bodies in flight
hold in memory is bounded by configuration, however many clients send slowly (the transient
copy that joins a body's chunks into one buffer aside).

The body is decompressed here, not by aiohttp (its server must run with
``auto_decompress=False``): aiohttp would answer an unknown encoding with a bare 400 and
read a corrupt gzip stream as an empty body, which would acknowledge data never stored.
Every gzip member is decoded (RFC 1952 allows many); anything after the end of the
compressed stream that is not another member is a 400, so an acknowledgement never covers
bytes that were not decoded. ``ingest.max_request_bytes`` applies to the body as sent and to
its decompressed total. The answer uses the request's encoding. Errors are
``google.rpc.Status`` bodies with the status code of ``core.errors``, and ``Retry-After``
when the client should retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import zlib

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from otaudit_collector.core.errors import (
    BadRequest,
    IngestError,
    Overloaded,
    PayloadTooLarge,
    Status,
    UnsupportedMediaType,
    internal_error,
)
from otaudit_collector.core.otlp_json import parse_cost
from otaudit_collector.metrics import RequestTimer
from otaudit_collector.pipeline import ExportResult, Ingestor
from otaudit_collector.receivers.admission import Charge
from otaudit_collector.receivers.auth import HTTP_HEADER, IngestAuth

__all__ = ["create_http_app", "BodyTimeout", "PROTOBUF", "JSON"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
log = logging.getLogger(__name__)
_ENCODINGS = {"", "identity", "gzip", "deflate"}
_STEP = 1 << 20  # bytes decompressed at a time
_GZIP, _ZLIB = 31, 15  # zlib wbits: a gzip member (RFC 1952), a zlib stream ("deflate" in HTTP, RFC 1950)
_INGESTOR = web.AppKey("ingestor", Ingestor)
_MAX_BYTES = web.AppKey("max_request_bytes", int)
_BODY_TIMEOUT = web.AppKey("body_timeout_seconds", float)
_AUTH = web.AppKey("auth", IngestAuth)


class BodyTimeout(IngestError):
    """The body did not arrive whole in time (slow or stalled client): retry, on a fresh connection."""

    status = Status(grpc.StatusCode.DEADLINE_EXCEEDED, 408, retryable=True)


def create_http_app(
    ingestor: Ingestor, *, max_request_bytes: int, auth: IngestAuth | None = None, body_timeout_seconds: float = 30.0
) -> web.Application:
    app = web.Application(client_max_size=max_request_bytes)
    app[_INGESTOR] = ingestor
    app[_MAX_BYTES] = max_request_bytes
    app[_BODY_TIMEOUT] = body_timeout_seconds
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
        with ingestor.admit() as ticket:  # before reading: a saturated collector refuses at once, reading nothing
            budget = _Budget(ticket.bytes, ingestor.retry_after_seconds)
            body = await _read(request, encoding, budget)
            if as_json:  # parsed JSON takes many times its text: charge it before json.loads holds it
                budget.add(parse_cost(body))
            result = await ingestor.export(body, as_json=as_json, principal=principal, transport="http", ticket=ticket)
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


async def _read(request: web.Request, encoding: str, charge: _Budget) -> bytes:
    """The body, decompressed, every byte charged to ``charge`` while it is held."""
    limit = request.app[_MAX_BYTES]
    declared = request.content_length
    if declared is not None:
        if declared > limit:
            raise PayloadTooLarge(f"the request body ({declared} bytes) is larger than {limit} bytes: send smaller batches")
        charge.add(declared)  # refused here, before reading, when it cannot fit
    body = _Body(encoding, limit, charge, charged=declared is not None)
    try:
        async with asyncio.timeout(request.app[_BODY_TIMEOUT]):
            while chunk := await request.content.readany():
                body.feed(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive whole within {request.app[_BODY_TIMEOUT]:g} seconds: retry") from None
    except RequestPayloadError as exc:
        raise BadRequest(f"the request body could not be read: {exc}") from None
    except ConnectionError:  # the client went away: nothing to log, the answer goes nowhere
        raise BadRequest("the connection was closed before the request body arrived whole") from None
    return body.finish()


class _Budget:
    """One request's charge against ``ingest.max_inflight_bytes``, refusing what does not fit."""

    def __init__(self, charge: Charge, retry_after_seconds: float) -> None:
        self._charge = charge
        self._retry_after = retry_after_seconds

    def add(self, count: int) -> None:
        """Hold ``count`` more bytes, or refuse the request: 429 (retry later) when other requests hold
        the budget, 413 when this request alone would not fit in it."""
        budget = self._charge.budget
        if self._charge.held + count > budget.capacity:
            raise PayloadTooLarge(
                f"the request needs more than the {budget.capacity} bytes this collector holds for request bodies"
                " in flight (ingest.max_inflight_bytes): send smaller batches"
            )
        if not self._charge.reserve(count):
            raise Overloaded(
                f"request bodies in flight hold {budget.used} of {budget.capacity} bytes (ingest.max_inflight_bytes):"
                " retry later",
                retry_after_seconds=self._retry_after,
            )


class _Body:
    """A body as it arrives: kept, or inflated member after member, within ``limit`` bytes."""

    def __init__(self, encoding: str, limit: int, charge: _Budget, *, charged: bool) -> None:
        self._limit = limit
        self._charge = charge
        self._charged = charged  # the raw bytes were charged up front (Content-Length)
        self._wbits = {"gzip": _GZIP, "deflate": _ZLIB}.get(encoding)
        self._inflater: zlib._Decompress | None = None
        self._members = 0
        self._raw = 0
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._raw += len(chunk)
        if self._raw > self._limit:
            raise PayloadTooLarge(f"the request body is larger than {self._limit} bytes: send smaller batches")
        if not self._charged:
            self._charge.add(len(chunk))
        if self._wbits is None:
            self._keep(chunk)
        else:
            self._inflate(chunk)

    def finish(self) -> bytes:
        if self._wbits is not None and self._members and self._inflater is not None:
            raise BadRequest(
                "the request body has bytes after the end of its gzip stream that are not a whole gzip member: "
                "send only the compressed stream"
            )
        if self._wbits is not None and (self._members == 0 or self._inflater is not None):
            raise BadRequest("the request body could not be read: its compressed stream is truncated")
        parts, self._parts = self._parts, []
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self._limit:
            raise PayloadTooLarge(
                f"the request body is larger than {self._limit} bytes after decompression: send smaller batches"
            )
        if self._wbits is not None:
            self._charge.add(len(data))
        self._parts.append(data)

    def _inflate(self, data: bytes) -> None:
        assert self._wbits is not None
        draining = False  # the last step filled its whole size: zlib may hold more output for no more input
        while data or draining:
            if self._inflater is None:
                if self._members and self._wbits == _ZLIB:
                    raise BadRequest(
                        f"the request body has {len(data)} bytes or more after the end of its deflate stream: send one stream"
                    )
                self._inflater = zlib.decompressobj(self._wbits)
            inflater = self._inflater
            try:
                # In steps of at most _STEP bytes, each charged before the next is made: the budget holds exactly.
                step = min(_STEP, self._limit - self._size + 1)
                out = inflater.decompress(data, step)
                self._keep(out)
                draining = len(out) == step
            except zlib.error as exc:
                if self._members:
                    raise BadRequest(
                        "the request body has bytes after the end of its gzip stream that are not another gzip member "
                        f"({exc}): send only the compressed stream"
                    ) from None
                raise BadRequest(f"the request body could not be read: its compressed stream is corrupt ({exc})") from None
            if inflater.eof:
                self._members += 1
                self._inflater = None
                data = inflater.unused_data
                draining = False
            else:
                data = inflater.unconsumed_tail


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
    response = web.Response(status=err.status.http_status, body=body, content_type=content_type, headers=headers)
    if isinstance(err, BodyTimeout):
        response.force_close()  # the rest of a stalled body is not waited for on this connection
    return response
