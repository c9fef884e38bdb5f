"""A stream's webhook: each batch POSTed, signed, to the receiver's URL.

One request per batch. The body is NDJSON (each record's text, then a line feed), and the
headers say what it is::

    Content-Type: application/x-ndjson
    Otaudit-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>   (core/webhook_signature.py)
    Otaudit-Stream: <stream id>
    Otaudit-Tenant: <tenant>
    Otaudit-Seq-Range: <first seq>-<last seq>
    Otaudit-Format: otaudit | ocsf                             (what each line is)
    Idempotency-Key: <stream id>:<first seq>-<last seq>
    User-Agent: otaudit-collector

Any 2xx answer means delivered. Anything else, a redirect included (redirects are never
followed: a signed batch goes to the configured URL only), a timeout or a connection error
raises :class:`DeliveryFailed` with the receiver's words: its status and the start of its
answer, control characters removed, with any ``Retry-After`` it sent. Messages name the
receiver by its origin (scheme, host, port) only, since a URL's path or query may hold a
token; they never hold the secret or the signature.
"""

from __future__ import annotations

import math
import os
import ssl
import time
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final

import aiohttp
from yarl import URL

from otaudit_collector.core.webhook_signature import HEADER, check_url, sign
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record

__all__ = ["CONTENT_TYPE", "USER_AGENT", "WebhookTransport", "ndjson", "plain_excerpt", "retry_after_seconds"]

CONTENT_TYPE: Final = "application/x-ndjson"
USER_AGENT: Final = "otaudit-collector"
EXCERPT_CHARACTERS: Final = 300
_READ_BYTES: Final = 4096


def ndjson(records: Sequence[Record]) -> bytes:
    """The records as NDJSON: each one's text, then a line feed (UTF-8)."""
    for record in records:
        if "\n" in record.text or "\r" in record.text:
            raise ValueError(f"record seq {record.seq} holds a line break: NDJSON needs one record per line")
    return "".join(record.text + "\n" for record in records).encode("utf-8")


def plain_excerpt(text: str, limit: int = EXCERPT_CHARACTERS) -> str:
    """``text`` fit for one log line: line breaks and tabs as spaces, other control and format
    characters dropped, runs of spaces as one, at most ``limit`` characters (then "…")."""
    kept: list[str] = []
    for character in text:
        category = unicodedata.category(character)
        if character in "\t\n\r\v\f" or category in ("Zl", "Zp"):
            kept.append(" ")
        elif category not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(character)
    words = " ".join("".join(kept).split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "…"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (delay-seconds or an HTTP date, RFC 9110),
    never negative; None when there is none or it cannot be read."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when: datetime = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
            return None
        return max(0.0, when.timestamp() - now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class WebhookTransport:
    """Sends a stream's batches to one URL. One ``aiohttp.ClientSession`` (made at the first
    send, within the running loop), closed by :meth:`close`."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        stream_id: str,
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        ca_file: str | None = None,
    ) -> None:
        problem = check_url(url)
        if problem:
            raise ValueError(problem)
        if not secret:
            raise ValueError("the webhook's secret is empty: give the stream's secret (secret_bytes of its text)")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds is more than 0, not {timeout_seconds}")
        self._url = URL(url)
        self._where = str(self._url.origin())
        self._secret = secret
        self._stream_id = stream_id
        self._timeout_seconds = timeout_seconds
        self._clock = clock
        self._ssl: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(f"cannot read the CA file {ca_file}: {error}") from None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:  # never the secret
        return f"WebhookTransport({self._where!r}, stream_id={self._stream_id!r})"

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"the webhook transport of stream {self._stream_id} is closed: make a new one")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self._timeout_seconds),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def send(self, batch: Batch) -> None:
        """POSTs the batch; returns on a 2xx answer, raises :class:`DeliveryFailed` otherwise."""
        if batch.stream_id != self._stream_id:
            raise ValueError(f"a batch of stream {batch.stream_id} handed to the webhook of stream {self._stream_id}")
        if not batch.records:
            return
        body = ndjson(batch.records)
        seq_range = f"{batch.first_seq}-{batch.last_seq}"
        signed = sign(self._secret, int(self._clock()), body)
        headers = {
            "Content-Type": CONTENT_TYPE,
            HEADER: signed,
            "Otaudit-Stream": self._stream_id,
            "Otaudit-Tenant": batch.tenant,
            "Otaudit-Seq-Range": seq_range,
            "Otaudit-Format": batch.format,
            "Idempotency-Key": f"{self._stream_id}:{seq_range}",
        }
        session = self._open_session()
        try:
            async with session.post(self._url, data=body, headers=headers, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return
                failure = await self._refusal(response, signed)
        except DeliveryFailed:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise DeliveryFailed(self._connection_problem(error)) from None
        raise failure

    async def _refusal(self, response: aiohttp.ClientResponse, signed: str) -> DeliveryFailed:
        """The DeliveryFailed for a non-2xx answer, in the receiver's words."""
        status = f"{response.status} {plain_excerpt(response.reason or '', 60)}".rstrip()
        retry_after = retry_after_seconds(response.headers.get("Retry-After"), self._clock())
        if 300 <= response.status < 400:
            location = plain_excerpt(response.headers.get("Location", ""), 200)
            to = f" to {location}" if location else ""
            return DeliveryFailed(
                f"{self._where} answered {status}{to}: redirects are not followed (a signed batch goes only to "
                "the stream's URL); set the stream's URL to the address the receiver wants",
                retry_after=retry_after,
            )
        raw = bytearray()
        while len(raw) < _READ_BYTES:
            chunk = await response.content.read(_READ_BYTES - len(raw))
            if not chunk:
                break
            raw += chunk
        try:
            text = raw.decode(response.charset or "utf-8", errors="replace")
        except LookupError:
            text = raw.decode("utf-8", errors="replace")
        for hidden in (signed, signed.partition(",v1=")[2], self._secret.decode("utf-8", errors="replace")):
            # A receiver that echoes the request back would show them: keep them out of messages.
            text = text.replace(hidden, "[redacted]")
        excerpt = plain_excerpt(text)
        said = f": {excerpt}" if excerpt else " with an empty body"
        hint = ""
        if response.status in (401, 403):
            hint = " (does the receiver have the stream's current secret?)"
        elif response.status == 413:
            hint = " (the receiver refuses a batch this large)"
        return DeliveryFailed(f"{self._where} answered {status}{said}{hint}", retry_after=retry_after)

    def _connection_problem(self, error: BaseException) -> str:
        """What went wrong before any answer, naming the receiver by its origin only."""
        where = self._where
        if isinstance(error, aiohttp.ConnectionTimeoutError):
            return f"connecting to {where} timed out after {self._timeout_seconds:g} seconds"
        if isinstance(error, TimeoutError):
            return f"no answer from {where} within {self._timeout_seconds:g} seconds (timeout)"
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return (
                f"the TLS certificate of {where} is not trusted ({plain_excerpt(str(error.certificate_error), 200)}): "
                "give the stream the CA file that issued it, or fix the receiver's certificate"
            )
        if isinstance(error, aiohttp.ClientConnectorDNSError):
            return f"cannot find the host of {where}: {plain_excerpt(str(error.os_error), 200)}"
        if isinstance(error, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError)):
            return f"TLS with {where} failed: {plain_excerpt(str(error), 200)}"
        if isinstance(error, aiohttp.ClientConnectorError):
            code = error.os_error.errno
            reason = os.strerror(code) if code else (error.os_error.strerror or str(error.os_error))
            return f"cannot connect to {where}: {plain_excerpt(reason, 200)}"
        if isinstance(error, aiohttp.ServerDisconnectedError):
            return f"{where} closed the connection without answering"
        if isinstance(error, aiohttp.ClientResponseError):
            return f"{where} sent an answer that is not HTTP: {plain_excerpt(error.message, 200)}"
        if isinstance(error, aiohttp.ClientPayloadError):
            return f"{where} broke off its answer: {plain_excerpt(str(error), 200)}"
        return f"delivery to {where} failed: {type(error).__name__}: {plain_excerpt(str(error), 200)}"

    async def close(self) -> None:
        """Closes the session (and its connections). The transport sends nothing after."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
