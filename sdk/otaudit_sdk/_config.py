"""``configure()``'s arguments, completed from the environment and checked once.

Precedence: an argument, then the variable, then the default. The standard OpenTelemetry
variables are honoured (the ``_LOGS_`` form first); the SDK's own are ``OTAUDIT_SDK_*``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from otaudit_sdk._event import check_tenant

__all__ = ["Settings", "settings_from", "ENVIRONMENT", "DURABILITIES"]

DURABILITIES: Final = ("file", "fsync", "memory")

ENVIRONMENT: Final = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "collector address; '/v1/logs' is added for HTTP",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "collector address for logs, used as is",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "'grpc' or 'http/protobuf' (the default)",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "the same, for logs",
    "OTEL_EXPORTER_OTLP_HEADERS": "extra request headers, 'key=value,key2=value2' (URL-encoded values)",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "the same, for logs",
    "OTEL_EXPORTER_OTLP_COMPRESSION": "'gzip' or 'none'",
    "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "the same, for logs",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "CA bundle for TLS to the collector",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "per-request timeout in milliseconds (the specification's unit; at least 1 s is used)",
    "OTEL_SERVICE_NAME": "service.name of the emitting service",
    "OTEL_RESOURCE_ATTRIBUTES": "extra resource attributes, 'key=value,...' (may carry audit.tenant.id)",
    "OTAUDIT_SDK_BUFFER_DIR": "where undelivered events wait on disk",
    "OTAUDIT_SDK_DURABILITY": "'file' (default), 'fsync' or 'memory'",
    "OTAUDIT_SDK_TENANT": "tenant of events recorded without tenant=",
    "OTAUDIT_SDK_TOKEN": "ingest token, sent as 'authorization: Bearer TOKEN'",
}


@dataclass(frozen=True, slots=True)
class Settings:
    endpoint: str
    protocol: str  # "grpc" or "http"
    headers: dict[str, str] = field(repr=False)
    gzip: bool
    certificate: str | None
    timeout_seconds: float
    service_name: str
    instance_id: str
    resource_attributes: dict[str, Any]
    tenant: str | None
    buffer_dir: Path
    durability: str
    fsync_interval_seconds: float
    max_buffer_bytes: int
    segment_bytes: int
    batch_records: int
    batch_bytes: int
    retry_initial_seconds: float
    retry_max_seconds: float
    retry_timeout_seconds: float | None
    exit_timeout_seconds: float
    dead_letter_path: Path


def _env(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def _pairs(text: str | None, source: str) -> dict[str, str]:
    """``key=value,key2=value2`` (URL-encoded), as the OTel variables write headers and
    resource attributes. A malformed entry is named by position: a header may be a secret."""
    if not text:
        return {}
    from urllib.parse import unquote

    out = {}
    for number, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{source}: entry {number} is not key=value (its text is not shown: it may hold a secret)")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _default_buffer_dir(service: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "otaudit" / re.sub(r"[^A-Za-z0-9_.-]", "_", service)


def settings_from(
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    service_name: str | None = None,
    tenant: str | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    buffer_dir: str | os.PathLike[str] | None = None,
    durability: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    compression: str | None = None,
    timeout_seconds: float | None = None,
    fsync_interval_seconds: float = 1.0,
    max_buffer_bytes: int = 256 << 20,
    segment_bytes: int = 8 << 20,
    batch_records: int = 1000,
    batch_bytes: int = 4 << 20,
    retry_initial_seconds: float = 0.5,
    retry_max_seconds: float = 30.0,
    retry_timeout_seconds: float | None = None,
    exit_timeout_seconds: float = 5.0,
    dead_letter_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    proto = (
        protocol or _env(("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"), env) or "http/protobuf"
    ).lower()
    if proto in ("http", "http/protobuf"):
        proto = "http"
    elif proto != "grpc":
        raise ValueError(f"protocol {proto!r} is not supported: use 'grpc' or 'http/protobuf'")

    url = endpoint or _env(("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",), env)
    if url is None:
        base = _env(("OTEL_EXPORTER_OTLP_ENDPOINT",), env)
        if base is None:
            url = "http://localhost:4317" if proto == "grpc" else "http://localhost:4318/v1/logs"
        elif proto == "http":
            url = base.rstrip("/") + "/v1/logs"
        else:
            url = base
    if proto == "http" and not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {url!r} must start with http:// or https:// for OTLP/HTTP")

    header_text = _env(("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"), env)
    merged = {k.lower(): v for k, v in _pairs(header_text, "OTEL_EXPORTER_OTLP_HEADERS").items()}
    merged.update({k.lower(): v for k, v in (headers or {}).items()})
    secret = token or _env(("OTAUDIT_SDK_TOKEN",), env)
    if secret:
        merged["authorization"] = f"Bearer {secret}"

    squeeze = (
        compression or _env(("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"), env) or "none"
    ).lower()
    if squeeze not in ("gzip", "none"):
        raise ValueError(f"compression {squeeze!r} is not supported: use 'gzip' or 'none'")

    if timeout_seconds is None:
        millis = _env(("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), env)
        timeout_seconds = max(1.0, float(millis) / 1000) if millis else 10.0

    resource: dict[str, Any] = dict(_pairs(_env(("OTEL_RESOURCE_ATTRIBUTES",), env), "OTEL_RESOURCE_ATTRIBUTES"))
    resource.update(resource_attributes or {})
    service = service_name or _env(("OTEL_SERVICE_NAME",), env) or resource.get("service.name") or "unknown_service"
    resource["service.name"] = service
    instance = str(uuid.uuid4())
    resource["service.instance.id"] = instance

    tenant = tenant or _env(("OTAUDIT_SDK_TENANT",), env)
    if tenant is not None:
        check_tenant(tenant)

    mode = (durability or _env(("OTAUDIT_SDK_DURABILITY",), env) or "file").lower()
    if mode not in DURABILITIES:
        raise ValueError(f"durability {mode!r} is not one of {', '.join(DURABILITIES)}")
    folder = Path(buffer_dir or _env(("OTAUDIT_SDK_BUFFER_DIR",), env) or _default_buffer_dir(str(service)))
    for name, value in (
        ("max_buffer_bytes", max_buffer_bytes),
        ("segment_bytes", segment_bytes),
        ("batch_records", batch_records),
        ("batch_bytes", batch_bytes),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    return Settings(
        endpoint=url,
        protocol=proto,
        headers=merged,
        gzip=squeeze == "gzip",
        certificate=_env(("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"), env),
        timeout_seconds=float(timeout_seconds),
        service_name=str(service),
        instance_id=instance,
        resource_attributes=resource,
        tenant=tenant,
        buffer_dir=folder,
        durability=mode,
        fsync_interval_seconds=fsync_interval_seconds,
        max_buffer_bytes=max_buffer_bytes,
        segment_bytes=segment_bytes,
        batch_records=batch_records,
        batch_bytes=batch_bytes,
        retry_initial_seconds=retry_initial_seconds,
        retry_max_seconds=retry_max_seconds,
        retry_timeout_seconds=retry_timeout_seconds,
        exit_timeout_seconds=exit_timeout_seconds,
        dead_letter_path=Path(dead_letter_path) if dead_letter_path else folder / "dead-letter.jsonl",
    )
