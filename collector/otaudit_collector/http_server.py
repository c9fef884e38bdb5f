"""The collector's HTTP ports (OTLP/HTTP and the API): aiohttp, with connections bounded.

aiohttp 3.14 has no timeout for a request head: a connection that sends a few bytes of
headers and then nothing would be kept for its keep-alive timeout (an hour by default).
``BoundedRequestHandler`` closes a connection whose request head is not whole within
``header_timeout`` seconds of its first byte (for a connection's first request: of the
connection's opening), while an idle keep-alive connection, which has started no head, is
closed by aiohttp after ``keepalive_timeout`` (``listen.idle_timeout_seconds``). Head
sizes are bounded by ``LIMITS``.

It also keeps credentials out of the log at their source: aiohttp logs a malformed request
with its exception, whose text quotes the offending bytes (an oversized or broken
``Authorization`` line, token included), and answers it with that same text. Here such a
request is logged as one line naming only the kind of error, and answered with a
generic 400.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

__all__ = ["LIMITS", "BoundedRequestHandler", "BoundedSite"]

log = logging.getLogger("otaudit.http")

LIMITS: Final = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 64}
"""Request line, one header, number of headers: a request head holds at most about 512 KiB."""

# What is read of RequestHandler's internals: fail at import, not at the first slow client.
assert "_messages" in RequestHandler.__slots__, "aiohttp's RequestHandler changed: review BoundedRequestHandler"


class BoundedRequestHandler(RequestHandler):
    """aiohttp's protocol, with a request head timeout and quiet handling of malformed requests."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_payload: StreamReader | None = None  # of the last request head parsed
        self._heads = 0  # request heads parsed on this connection
        self._answered = 0  # requests answered
        self._partial = False  # some bytes of the next request head have arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and (self._last_payload is None or self._last_payload.is_eof()):
            self._partial = True
            if self._head_timer is None:
                self._arm()  # the first byte of a new request head
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._heads += len(self._messages) - queued
            self._last_payload = self._messages[-1][1]
            self._partial = False
            self._disarm()

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport is None:
            return
        if self._heads > self._answered:  # a request is being handled: the next head waits for its answer
            self._arm()
            return
        # A part of a head is a slow or hostile client; a silent connection, most often a pre-opened one.
        (log.warning if self._partial else log.debug)(
            "closed an HTTP connection that did not send a whole request head in time",
            extra={"header_timeout_seconds": self._header_timeout, "port": _port(self.transport), "partial": self._partial},
        )
        self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # aiohttp would log the exception and answer with its text, both quoting the request's bytes.
        quiet = isinstance(exc, BadHttpMethod)  # most often TLS or other traffic on a plain HTTP port
        (log.debug if quiet else log.warning)(
            "refused a malformed HTTP request", extra={"error": type(exc).__name__, "port": _port(self.transport)}
        )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; the connection is closed")
        text = f"{status} Bad Request: the request is malformed or its head is too large ({type(exc).__name__})"
        response = web.Response(status=status, text=text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):  # the same, wherever else aiohttp would log one
            log.warning("refused a malformed HTTP request", extra={"error": type(exc).__name__, "port": _port(self.transport)})
            return
        super().log_exception(*args, **kw)


def _port(transport: asyncio.BaseTransport | None) -> int | None:
    name = transport.get_extra_info("sockname") if transport is not None else None
    return int(name[1]) if isinstance(name, tuple) and len(name) > 1 else None


class BoundedSite(web.BaseSite):
    """A listening socket whose connections are ``BoundedRequestHandler``s (aiohttp's SockSite
    would build plain ones); stopped by its runner's ``cleanup`` like any site."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, *, header_timeout: float, **handler_kwargs: Any) -> None:
        super().__init__(runner)
        self._sock = sock
        self._header_timeout = header_timeout
        self._handler_kwargs = handler_kwargs
        host, port = sock.getsockname()[:2]
        self._name = f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def protocol() -> BoundedRequestHandler:
            return BoundedRequestHandler(server, loop=loop, header_timeout=self._header_timeout, **self._handler_kwargs)

        self._server = await loop.create_server(protocol, sock=self._sock, backlog=512)
