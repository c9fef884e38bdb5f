"""Streams: what a stream is, checked, and the pure parts of delivering it.

Pure. A stream's spec comes from the API's JSON, the CLI (through the API) or the
configuration's ``streams.declared``; ``parse_new`` and ``parse_change`` turn it into typed
values, and every problem is a ``BadStream`` naming the field (filter terms go through
``core.query.parse_filters``: the grammar and the 400 messages of ``GET /v1/events``).

Also here: the starting point (``"now"``, ``{"seq": N}``, ``{"time": T}``), which categories
a delivery reads under the tenant's plan, the capped exponential backoff of a failing
destination, and the encryption of destinations' secrets (AES-GCM under a key mixed from a
random key kept in the database and the configured token pepper, so neither alone decrypts;
the stream's tenant and id are its associated data, so a ciphertext copied to another stream
does not decrypt).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import random
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from otaudit_collector.core.export import is_unicode
from otaudit_collector.core.plans import Plan
from otaudit_collector.core.query import BadFilter, parse_filters, parse_time
from otaudit_collector.core.syslog_format import check_hostname, check_sd_id
from otaudit_collector.core.webhook_signature import check_url as _check_url
from otaudit_collector.core.webhook_signature import secret_bytes

__all__ = [
    "BadStream",
    "Change",
    "DeclaredSpec",
    "FILTER_TERMS",
    "FORMATS",
    "KINDS",
    "RETRY_AFTER_LIMIT_SECONDS",
    "SecretUnreadable",
    "Spec",
    "Start",
    "backoff_seconds",
    "decrypt_secret",
    "delivery_categories",
    "encrypt_secret",
    "filter_terms",
    "parse_change",
    "parse_declared",
    "parse_new",
    "parse_start",
    "secrets_key",
]

FILTER_TERMS = ("category", "event", "actor", "target_type", "target_id", "outcome", "q")
"""The filters a stream takes: those of GET /v1/events but the time range (its start says where it begins)."""
KINDS = ("webhook", "file", "otlp", "syslog")
FORMATS = ("otaudit", "ocsf", "cef")
"""Record formats: otaudit's own event document (with ``seq``), an OCSF event (core/ocsf.py), or
a CEF line (core/cef.py; syslog streams only). An OTLP stream sends OTel log records with
otaudit's attributes: it takes no format."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_HELP = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
RETRY_AFTER_LIMIT_SECONDS = 3600.0
"""A receiver's Retry-After is honoured up to an hour: one answer cannot stop a stream for longer."""
_FIELDS = {
    "webhook": {"url", "timeout_seconds"},
    "file": {"folder", "rotate_seconds", "rotate_bytes"},
    "otlp": {"endpoint", "protocol", "timeout_seconds", "auth_header", "auth", "ca"},
    "syslog": {"host", "port", "tls", "timeout_seconds", "ca", "server_name", "facility", "sd_id", "hostname"},
}
"""Each kind's settings; ``auth`` (an OTLP receiver's credential) is a secret, stored encrypted;
``ca`` (the PEM certificates to trust instead of the system's, for a private CA) is public."""
CA_MAX_CHARACTERS = 65536
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]")
_HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")


class BadStream(ValueError):
    """A stream spec that cannot be used; ``field`` names the part (400)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class SecretUnreadable(Exception):
    """A stored secret does not decrypt: the database key or the token pepper changed since it was stored."""


@dataclass(frozen=True, slots=True)
class Start:
    """Where a new stream begins: ``now`` (events committed from now on), ``seq`` (that event and
    the ones after it), or ``time`` (events received at or after it)."""

    kind: str
    seq: int | None = None
    time: dt.datetime | None = None

    def describe(self) -> str:
        if self.kind == "seq":
            return f"seq {self.seq}"
        if self.kind == "time" and self.time is not None:
            return self.time.isoformat().replace("+00:00", "Z")
        return "now"


@dataclass(frozen=True, slots=True)
class Spec:
    """A new stream. ``settings``: the destination's non-secret settings (url, folder, rotation);
    ``given_secret``: a credential the maker gave (an OTLP receiver's), never shown again."""

    name: str
    kind: str
    settings: dict[str, Any]
    filter: dict[str, list[str]]
    start: Start = Start("now")
    given_secret: str | None = field(default=None, repr=False)
    format: str = "otaudit"
    """The records' format (``FORMATS``)."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a PATCH changes; None leaves a part as it is."""

    name: str | None = None
    filter: dict[str, list[str]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _object(body: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadStream("body", f"send a JSON object such as {example}")
    return body


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadStream("name", f"must be {_NAME_HELP}")
    return value


def filter_terms(value: Any, *, parameter: str = "filter") -> dict[str, list[str]]:
    """The filter terms of a spec, as query parameters (``{"q": ["..."]}``), checked with
    ``parse_filters``: a bad term raises its ``BadFilter`` (400, the message of GET /v1/events)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadStream(
            parameter, f'must be an object of filter terms such as {{"category": ["site_access"]}} ({", ".join(FILTER_TERMS)})'
        )
    terms: dict[str, list[str]] = {}
    for key, given in value.items():
        if key not in FILTER_TERMS:
            hint = "; a stream's start says where it begins" if key in ("since", "until") else ""
            raise BadStream(f"{parameter}.{key}", f"unknown filter term (terms: {', '.join(FILTER_TERMS)}){hint}")
        values = given if isinstance(given, list) else [given]
        if not all(isinstance(v, str) for v in values):
            raise BadStream(f"{parameter}.{key}", "must be a string or a list of strings")
        if any("\x00" in v or not is_unicode(v) for v in values):
            raise BadStream(f"{parameter}.{key}", "contains a NUL character or a lone surrogate; send valid text")
        if values:
            terms[key] = list(values)
    parse_filters(terms)  # raises BadFilter naming the term
    return terms


def parse_start(value: Any, *, now: dt.datetime) -> Start:
    """``"now"``, ``{"seq": N}`` (N >= 1) or ``{"time": RFC 3339 or Unix seconds}`` (not in the future)."""
    if value is None or value == "now":
        return Start("now")
    if isinstance(value, Mapping) and len(value) == 1:
        if "seq" in value:
            seq = value["seq"]
            if type(seq) is not int or seq < 1:
                raise BadStream("start.seq", "must be a whole number, at least 1 (the first event of the tenant is seq 1)")
            return Start("seq", seq=seq)
        if "time" in value:
            given = value["time"]
            if isinstance(given, int | float) and not isinstance(given, bool):
                given = str(given)
            if not isinstance(given, str):
                raise BadStream("start.time", "must be an RFC 3339 time or Unix seconds")
            try:
                when = parse_time(given, "start.time")
            except BadFilter as exc:
                raise BadStream("start.time", str(exc).split(": ", 1)[1]) from None
            if when > now:
                raise BadStream("start.time", 'is in the future; use "now" to deliver events from now on')
            return Start("time", time=when)
    raise BadStream("start", 'must be "now", {"seq": N} or {"time": "2026-01-01T00:00:00Z"}')


def _ca(value: Any) -> str:
    """PEM certificates to trust, checked by loading them the way the transport will."""
    if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value or len(value) > CA_MAX_CHARACTERS:
        raise BadStream(
            "ca", f"must be PEM certificate text (-----BEGIN CERTIFICATE----- ...), at most {CA_MAX_CHARACTERS} characters"
        )
    try:
        ssl.create_default_context(cadata=value)
    except (ssl.SSLError, ValueError) as exc:
        raise BadStream("ca", f"is not a certificate this collector can load: {exc}") from None
    return value


def _number(body: Mapping[str, Any], key: str, minimum: float, maximum: float, *, whole: bool = False) -> float:
    value = body[key]
    kinds = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not minimum <= value <= maximum:
        raise BadStream(key, f"must be a {'whole ' if whole else ''}number from {minimum:g} to {maximum:g}")
    return float(value)


def _settings(
    kind: str, body: Mapping[str, Any], check_url: Callable[[str], str | None] | None, *, partial: bool = False
) -> dict[str, Any]:
    """The destination's non-secret settings in ``body``; ``partial``: a change, which names only some."""
    settings: dict[str, Any] = {}
    if kind == "webhook":
        url = body.get("url")
        if url is not None or not partial:
            if not isinstance(url, str) or not url:
                raise BadStream("url", "a webhook stream needs the receiver's URL, e.g. https://siem.example.com/otaudit")
            problem = check_url(url) if check_url is not None else None
            if problem:
                raise BadStream("url", problem)
            settings["url"] = url
        if "timeout_seconds" in body:
            settings["timeout_seconds"] = float(_number(body, "timeout_seconds", 0.1, 300))
    elif kind == "otlp":
        endpoint = body.get("endpoint")
        if endpoint is not None or not partial:
            if not isinstance(endpoint, str) or not endpoint:
                raise BadStream("endpoint", "an otlp stream needs the receiver's URL, e.g. https://otel.example.com:4318")
            problem = check_url(endpoint) if check_url is not None else None
            if problem:
                raise BadStream("endpoint", problem)
            settings["endpoint"] = endpoint
        protocol = body.get("protocol")
        if protocol is not None or not partial:
            if (protocol or "http") not in ("grpc", "http"):
                raise BadStream("protocol", 'must be "grpc" or "http" (OTLP/HTTP protobuf, the default)')
            settings["protocol"] = protocol or "http"
        if "auth_header" in body:
            if not isinstance(body["auth_header"], str) or not _HEADER.fullmatch(body["auth_header"]):
                raise BadStream("auth_header", "must be a header name (letters, digits, '-'), e.g. Authorization or dd-api-key")
            settings["auth_header"] = body["auth_header"]
        if "timeout_seconds" in body:
            settings["timeout_seconds"] = float(_number(body, "timeout_seconds", 0.1, 300))
        if "ca" in body:
            settings["ca"] = _ca(body["ca"])
            if str(settings.get("endpoint", "")).startswith("http://"):
                raise BadStream("ca", "is for a TLS endpoint (https://, or host:port with gRPC); this one is http://")
    elif kind == "syslog":
        host = body.get("host")
        if host is not None or not partial:
            if not isinstance(host, str) or not _HOST.fullmatch(host):
                raise BadStream("host", "a syslog stream needs the receiver's host name or address, e.g. siem.example.com")
            settings["host"] = host
        if "port" in body or not partial:
            if "port" not in body:
                raise BadStream("port", "a syslog stream needs the receiver's TCP port, e.g. 6514 (TLS) or 601")
            settings["port"] = int(_number(body, "port", 1, 65535, whole=True))
        if "tls" in body:
            if not isinstance(body["tls"], bool):
                raise BadStream("tls", "must be true (RFC 5425, TLS) or false (plain TCP)")
            settings["tls"] = body["tls"]
        if "timeout_seconds" in body:
            settings["timeout_seconds"] = float(_number(body, "timeout_seconds", 0.1, 300))
        if "ca" in body:
            settings["ca"] = _ca(body["ca"])
        if "server_name" in body:
            if not isinstance(body["server_name"], str) or not _HOST.fullmatch(body["server_name"]):
                raise BadStream("server_name", "must be the host name the receiver's certificate names, e.g. siem.example.com")
            settings["server_name"] = body["server_name"]
        if not partial and not settings.get("tls") and ("ca" in settings or "server_name" in settings):
            field = "ca" if "ca" in settings else "server_name"
            raise BadStream(field, 'is a setting of TLS: add "tls": true (RFC 5425), or leave it out')
        if "facility" in body:
            settings["facility"] = int(_number(body, "facility", 0, 23, whole=True))
        for key, check in (("sd_id", check_sd_id), ("hostname", check_hostname)):
            if key in body:
                if not isinstance(body[key], str):
                    raise BadStream(key, "must be text")
                try:
                    settings[key] = check(body[key])
                except ValueError as exc:
                    raise BadStream(key, str(exc)) from None
    else:
        folder = body.get("folder")
        if folder is not None or not partial:
            if not isinstance(folder, str) or not folder.startswith("/"):
                raise BadStream("folder", "a file stream needs an absolute folder path")
            settings["folder"] = folder
        if "rotate_seconds" in body:
            settings["rotate_seconds"] = float(_number(body, "rotate_seconds", 1, 86400 * 7))
        if "rotate_bytes" in body:
            settings["rotate_bytes"] = int(_number(body, "rotate_bytes", 1024, 1 << 40, whole=True))
    return settings


_COMMON = {"name", "kind", "filter", "start", "format"}.union(*_FIELDS.values())


def parse_new(
    body: Any,
    *,
    now: dt.datetime,
    kinds: Sequence[str] = KINDS,
    check_url: Callable[[str], str | None] | None = None,
) -> Spec:
    """A new stream from ``{"name", "kind", "url" | "folder", "filter", "start"}``. ``kinds``: those
    this caller may make (the API: webhook only; files are the operator's, in the configuration)."""
    spec = _object(body, '{"name": "siem", "kind": "webhook", "url": "https://siem.example.com/otaudit"}')
    for key in spec:
        if key not in _COMMON:
            raise BadStream(str(key), f"unknown field; a stream takes {', '.join(sorted(_COMMON))}")
    name = _name(spec.get("name"))
    kind = spec.get("kind", "webhook")
    if kind not in KINDS:
        raise BadStream("kind", f"must be one of {', '.join(KINDS)}")
    if kind not in kinds:
        raise BadStream(
            "kind",
            "file streams write on the collector's disk: an operator declares them in the configuration (streams.declared)",
        )
    extra = set(spec) - {"name", "kind", "filter", "start", "format"} - _FIELDS[kind]
    if extra:
        raise BadStream(sorted(extra)[0], f"is not a setting of a {kind} stream")
    fmt = spec.get("format", "otaudit")
    if kind == "otlp" and "format" in spec:
        raise BadStream(
            "format", "an otlp stream sends OTel log records with otaudit's attributes; formats are for webhook, file and syslog"
        )
    if fmt not in FORMATS:
        raise BadStream("format", f"must be one of {', '.join(FORMATS)} (otaudit, the default: the event's own document)")
    if fmt == "cef" and kind != "syslog":
        raise BadStream("format", "cef is a syslog line format: only a syslog stream takes it (ocsf suits webhooks and files)")
    given = spec.get("auth")
    if given is not None and (not isinstance(given, str) or not given or not given.isprintable() or not is_unicode(given)):
        raise BadStream("auth", "must be the credential's text, e.g. 'Bearer otaudit_...' for another otaudit")
    return Spec(
        name=name,
        kind=kind,
        settings=_settings(kind, spec, check_url),
        filter=filter_terms(spec.get("filter")),
        start=parse_start(spec.get("start"), now=now),
        given_secret=given,
        format=fmt,
    )


def parse_change(body: Any, kind: str, *, check_url: Callable[[str], str | None] | None = None) -> Change:
    """What ``PATCH /v1/streams/{id}`` changes: ``name``, ``filter``, and the destination's settings.
    The kind, the start and the secret stay (make a new stream for another)."""
    spec = _object(body, '{"filter": {"category": ["site_access"]}}')
    allowed = {"name", "filter", *(_FIELDS[kind] - {"auth"})}
    for key in spec:
        if key not in allowed:
            why = (
                "it cannot change; make a new stream" if key in ("kind", "start", "secret", "format", "auth") else "unknown field"
            )
            raise BadStream(str(key), f"{why} (a change takes {', '.join(sorted(allowed))})")
    if not spec:
        raise BadStream("body", f"names nothing to change (a change takes {', '.join(sorted(allowed))})")
    return Change(
        name=_name(spec["name"]) if "name" in spec else None,
        filter=filter_terms(spec["filter"]) if "filter" in spec else None,
        settings=_settings(kind, spec, check_url, partial=True),
    )


@dataclass(frozen=True, slots=True)
class DeclaredSpec:
    """A stream of ``streams.declared``: for ``tenants`` (None: every tenant), with its secret's text."""

    tenants: tuple[str, ...] | None
    spec: Spec
    secret: str | None


def parse_declared(items: Sequence[Mapping[str, Any]], *, environ: Mapping[str, str], now: dt.datetime) -> list[DeclaredSpec]:
    """The configuration's declared streams, checked like the API's (the schema checked their shape);
    a problem raises ``BadStream`` naming ``streams.declared[N].FIELD``. A webhook's secret comes from
    the environment variable its ``secret_env`` names."""
    out: list[DeclaredSpec] = []
    names: set[str] = set()
    for n, item in enumerate(items):
        where = f"streams.declared[{n}]"
        body = {k: v for k, v in item.items() if k not in ("tenants", "secret_env")}
        try:
            spec = parse_new(body, now=now, check_url=_check_url)
            secret = None
            if spec.kind == "webhook":
                variable = item.get("secret_env")
                if not variable:
                    raise BadStream("secret_env", "a webhook stream names the environment variable holding its secret")
                secret = environ.get(variable)
                if not secret:
                    raise BadStream("secret_env", f"the environment variable {variable} is not set")
                secret_bytes(secret)  # ValueError saying what a secret looks like
            elif spec.kind == "otlp" and item.get("secret_env"):  # the receiver's credential, if it wants one
                secret = environ.get(item["secret_env"])
                if not secret:
                    raise BadStream("secret_env", f"the environment variable {item['secret_env']} is not set")
            elif "secret_env" in item:
                raise BadStream("secret_env", "only a webhook or otlp stream has a secret")
        except (BadStream, BadFilter, ValueError) as exc:
            part = getattr(exc, "field", None) or getattr(exc, "parameter", None) or "secret_env"  # secret_bytes' ValueError
            said = str(exc).split(": ", 1)[1] if isinstance(exc, BadStream | BadFilter) else str(exc)
            raise BadStream(f"{where}.{part}", said) from None
        if spec.name in names:
            raise BadStream(f"{where}.name", f"{spec.name!r} is declared twice")
        names.add(spec.name)
        tenants = item.get("tenants")
        out.append(DeclaredSpec(None if tenants == "*" else tuple(tenants or ()), spec, secret))
    return out


def delivery_categories(plan: Plan, requested: Sequence[str]) -> list[str] | None:
    """The categories a delivery reads now: the stream's own, kept to those the plan reads (all the
    plan reads when it names none). None: every category (a plan with ``*`` and no category term).
    Unlike a read, naming a category the plan lost is no error: it is left out, as the plan says."""
    if "*" in plan.categories:
        return list(requested) if requested else None
    return [c for c in (requested or plan.categories) if plan.reads(c)]


def backoff_seconds(
    attempts: int,
    *,
    max_seconds: float,
    retry_after: float | None = None,
    base_seconds: float = 1.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """How long to wait after the ``attempts``-th failure in a row: ``base * 2**(attempts-1)``
    capped at ``max_seconds``, less a random part of up to a half (replicas and streams that
    failed together do not retry together), and never less than the receiver's ``retry_after``
    (itself capped at ``RETRY_AFTER_LIMIT_SECONDS``)."""
    ceiling = min(max_seconds, base_seconds * 2.0 ** min(max(attempts - 1, 0), 62))
    delay = ceiling * (1.0 - 0.5 * rand())
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_LIMIT_SECONDS))
    return delay


def secrets_key(stored: bytes, pepper: str) -> bytes:
    """The AES-256 key of destinations' secrets: the database's random key mixed with the pepper."""
    return hmac.new(stored, b"otaudit stream secrets\x00" + pepper.encode(), hashlib.sha256).digest()


def _associated(tenant: str, stream_id: str) -> bytes:
    return b"otaudit stream secret\x00" + tenant.encode() + b"\x00" + stream_id.encode()


def encrypt_secret(key: bytes, tenant: str, stream_id: str, secret: str) -> bytes:
    """The stored form of a stream's secret: a 12-byte nonce, then the AES-GCM ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), _associated(tenant, stream_id))


def decrypt_secret(key: bytes, tenant: str, stream_id: str, stored: bytes) -> str:
    try:
        return AESGCM(key).decrypt(stored[:12], stored[12:], _associated(tenant, stream_id)).decode()
    except (InvalidTag, ValueError):
        raise SecretUnreadable(
            "the stream's secret does not decrypt: auth.token_pepper (or the database's key) changed since it was"
            " stored; delete the stream and make it again"
        ) from None
