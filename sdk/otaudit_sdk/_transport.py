"""Send one ExportLogsServiceRequest and say what the collector answered.

The stock OTLP exporters hide the answer (``partial_success``, retry hints); these
transports return it whole, classified for the sender:

- ``ok``: the collector has the records; ``rejected`` of them were refused per record,
  ``message`` says which and why (OTLP partial_success);
- ``retry``: try again later, after ``retry_after`` seconds when the collector said so;
- ``too_large``: the request exceeds the collector's limit; send fewer records (gRPC:
  RESOURCE_EXHAUSTED saying so; one without a size hint is overload, ``retry``);
- ``refused``: the collector refused the whole request as malformed (HTTP 400,
  INVALID_ARGUMENT); one record in it may be the cause;
- ``config``: wrong token, endpoint, path or media type, or not an OTLP server at all:
  the records are fine, the setup is not. Retried, loudly.

Anything else (a 5xx, INTERNAL, UNKNOWN, a reset connection) is ``retry``: a broken or
restarting collector must not turn events into dead letters.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["Answer", "Transport", "GrpcTransport", "HttpTransport", "open_transport"]

Kind = Literal["ok", "retry", "too_large", "refused", "config"]

_EXPORT_PATH = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


@dataclass(frozen=True, slots=True)
class Answer:
    kind: Kind
    rejected: int = 0
    message: str = ""
    retry_after: float | None = None


class Transport(Protocol):
    def send(self, body: bytes, timeout: float) -> Answer: ...

    def close(self) -> None: ...


def _partial_success(payload: bytes, where: str) -> Answer:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    try:
        answer = ExportLogsServiceResponse.FromString(payload)
    except DecodeError:
        return Answer("config", message=f"{where} answered success with a body that is not an OTLP ExportLogsServiceResponse")
    part = answer.partial_success
    return Answer("ok", int(part.rejected_log_records), part.error_message)


class GrpcTransport:
    """OTLP/gRPC through a generic stub: the request goes out as the bytes we built."""

    _CONFIG = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "NOT_FOUND", "FAILED_PRECONDITION"})

    def __init__(self, endpoint: str, headers: dict[str, str], *, gzip_body: bool, certificate: str | None) -> None:
        import grpc

        target, secure = _grpc_target(endpoint)
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 4 << 20)]
        if secure:
            root = open(certificate, "rb").read() if certificate else None  # noqa: SIM115 - read once at start
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._call = self._channel.unary_unary(_EXPORT_PATH, request_serializer=None, response_deserializer=None)
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._compression = grpc.Compression.Gzip if gzip_body else None
        self._grpc = grpc

    def send(self, body: bytes, timeout: float) -> Answer:
        try:
            reply = self._call(body, timeout=timeout, metadata=self._metadata, compression=self._compression)
        except self._grpc.RpcError as exc:
            return self._classify(exc)
        return _partial_success(reply, "the gRPC endpoint")

    def _classify(self, exc: Any) -> Answer:
        code = exc.code().name if exc.code() is not None else "UNKNOWN"
        details = exc.details() or ""
        text = f"gRPC {code}: {details}".strip()
        delay = _retry_info(exc.trailing_metadata() or ())
        if code == "RESOURCE_EXHAUSTED" and _says_too_large(details):
            return Answer("too_large", message=text)
        if code == "INVALID_ARGUMENT":
            return Answer("refused", message=text)
        if code in self._CONFIG:
            return Answer("config", message=text)
        return Answer("retry", message=text, retry_after=delay)

    def close(self) -> None:
        self._channel.close()


_TOO_LARGE = ("larger than", "too many records")
"""What a RESOURCE_EXHAUSTED says when the request itself is over a limit: grpc's "Received (or
Decompressed) message larger than max", otaudit's "larger than N bytes" and "too many records".
Any other RESOURCE_EXHAUSTED (grpcio's "Concurrent RPC limit exceeded", a proxy's rate limit)
is about the server's load, not the request: splitting cannot help and dead-lettering would
lose events, so it is retried."""


def _says_too_large(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _TOO_LARGE)


def _grpc_target(endpoint: str) -> tuple[str, bool]:
    for scheme, secure in (("https://", True), ("http://", False), ("grpcs://", True), ("grpc://", False)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/"), secure
    return endpoint, False


def _retry_info(metadata: Any) -> float | None:
    from google.protobuf.message import DecodeError
    from google.rpc import error_details_pb2, status_pb2

    for key, value in metadata:
        try:
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
        except DecodeError:  # a malformed hint is no hint
            continue
    return None


class HttpTransport:
    """OTLP/HTTP with protobuf bodies."""

    def __init__(self, endpoint: str, headers: dict[str, str], *, gzip_body: bool, certificate: str | None) -> None:
        import requests

        self._url = endpoint
        self._shown = _shown(endpoint)
        self._session = requests.Session()
        self._session.headers.update(headers)
        self._session.headers["Content-Type"] = "application/x-protobuf"
        if gzip_body:
            self._session.headers["Content-Encoding"] = "gzip"
        if certificate:
            self._session.verify = certificate
        self._compress: Callable[[bytes], bytes] | None = None
        if gzip_body:
            import gzip

            self._compress = functools.partial(gzip.compress, compresslevel=5)
        self._requests = requests

    def send(self, body: bytes, timeout: float) -> Answer:
        data = self._compress(body) if self._compress is not None else body
        try:
            reply = self._session.post(self._url, data=data, timeout=timeout)
        except self._requests.RequestException as exc:
            return Answer("retry", message=f"HTTP request to {self._shown} failed: {type(exc).__name__}")
        status = reply.status_code
        if status == 200:
            kind = reply.headers.get("Content-Type", "")
            if not kind.startswith(("application/x-protobuf", "application/protobuf")):
                return Answer(
                    "config", message=f"{self._shown} answered 200 with {kind or 'no content type'}: not an OTLP/HTTP endpoint"
                )
            return _partial_success(reply.content, self._shown)
        text = f"HTTP {status}: {_status_message(reply.content) or reply.reason}"
        if status == 413:
            return Answer("too_large", message=text)
        if status == 400:
            return Answer("refused", message=text)
        if status in (401, 403, 404, 405, 415):
            return Answer("config", message=text)
        return Answer("retry", message=text, retry_after=_retry_after(reply.headers.get("Retry-After")))

    def close(self) -> None:
        self._session.close()


def _shown(url: str) -> str:
    """The endpoint as it may appear in a log line: no user:password@, no query string."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _status_message(payload: bytes) -> str:
    from google.protobuf.message import DecodeError
    from google.rpc import status_pb2

    try:
        return str(status_pb2.Status.FromString(payload).message)
    except DecodeError:
        return payload[:300].decode("utf-8", "replace") if payload[:1] not in (b"\x08", b"\x12") else ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils

    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def open_transport(
    protocol: str, endpoint: str, headers: dict[str, str], *, gzip_body: bool, certificate: str | None
) -> Transport:
    if protocol == "grpc":
        return GrpcTransport(endpoint, headers, gzip_body=gzip_body, certificate=certificate)
    return HttpTransport(endpoint, headers, gzip_body=gzip_body, certificate=certificate)
