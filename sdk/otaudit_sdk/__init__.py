"""otaudit SDK: record audit events, delivered durably to the otaudit collector over OTLP.

::

    import otaudit_sdk as audit

    audit.configure(service_name="accounts-api", tenant="acme")
    audit.record("addRole", category="accounts_configuration",
                 actor=audit.Actor.user("u-17", email="ann@acme.test"),
                 target=audit.Target("role", "r-3", "Auditors"))

``record()`` writes the event to a local buffer and returns its id; a background thread
sends it, retries while the collector is away, and moves events the collector rejects to
a dead-letter file. ``flush()``, ``shutdown()`` and ``status()`` tell what was delivered.
The wire format is the otaudit contract (``audit.*`` attributes on OTel log records).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from otaudit_sdk import attributes
from otaudit_sdk._audited import Audited, AuditScope
from otaudit_sdk._client import SCOPE_VERSION, AuditClient, BufferFullError, FlushResult, NotConfiguredError, Status
from otaudit_sdk._config import settings_from
from otaudit_sdk._encode import EncodeError
from otaudit_sdk._model import Actor, Change, Target, changes
from otaudit_sdk._sender import Rejected

__all__ = [
    "__version__",
    "configure",
    "record",
    "audited",
    "flush",
    "shutdown",
    "status",
    "client",
    "Actor",
    "Target",
    "Change",
    "changes",
    "AuditClient",
    "AuditScope",
    "Status",
    "FlushResult",
    "Rejected",
    "BufferFullError",
    "EncodeError",
    "NotConfiguredError",
    "attributes",
]

__version__ = SCOPE_VERSION

_current: AuditClient | None = None
_configure_lock = threading.Lock()


def configure(
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    service_name: str | None = None,
    tenant: str | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    buffer_dir: str | os.PathLike[str] | None = None,
    durability: str | None = None,
    on_reject: Callable[[Rejected], None] | None = None,
    on_buffer_full: Callable[[BufferFullError], None] | None = None,
    handle_sigterm: bool = False,
    **options: Any,
) -> AuditClient:
    """Set up the process's audit client (once, at start) and return it.

    ``endpoint``/``protocol`` (``grpc`` or ``http/protobuf``), ``headers`` and
    ``service_name`` default to the standard ``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``
    and ``OTEL_RESOURCE_ATTRIBUTES`` variables. ``tenant`` is used when ``record()`` names
    none. ``token`` is sent as ``authorization: Bearer``. ``durability`` is ``file``
    (default: on disk before ``record()`` returns, fsynced every second), ``fsync``
    (``record()`` returns once the event is fsynced) or ``memory`` (lost if the process
    dies). Further options: see ``otaudit_sdk._config.settings_from``.
    """
    global _current
    settings = settings_from(
        endpoint=endpoint,
        protocol=protocol,
        service_name=service_name,
        tenant=tenant,
        headers=headers,
        token=token,
        buffer_dir=buffer_dir,
        durability=durability,
        **options,
    )
    with _configure_lock:
        previous, _current = _current, None
        if previous is not None:
            previous.shutdown()
        _current = AuditClient(settings, on_reject=on_reject, on_buffer_full=on_buffer_full, handle_sigterm=handle_sigterm)
        return _current


def client() -> AuditClient:
    """The configured client; raises ``NotConfiguredError`` before ``configure()``."""
    if _current is None:
        raise NotConfiguredError("otaudit_sdk is not configured: call otaudit_sdk.configure(...) at start")
    return _current


def _install(new: AuditClient | None) -> AuditClient | None:
    """Swap the process's client (``otaudit_sdk.testing``); returns the previous one."""
    global _current
    with _configure_lock:
        previous, _current = _current, new
    return previous


def record(
    event: str,
    *,
    category: str,
    actor: Actor,
    target: Target | None = None,
    changes: Sequence[Change | Mapping[str, Any]] | None = None,
    details: Mapping[str, Any] | None = None,
    outcome: str = "success",
    tenant: str | None = None,
    occurred_at: Any = None,
    reason: str | None = None,
    message: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    related: Sequence[Target] | None = None,
) -> str:
    """Record one audit event; returns its id. See ``AuditClient.record``."""
    return client().record(
        event,
        category=category,
        actor=actor,
        target=target,
        changes=changes,
        details=details,
        outcome=outcome,
        tenant=tenant,
        occurred_at=occurred_at,
        reason=reason,
        message=message,
        attributes=attributes,
        related=related,
    )


def audited(
    event: str,
    *,
    category: str,
    actor: Actor,
    target: Target | None = None,
    details: Mapping[str, Any] | None = None,
    changes: Sequence[Change] | None = None,
    related: Sequence[Target] | None = None,
    denied_on: tuple[type[BaseException], ...] = (PermissionError,),
    **options: Any,
) -> Audited:
    """A context manager or decorator that records ``event`` when the block ends, with
    outcome ``failure`` (or ``denied``) and the exception as the reason if it raised."""

    def send(*args: Any, **kwargs: Any) -> str:
        return client().record(*args, **kwargs)

    return Audited(
        send,
        event,
        category=category,
        actor=actor,
        target=target,
        details=details,
        changes=changes,
        related=related,
        denied_on=denied_on,
        **options,
    )


def flush(timeout: float = 10.0) -> FlushResult:
    """Wait up to ``timeout`` seconds for every buffered event to be delivered or dead-lettered.

    The result is true when nothing is pending (as before); ``.delivered``, ``.rejected``,
    ``.expired`` (since the previous flush) and ``.all_delivered`` say whether events reached the
    trail or went to the dead-letter file."""
    return client().flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Deliver what can be delivered, then stop the client. True if nothing is left."""
    global _current
    with _configure_lock:
        current, _current = _current, None
    return current.shutdown(timeout) if current is not None else True


def status() -> Status:
    """Buffered, sent, rejected and retried counts, and the age of the oldest unsent event."""
    return client().status()
