"""The signature on each webhook delivery of a stream, and the check of a webhook's URL.

Pure: no I/O, no clock (the caller passes ``now``).

The scheme, for a receiver in any language
------------------------------------------

Each stream has a secret, shown once when the stream is made: ``whsec_`` followed by 43
characters of the URL-safe base64 alphabet (``A-Z a-z 0-9 - _``; 32 random bytes). The HMAC key
is that text itself, encoded as ASCII, prefix included: nothing is base64-decoded.

Each delivery is an HTTP POST whose body is the batch (NDJSON) and which carries the header::

    Otaudit-Signature: t=1767225600,v1=07c4faeb4ffae013647dce3d0e0e339ab8675804950e9fec72a33f85c9c07422

- ``t`` is the time of the request in whole seconds since the Unix epoch (decimal digits).
- each ``v1`` is the lowercase hexadecimal HMAC-SHA256, under the key above, of the bytes:
  ``t`` as sent (ASCII digits), then one full stop ``.``, then the body exactly as received
  (the raw bytes, before any decoding, parsing or re-serialising).
- items are separated by commas, each is ``key=value``; ``t`` appears once, ``v1`` once or
  more. While a secret is being replaced a request may carry one ``v1`` per secret; it is
  authentic when any of them matches. Items with other keys (a future ``v2``) are ignored.

(That is the header for the secret ``whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA``, ``t`` =
1767225600 and the 10-byte body ``{"seq":1}`` followed by a line feed: a vector to test against.)

A receiver:

1. reads the header; refuses the request (401) when it is missing or malformed;
2. computes ``HMAC-SHA256(key, t + "." + body)`` in hex and compares it with each ``v1``
   using a constant-time comparison; refuses the request when none matches;
3. refuses the request when ``t`` is more than the tolerance (300 seconds here) away from
   its own clock, in the past (an old request replayed) or in the future;
4. to refuse replays within the tolerance too, remembers the (``t``, ``v1``) pairs it
   accepted for the tolerance's length and refuses one it has seen (409).

Only the body is signed. The other headers (``Otaudit-Tenant``, ``Otaudit-Seq-Range``, ...) are
routing hints; each record in the body carries its own tenant, ``id`` and ``seq``.

:func:`sign` writes the header's value, :func:`verify` is step 1 to 3 (raising
:class:`SignatureError` that says what is wrong), :func:`new_secret` makes a secret and
:func:`secret_bytes` turns its text into the key. :func:`check_url` says what is wrong with a
webhook URL, for the API to refuse it before anything is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "HEADER",
    "SECRET_PREFIX",
    "SignatureError",
    "check_url",
    "new_secret",
    "secret_bytes",
    "sign",
    "signature",
    "verify",
]

HEADER: Final = "Otaudit-Signature"
SECRET_PREFIX: Final = "whsec_"
DEFAULT_TOLERANCE_SECONDS: Final = 300.0
MAX_URL_LENGTH: Final = 2048

_EXPECTED = "expected t=<unix seconds>,v1=<hex HMAC-SHA256>"
_SECRET = re.compile(r"whsec_[A-Za-z0-9_-]{32,200}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,15}")


class SignatureError(ValueError):
    """The request is not signed as the scheme says: refuse it (401). The message says why."""


def new_secret() -> str:
    """A fresh secret's text: ``whsec_`` and 32 random bytes in URL-safe base64 (43 characters)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_bytes(text: str) -> bytes:
    """The HMAC key of a secret's text (the text itself, as ASCII). Raises ValueError when the
    text is not a secret made by :func:`new_secret` (or of the same shape)."""
    secret = text.strip()
    if not _SECRET.fullmatch(secret):
        raise ValueError(
            "a webhook secret reads whsec_ followed by at least 32 characters of A-Z a-z 0-9 - _ "
            "(make one with new_secret(), or let the API make it)"
        )
    return secret.encode("ascii")


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``: one ``v1`` value."""
    if timestamp < 0:
        raise ValueError(f"a signature's timestamp is seconds since 1970, not {timestamp}")
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Otaudit-Signature`` header's value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    """(t, the v1 values) of a header's value; SignatureError when it is malformed."""
    timestamp: int | None = None
    candidates: list[str] = []
    for number, item in enumerate(header.split(","), start=1):
        key, equals, value = item.strip().partition("=")
        if not equals or not key:
            raise SignatureError(f"malformed {HEADER} header: item {number} is not key=value ({_EXPECTED})")
        if key == "t":
            if timestamp is not None:
                raise SignatureError(f"malformed {HEADER} header: t appears more than once ({_EXPECTED})")
            if not _DIGITS.fullmatch(value):
                raise SignatureError(f"malformed {HEADER} header: t is not a whole number of seconds since 1970 ({_EXPECTED})")
            timestamp = int(value)
        elif key == "v1":
            if not _HEX64.fullmatch(value.lower()):
                raise SignatureError(
                    f"malformed {HEADER} header: v1 number {len(candidates) + 1} is not 64 hex digits ({_EXPECTED})"
                )
            candidates.append(value.lower())
    if timestamp is None:
        raise SignatureError(f"malformed {HEADER} header: no t=<unix seconds> ({_EXPECTED})")
    if not candidates:
        raise SignatureError(f"malformed {HEADER} header: no v1 signature ({_EXPECTED})")
    return timestamp, candidates


def verify(
    secret: bytes, header: str | None, body: bytes, *, now: float, tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS
) -> None:
    """Returns when ``header`` (the ``Otaudit-Signature`` value) signs ``body`` under ``secret``
    and its time is within ``tolerance_seconds`` of ``now``; raises :class:`SignatureError`
    saying what is wrong otherwise. Signatures are compared in constant time."""
    if tolerance_seconds < 0:
        raise ValueError(f"tolerance_seconds is at least 0, not {tolerance_seconds}")
    if header is None or not header.strip():
        raise SignatureError(f"no {HEADER} header: the request is not signed")
    timestamp, candidates = _parse(header)
    expected = signature(secret, timestamp, body).encode("ascii")
    matched = False
    for candidate in candidates:
        # Every candidate is compared, matched or not: the time taken says nothing about which.
        matched |= hmac.compare_digest(expected, candidate.encode("ascii"))
    if not matched:
        checked = "the v1 signature does not" if len(candidates) == 1 else f"none of the {len(candidates)} v1 signatures"
        raise SignatureError(
            f"{checked} match the body under this secret: a wrong secret, or the body was changed "
            "(sign the raw bytes as received, before any parsing)"
        )
    age = now - timestamp
    if age > tolerance_seconds:
        raise SignatureError(
            f"the signature's time t={timestamp} is {age:.0f} seconds old, beyond the tolerance of "
            f"{tolerance_seconds:g} seconds: a replayed request, or the sender's clock is behind"
        )
    if -age > tolerance_seconds:
        raise SignatureError(
            f"the signature's time t={timestamp} is {-age:.0f} seconds in the future, beyond the tolerance of "
            f"{tolerance_seconds:g} seconds: the sender's clock is ahead, or the receiver's behind"
        )


def check_url(url: str) -> str | None:
    """What is wrong with ``url`` as a webhook's address (a sentence), or None when it will do:
    ``http`` or ``https``, a host, no user name or password in it, no fragment, no spaces or
    control characters, at most 2,048 characters."""
    if not url:
        return "the webhook URL is empty: give an https:// (or http://) address"
    if len(url) > MAX_URL_LENGTH:
        return f"the webhook URL is {len(url)} characters long, more than {MAX_URL_LENGTH:,}"
    if any(ord(character) <= 0x20 or 0x7F <= ord(character) <= 0x9F for character in url):
        return "the webhook URL holds spaces or control characters: percent-encode them"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"the webhook URL cannot be read: {error}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}://" if scheme else "no scheme"
        return f"the webhook URL must start with https:// or http://, not {shown}"
    if not parts.hostname:
        return "the webhook URL has no host: write https://host[:port]/path"
    if parts.username is not None or parts.password is not None:
        return (
            "the webhook URL holds a user name or password: remove it; each delivery is signed with the stream's secret instead"
        )
    if parts.fragment or url.endswith("#"):
        return "the webhook URL has a #fragment, which is never sent: remove it"
    if port == 0:
        return "the webhook URL's port is 0: give the receiver's port, or none for the scheme's default"
    return None
