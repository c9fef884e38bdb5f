"""A stream's syslog destination: RFC 5424 messages over TCP (RFC 6587, octet counting) or TLS (RFC 5425).

Messages are made by core/syslog_format.py, one per record. One connection per transport,
opened at the first send and kept open; TLS verifies the receiver's certificate and name
against ``ca_file`` (else the system's CAs), with ``server_name`` (else ``host``) as the name.

What "delivered" means here. Syslog over TCP and TLS has no acknowledgement: a receiver never
says it stored a message. :meth:`SyslogTransport.send` returns once every message of the batch
was written to the connection and ``drain()`` returned, that is the kernel took all of it
(TLS: encrypted) into the connection's send buffer, and the receiver had not closed the
connection before or while it was written. It does not mean the receiver read or stored it:
a receiver that dies, or closes the connection with data still unread, after ``send`` returned
loses those messages without this side ever knowing. Who needs more should use a receiver that
confirms (RELP, the webhook, OTLP).

A connection the receiver closed (a restart, an idle timeout) is seen before writing: the
transport then opens a new one and sends the batch on it. When the connection breaks while or
right after the batch is written, :class:`DeliveryFailed` is raised and the connection dropped;
the loop sends the whole batch again later, on a new connection, so a receiver may get some
messages twice (each carries the event's ``id`` and ``seq`` to drop repeats).

Errors raise :class:`DeliveryFailed` naming ``host:port`` and the OS or TLS error; a record that
cannot be a message (a line break in its text) raises ``ValueError`` before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
from typing import Final

from otaudit_collector.core.syslog_format import DEFAULT_FACILITY, DEFAULT_SD_ID, SyslogFormat, check_hostname, clean_hostname
from otaudit_collector.streams.transport import Batch, DeliveryFailed
from otaudit_collector.streams.webhook import plain_excerpt

__all__ = ["SyslogTransport"]

_LOOP_TURNS: Final = 20  # how often to let the loop read a readable connection before judging it
_READABLE: Final = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | getattr(select, "POLLRDHUP", 0)


class SyslogTransport:
    """Sends a stream's batches to one syslog receiver, over one kept-open connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        ca_file: str | None = None,
        ca_pem: str | None = None,
        server_name: str | None = None,
        hostname: str | None = None,
        facility: int = DEFAULT_FACILITY,
        sd_id: str = DEFAULT_SD_ID,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not host or any(character.isspace() for character in host):
            raise ValueError(f"the syslog receiver's host {host!r} is empty or holds spaces: give its name or address")
        if type(port) is not int or not 1 <= port <= 65535:
            raise ValueError(f"the syslog receiver's port is a number from 1 to 65535 (6514 for TLS), not {port!r}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds is more than 0, not {timeout_seconds}")
        if not tls and (ca_file is not None or ca_pem is not None or server_name is not None):
            raise ValueError("a CA and server_name are settings of TLS: set tls=True, or leave them out")
        self._host = host
        self._port = port
        self._where = f"{host}:{port}"
        self._timeout_seconds = timeout_seconds
        self._format = SyslogFormat(
            check_hostname(hostname) if hostname is not None else clean_hostname(socket.gethostname()),
            facility,
            sd_id,
        )
        self._ssl: ssl.SSLContext | None = None
        self._server_name = server_name or host
        if tls:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(f"cannot read the CA {ca_file or '(PEM text)'}: {error}") from None
            self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SyslogTransport({self._where!r}, tls={self._ssl is not None})"

    async def send(self, batch: Batch) -> None:
        """Writes every record of the batch as a framed message; see the module's docstring for
        what returning means. Raises :class:`DeliveryFailed` when the connection fails."""
        if self._closed:
            raise RuntimeError(f"the syslog transport to {self._where} is closed: make a new one")
        if not batch.records:
            return
        data = self._format.frames(batch.records, batch.tenant)
        if self._writer is not None and await self._peer_closed():
            self._drop()  # closed while idle: nothing of this batch was written, so a new connection
        writer = await self._connect()
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self._timeout_seconds)
        except TimeoutError:
            self._drop()
            raise DeliveryFailed(
                f"the syslog receiver {self._where} took no data for {self._timeout_seconds:g} seconds (timeout); "
                "the batch is sent again on a new connection"
            ) from None
        except (OSError, ssl.SSLError) as error:
            self._drop()
            raise DeliveryFailed(
                f"the connection to the syslog receiver {self._where} broke: {_reason(error)}; the batch is sent again"
            ) from None
        if await self._peer_closed():
            self._drop()
            raise DeliveryFailed(
                f"the syslog receiver {self._where} closed the connection while the batch was written: it may not "
                "have read it all, so the batch is sent again on a new connection"
            )

    async def _connect(self) -> asyncio.StreamWriter:
        if self._writer is not None:
            return self._writer
        tls = f"TLS with {self._server_name!r} as name, " if self._ssl is not None else ""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_name if self._ssl is not None else None,
                ),
                self._timeout_seconds,
            )
        except TimeoutError:
            raise DeliveryFailed(
                f"connecting to the syslog receiver {self._where} ({tls}timeout {self._timeout_seconds:g} seconds) timed out"
            ) from None
        except ssl.SSLCertVerificationError as error:
            raise DeliveryFailed(
                f"the TLS certificate of the syslog receiver {self._where} is not trusted "
                f"({plain_excerpt(error.verify_message or str(error), 200)}): give the stream the CA file that "
                "issued it, or set server_name to the name in the certificate"
            ) from None
        except ssl.SSLError as error:
            raise DeliveryFailed(f"TLS with the syslog receiver {self._where} failed: {_reason(error)}") from None
        except OSError as error:
            raise DeliveryFailed(f"cannot connect to the syslog receiver {self._where}: {_reason(error)}") from None
        self._reader, self._writer = reader, writer
        return writer

    async def _peer_closed(self) -> bool:
        """Whether the receiver closed the connection (or broke it, or sent anything, which a
        syslog receiver never does but a TLS one may: session tickets, its close_notify).

        The kernel is asked first (poll, no waiting); a readable connection is then left to
        the loop to read, a few turns, and judged by what the reader saw."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return True
        for _ in range(_LOOP_TURNS):
            if writer.is_closing() or reader.at_eof() or reader.exception() is not None:
                return True
            if not _readable(writer):
                return False
            await asyncio.sleep(0)
        return True  # still readable and unread: not a syslog receiver's behaviour, so start over

    def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    async def close(self) -> None:
        """Closes the connection (TLS: with close_notify). The transport sends nothing after."""
        self._closed = True
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self._timeout_seconds)
        except (TimeoutError, OSError, ssl.SSLError):
            writer.transport.abort()


def _readable(writer: asyncio.StreamWriter) -> bool:
    """Whether the kernel has something to read on the connection: data, its end, an error."""
    sock = writer.get_extra_info("socket")
    fileno = sock.fileno() if sock is not None else -1
    if fileno < 0:
        return True
    poller = select.poll()
    poller.register(fileno, _READABLE)
    with contextlib.suppress(InterruptedError):
        return bool(poller.poll(0))
    return False


def _reason(error: BaseException) -> str:
    """An OS or TLS error in words: its strerror for errno errors, its reason for TLS ones."""
    if isinstance(error, ssl.SSLError):
        return plain_excerpt(error.reason or str(error), 200)
    if isinstance(error, OSError) and error.errno:
        return plain_excerpt(os.strerror(error.errno), 200)
    return plain_excerpt(str(error) or type(error).__name__, 200)
