"""A stream's OTLP destination: each batch as OTLP logs, over gRPC or HTTP, to any OTLP endpoint.

An OpenTelemetry Collector, an OTLP intake (Datadog, Splunk), or another otaudit. Each
record's text (the stored event document) becomes one LogRecord (``core.otlp_out``, written as bytes by ``core.otlp_wire``), with
the event's id as ``log.record.uid`` and ``otaudit.seq`` / ``otaudit.source.tenant``, so a
receiver can drop repeats; another otaudit stores nothing twice by the id.

A batch is sent as requests of at most ``max_records_per_request`` records, in order. It is
delivered only when every record of every request was accepted: a ``partial_success`` that
rejected records raises :class:`DeliveryFailed` naming how many and the receiver's message.
The delivery loop then sends the same batch again, forever: rejected records are never
skipped, so an operator must fix the receiver (its catalogs, its limits) or narrow the
stream's filter so that the rejected events are not sent.

gRPC ``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED`` with a ``google.rpc.RetryInfo`` (in the
``grpc-status-details-bin`` trailer) and HTTP 429 / 503 with ``Retry-After`` give
``retry_after``. Messages carry the receiver's status and words, never the headers' values
(an ``Authorization`` bearer is a secret); they name the receiver by its origin only.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiohttp
import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from yarl import URL

from otaudit_collector.core.otlp_wire import export_request_bytes
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record
from otaudit_collector.streams.webhook import plain_excerpt, retry_after_seconds

__all__ = ["OtlpTransport", "PROTOCOLS", "EXPORT_METHOD", "retry_info_seconds"]

PROTOCOLS: Final = ("grpc", "http")
EXPORT_METHOD: Final = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PROTOBUF: Final = "application/x-protobuf"
USER_AGENT: Final = "otaudit-collector"
_READ_BYTES: Final = 65536
_RETRY_CODES: Final = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def retry_info_seconds(status_details: bytes | None) -> float | None:
    """The delay a ``google.rpc.Status`` (serialized) asks for in its RetryInfo, if any."""
    if not status_details:
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(status_details)
    except DecodeError:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(0.0, seconds)
    return None


def _documents(records: Sequence[Record]) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    for record in records:
        try:
            doc = json.loads(record.text)
        except ValueError as error:
            raise DeliveryFailed(f"record seq {record.seq} (event {record.id}) is not JSON: {error}") from None
        if not isinstance(doc, dict):
            raise DeliveryFailed(f"record seq {record.seq} (event {record.id}) is not a JSON object")
        out.append((record.seq, doc))
    return out


class OtlpTransport:
    """Sends a stream's batches as OTLP logs to ``endpoint``.

    ``protocol`` "grpc": ``endpoint`` is ``host:port``, ``http://host:port`` (plaintext) or
    ``https://host:port`` (TLS); one channel per transport. "http": ``endpoint`` is the base URL
    (``https://intake.example``); requests go to ``<endpoint>/v1/logs`` (an endpoint already
    ending in ``/v1/logs`` is used as it is), protobuf encoded. ``headers`` go with every
    request (gRPC metadata, keys lowercased): an ``Authorization`` bearer is the usual one; their
    values are secrets and are never shown. ``ca_file`` or ``ca_pem`` (its text): the PEM bundle
    to trust instead of the system's (with gRPC it also turns TLS on for a ``host:port`` endpoint).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        protocol: str,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
        ca_file: str | None = None,
        ca_pem: str | None = None,
        max_records_per_request: int = 1000,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol is 'grpc' or 'http', not {protocol!r}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds is more than 0, not {timeout_seconds}")
        if max_records_per_request < 1:
            raise ValueError(f"max_records_per_request is at least 1, not {max_records_per_request}")
        self._headers = dict(headers or {})
        for key, value in self._headers.items():
            if not key or any(c in key for c in "\r\n: ") or "\r" in value or "\n" in value:
                raise ValueError(f"header {key!r} is not a valid header name, or its value holds a line break")
        self._protocol = protocol
        self._timeout = timeout_seconds
        self._max_records = max_records_per_request
        self._ca: bytes | None = ca_pem.encode() if ca_pem is not None else None
        if ca_file is not None and ca_pem is not None:
            raise ValueError("give the CA as a file or as PEM text, not both")
        if ca_file is not None:
            try:
                with open(ca_file, "rb") as file:
                    self._ca = file.read()
            except OSError as error:
                raise ValueError(f"cannot read the CA file {ca_file}: {error.strerror or error}") from None
        self._closed = False
        self._channel: grpc.aio.Channel | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tls = False
        if protocol == "grpc":
            self._target, self._tls = self._grpc_target(endpoint)
            if self._ca is not None and endpoint.strip().startswith("http://"):
                raise ValueError("a CA file is given but the endpoint is http:// (plaintext): use https:// or host:port")
            self._where = f"{'https' if self._tls else 'http'}://{self._target}"
        else:
            url = URL(endpoint)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(
                    f"the OTLP/HTTP endpoint must be an http:// or https:// URL, not {str(url.origin()) if url.host else '?'!r}"
                )
            if url.user or url.password:
                raise ValueError("the OTLP/HTTP endpoint must not hold credentials: give them in headers")
            path = url.path.rstrip("/")
            self._url = url.with_path(path if path.endswith("/v1/logs") else path + "/v1/logs").with_query(url.query)
            self._where = str(url.origin())

    @staticmethod
    def _grpc_target(endpoint: str) -> tuple[str, bool]:
        text = endpoint.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "", text
        elif scheme not in ("http", "https"):
            raise ValueError(f"the OTLP/gRPC endpoint is host:port, http://host:port or https://host:port, not {scheme}://...")
        target = rest.rstrip("/")
        if not target or "/" in target or "@" in target:
            raise ValueError("the OTLP/gRPC endpoint is host:port (no path, no credentials)")
        return target, scheme == "https"

    def __repr__(self) -> str:  # never the headers
        return f"OtlpTransport({self._where!r}, protocol={self._protocol!r})"

    @property
    def _use_tls(self) -> bool:
        return self._tls or self._ca is not None

    def _open_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            options = [("grpc.primary_user_agent", USER_AGENT)]
            if self._use_tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._ca)
                self._channel = grpc.aio.secure_channel(self._target, credentials, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=options)
        return self._channel

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls: ssl.SSLContext | bool = True
            if self._ca is not None:
                tls = ssl.create_default_context(cadata=self._ca.decode())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def send(self, batch: Batch) -> None:
        """Sends the batch; returns when the receiver accepted every record, else raises
        :class:`DeliveryFailed` (the loop sends the same batch again later)."""
        if self._closed:
            raise RuntimeError(f"the OTLP transport to {self._where} is closed: make a new one")
        documents = _documents(batch.records)
        for start in range(0, len(documents), self._max_records):
            part = documents[start : start + self._max_records]
            try:  # written as bytes (core/otlp_wire.py), in a thread: the receivers' event loop need not wait
                request = await asyncio.to_thread(export_request_bytes, part, source_tenant=batch.tenant)
            except ValueError as error:
                raise DeliveryFailed(f"an event of seq {part[0][0]}-{part[-1][0]} cannot be sent as OTLP: {error}") from None
            if self._protocol == "grpc":
                response = await self._send_grpc(request)
            else:
                response = await self._send_http(request)
            rejected = response.partial_success.rejected_log_records
            if rejected:
                said = plain_excerpt(self._hide(response.partial_success.error_message)) or "no reason given"
                raise DeliveryFailed(
                    f"{self._where} rejected {rejected} of the {len(part)} records of seq {part[0][0]}-{part[-1][0]}"
                    f" (partial_success): {said}. The stream retries them and does not skip them: fix the receiver"
                    " (its catalogs or limits) or the stream's filter"
                )

    def _hide(self, text: str) -> str:
        """``text`` without any header value in it (a receiver may echo a request back)."""
        for value in self._headers.values():
            for hidden in (value, value.partition(" ")[2]):
                if len(hidden) >= 4:
                    text = text.replace(hidden, "[redacted]")
        return text

    async def _send_grpc(self, request: bytes) -> ExportLogsServiceResponse:
        channel = self._open_channel()
        call = channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=None,  # already the request's bytes
            response_deserializer=ExportLogsServiceResponse.FromString,
        )
        metadata = tuple((key.lower(), value) for key, value in self._headers.items())
        try:
            response: ExportLogsServiceResponse = await call(request, timeout=self._timeout, metadata=metadata)
            return response
        except grpc.aio.AioRpcError as error:
            raise self._grpc_refusal(error) from None

    def _grpc_refusal(self, error: grpc.aio.AioRpcError) -> DeliveryFailed:
        code = error.code()
        details = plain_excerpt(self._hide(error.details() or "")) or "no details"
        retry_after = None
        if code in _RETRY_CODES:
            for key, value in error.trailing_metadata() or ():
                if key == "grpc-status-details-bin" and isinstance(value, bytes):
                    retry_after = retry_info_seconds(value)
        hint = ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            hint = " (does the stream have the receiver's current token in its headers?)"
        elif code == grpc.StatusCode.PERMISSION_DENIED:
            hint = " (the stream's token may not write this tenant)"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            hint = f" (no answer within {self._timeout:g} seconds)"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None:
            hint = " (the receiver refuses a request this large: lower the stream's max records per request)"
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            hint = " (is this an OTLP/gRPC endpoint that takes logs?)"
        return DeliveryFailed(f"{self._where} (OTLP/gRPC) answered {code.name}: {details}{hint}", retry_after=retry_after)

    async def _send_http(self, request: bytes) -> ExportLogsServiceResponse:
        session = self._open_session()
        headers = {**self._headers, "Content-Type": PROTOBUF, "Accept": PROTOBUF}
        try:
            async with session.post(
                self._url, data=request, headers=headers, allow_redirects=False
            ) as answer:
                body = await answer.content.read(_READ_BYTES if not 200 <= answer.status < 300 else -1)
                if 200 <= answer.status < 300:
                    return self._http_response(answer, body)
                raise self._http_refusal(answer, body)
        except DeliveryFailed:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise DeliveryFailed(self._connection_problem(error)) from None

    def _http_response(self, answer: aiohttp.ClientResponse, body: bytes) -> ExportLogsServiceResponse:
        response = ExportLogsServiceResponse()
        if answer.content_type == "application/json":
            try:
                partial = json.loads(body or b"{}").get("partialSuccess") or {}
                response.partial_success.rejected_log_records = int(partial.get("rejectedLogRecords") or 0)
                response.partial_success.error_message = str(partial.get("errorMessage") or "")
            except (ValueError, AttributeError, TypeError):
                raise DeliveryFailed(f"{self._where} answered {answer.status} with JSON that is not an OTLP response") from None
            return response
        try:
            response.ParseFromString(body)
        except DecodeError:
            raise DeliveryFailed(
                f"{self._where} answered {answer.status} with a body that is not an OTLP ExportLogsServiceResponse"
                f" ({answer.content_type}): is the endpoint an OTLP/HTTP one?"
            ) from None
        return response

    def _http_refusal(self, answer: aiohttp.ClientResponse, body: bytes) -> DeliveryFailed:
        status = f"{answer.status} {plain_excerpt(answer.reason or '', 60)}".rstrip()
        retry_after = None
        if answer.status in (429, 503):
            retry_after = retry_after_seconds(answer.headers.get("Retry-After"), time.time())
        said = ""
        if answer.content_type == PROTOBUF:
            detail = status_pb2.Status()
            try:
                detail.ParseFromString(body)
                said = detail.message
                if retry_after is None and answer.status in (429, 503):
                    retry_after = retry_info_seconds(body)
            except DecodeError:
                said = ""
        elif answer.content_type == "application/json":
            try:
                said = str(json.loads(body).get("message") or body.decode("utf-8", "replace"))
            except (ValueError, AttributeError):
                said = body.decode("utf-8", "replace")
        else:
            said = body.decode(answer.charset or "utf-8", "replace") if body else ""
        excerpt = plain_excerpt(self._hide(said))
        said = f": {excerpt}" if excerpt else " with an empty body"
        hint = ""
        if 300 <= answer.status < 400:
            hint = " (redirects are not followed: set the stream's endpoint to the address the receiver wants)"
        elif answer.status in (401, 403):
            hint = " (does the stream have the receiver's current token in its headers?)"
        elif answer.status == 404:
            hint = f" (is {self._url.path} the receiver's OTLP logs path?)"
        elif answer.status == 413:
            hint = " (the receiver refuses a request this large: lower the stream's max records per request)"
        return DeliveryFailed(f"{self._where} (OTLP/HTTP) answered {status}{said}{hint}", retry_after=retry_after)

    def _connection_problem(self, error: BaseException) -> str:
        where = self._where
        if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
            return f"no answer from {where} within {self._timeout:g} seconds (timeout)"
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return (
                f"the TLS certificate of {where} is not trusted ({plain_excerpt(str(error.certificate_error), 200)}): "
                "give the stream the CA file that issued it, or fix the receiver's certificate"
            )
        if isinstance(error, aiohttp.ClientConnectorError):
            return f"cannot connect to {where}: {plain_excerpt(error.os_error.strerror or str(error.os_error), 200)}"
        if isinstance(error, aiohttp.ServerDisconnectedError):
            return f"{where} closed the connection without answering"
        return f"delivery to {where} failed: {type(error).__name__}: {plain_excerpt(self._hide(str(error)), 200)}"

    async def close(self) -> None:
        """Closes the channel or session. The transport sends nothing after."""
        self._closed = True
        channel, self._channel = self._channel, None
        session, self._session = self._session, None
        if channel is not None:
            await channel.close()
        if session is not None:
            await session.close()
