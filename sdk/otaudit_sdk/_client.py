"""The audit client: ``record()`` appends to the buffer; a sender thread delivers.

One client per process is the usual shape (``otaudit_sdk.configure``). A forked child
gets a fresh buffer segment, sequence and sender of its own; events buffered by a
process that died are sent by the next one that uses the same buffer directory.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from opentelemetry import trace as _trace

from otaudit_sdk import _encode as enc
from otaudit_sdk import _event
from otaudit_sdk._buffer import Buffer, BufferFull, FileBuffer, MemoryBuffer
from otaudit_sdk._config import Settings
from otaudit_sdk._model import Actor, Change, Target
from otaudit_sdk._sender import Rejected, Sender
from otaudit_sdk._transport import Transport, open_transport
from otaudit_sdk.attributes import OUTCOMES, TENANT_ID

__all__ = ["AuditClient", "Status", "BufferFullError", "NotConfiguredError"]

_log = logging.getLogger("otaudit_sdk")

SCOPE_NAME = "otaudit_sdk"
SCOPE_VERSION = "0.2.0"


class BufferFullError(RuntimeError):
    """``record()`` could not keep the event: the buffer holds its limit of undelivered
    events. Nothing was dropped: the event was not recorded, and the caller decides
    (fail the request, wait and retry, raise the limit, bring the collector back)."""

    def __init__(self, message: str, *, event: str, id: str, record: bytes) -> None:
        super().__init__(message)
        self.event = event
        self.id = id
        self.record = record
        """The encoded OTLP LogRecord, for a handler that keeps it elsewhere."""


class NotConfiguredError(RuntimeError):
    """An audit call before ``otaudit_sdk.configure()``."""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What ``flush()`` saw, counted since the previous ``flush()`` of this client (or since ``configure()``).

    True (``bool(result)``) when nothing is pending: every event was settled, delivered or
    dead-lettered, which is what ``flush()`` returned before. A rejected event is settled but
    not in the trail: ``all_delivered`` (or ``rejected``) tells the two apart.
    """

    delivered: int
    """Stored by the collector (duplicates of a retried request included)."""
    rejected: int
    """Refused by the collector (a catalog violation): in the dead-letter file, not in the trail."""
    expired: int
    """Given up after ``retry_timeout_seconds``: in the dead-letter file, not in the trail."""
    pending: int
    """Still buffered when ``flush()`` returned (its timeout passed, or the sender stopped)."""

    def __bool__(self) -> bool:
        return self.pending == 0

    @property
    def all_delivered(self) -> bool:
        """Nothing pending and nothing dead-lettered: every event reached the trail."""
        return self.pending == 0 and self.rejected == 0 and self.expired == 0


@dataclass(frozen=True, slots=True)
class Status:
    """What the SDK holds and has done since this process started."""

    buffered: int
    """Events recorded (or left by an earlier process) and not yet delivered or dead-lettered."""
    buffered_bytes: int
    recorded: int
    sent: int
    rejected: int
    """Refused by the collector (schema or whole-request errors), in the dead-letter file."""
    expired: int
    """Given up after ``retry_timeout_seconds``, in the dead-letter file."""
    retries: int
    adopted: int
    """Events found buffered by an earlier process and taken over."""
    oldest_unsent_age_seconds: float | None
    last_error: str


class AuditClient:
    def __init__(
        self,
        settings: Settings,
        *,
        on_reject: Callable[[Rejected], None] | None = None,
        on_buffer_full: Callable[[BufferFullError], None] | None = None,
        handle_sigterm: bool = False,
        buffer: Buffer | None = None,
        transport: Callable[[], Transport] | None = None,
    ) -> None:
        self.settings = settings
        self._on_reject = on_reject
        self._on_buffer_full = on_buffer_full
        self._open_transport = transport
        self._lock = threading.Lock()
        self._sequence = 0
        self._recorded = 0
        self._closed = False
        self._flushed = (0, 0, 0)  # sent, rejected, expired at the end of the previous flush()
        self._resource = enc.resource(settings.resource_attributes)
        self._scope = enc.scope(SCOPE_NAME, SCOPE_VERSION)
        self._resource_has_tenant = TENANT_ID in settings.resource_attributes
        self.buffer = buffer if buffer is not None else self._new_buffer()
        self._sender: Sender | None = None
        if buffer is None:
            self._start_sender()
            _clients.add(self)
        if handle_sigterm:
            self.handle_sigterm()

    def _new_buffer(self) -> Buffer:
        s = self.settings
        if s.durability == "memory":
            return MemoryBuffer(self._resource, s.max_buffer_bytes)
        return FileBuffer(
            s.buffer_dir,
            resource=self._resource,
            instance=s.instance_id,
            max_bytes=s.max_buffer_bytes,
            segment_bytes=s.segment_bytes,
            fsync_each=s.durability == "fsync",
        )

    def _start_sender(self) -> None:
        s = self.settings

        def transport() -> Transport:
            return open_transport(s.protocol, s.endpoint, s.headers, gzip_body=s.gzip, certificate=s.certificate)

        self._sender = Sender(self.buffer, s, self._scope, self._open_transport or transport, self._on_reject)
        self._sender.start()

    # -- recording -------------------------------------------------------------------

    def record(
        self,
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
        """Record one audit event and return its id (a UUIDv7).

        The event is in the local buffer when this returns (on disk unless
        ``durability='memory'``); the sender delivers it in the background. Raises
        ``ValueError``/``TypeError`` for an event the collector would reject on sight and
        ``BufferFullError`` when the buffer is full (unless ``on_buffer_full`` is set).
        ``related`` names the other objects the event concerns (each a ``Target`` with an id:
        a device's license, an order's customer), so that it shows in their history too.
        """
        if self._closed:
            raise RuntimeError("this audit client was shut down; configure a new one")
        _event.check_name("event", event)
        _event.check_name("category", category)
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        tenant = tenant if tenant is not None else self.settings.tenant
        if tenant is None:
            if not self._resource_has_tenant:
                raise ValueError("no tenant: pass tenant=..., or configure(tenant=...) for a single-tenant service")
        else:
            _event.check_tenant(tenant)
        now_ns = time.time_ns()
        time_ns = _event.time_ns_of(occurred_at) if occurred_at is not None else now_ns
        uid = _event.uuid7(now_ns // 1_000_000)
        span = _trace.get_current_span().get_span_context()
        trace = (
            (span.trace_id.to_bytes(16, "big"), span.span_id.to_bytes(8, "big"), int(span.trace_flags)) if span.is_valid else None
        )
        encoded = _event.encode_event(
            event,
            uid=uid,
            category=category,
            tenant=tenant,
            actor=actor,
            target=target,
            changes=changes,
            details=details,
            outcome=outcome,
            reason=reason,
            message=message,
            time_ns=time_ns,
            observed_ns=now_ns,
            trace=trace,
            extra=attributes,
            related=related,
        )
        with self._lock:
            sequence = self._sequence + 1
            encoded += _event.sequence_attribute(sequence)
            try:
                self.buffer.append(encoded, now_ns)
            except BufferFull as exc:
                error = BufferFullError(f"audit event '{event}' ({uid}) not recorded: {exc}", event=event, id=uid, record=encoded)
            else:
                self._sequence = sequence
                self._recorded += 1
                return uid
        if self._on_buffer_full is None:
            raise error
        self._on_buffer_full(error)
        return uid

    # -- delivery ----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> FlushResult:
        """Wait up to ``timeout`` seconds until every buffered event is delivered or dead-lettered.

        The result is true when nothing is pending; it counts what was delivered, rejected and
        expired since the previous flush, so a caller sees that its only event was rejected.
        """
        deadline = time.monotonic() + timeout
        sender = self._sender
        if sender is not None:
            sender.hurry()
            with sender.counters.changed:
                while self.buffer.pending[0] > 0:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sender.alive():
                        break
                    sender.counters.changed.wait(min(left, 0.2))
        return self._flush_result()

    def _flush_result(self) -> FlushResult:
        c = self._sender.counters if self._sender is not None else None
        with self._lock:
            now = (c.sent, c.rejected, c.expired) if c else (0, 0, 0)
            before, self._flushed = self._flushed, now
        sent, rejected, expired = (a - b for a, b in zip(now, before, strict=True))
        return FlushResult(delivered=sent, rejected=rejected, expired=expired, pending=self.buffer.pending[0])

    def shutdown(self, timeout: float | None = None) -> bool:
        """Deliver what can be delivered within ``timeout`` (``exit_timeout_seconds`` by
        default), then stop. What is left stays on disk for the next start (and is
        reported); in memory mode it is lost, and reported as such."""
        if self._closed:
            return self.buffer.pending[0] == 0
        self._closed = True
        wait = self.settings.exit_timeout_seconds if timeout is None else timeout
        if self._sender is not None:
            self._sender.stop(wait)
        left, _ = self.buffer.pending
        if left and self.settings.durability == "memory":
            _log.error("%s not delivered and lost (durability='memory')", _events(left, "was", "were"))
        elif left:
            _log.warning(
                "%s not delivered yet; they stay in %s and are sent when a process using it starts",
                _events(left, "is", "are"),
                self.settings.buffer_dir,
            )
        self.buffer.close()
        return left == 0

    def status(self) -> Status:
        count, size = self.buffer.pending
        oldest = self.buffer.oldest_ns() if count else None
        c = self._sender.counters if self._sender is not None else None
        return Status(
            buffered=count,
            buffered_bytes=size,
            recorded=self._recorded,
            sent=c.sent if c else 0,
            rejected=c.rejected if c else 0,
            expired=c.expired if c else 0,
            retries=c.retries if c else 0,
            adopted=c.adopted if c else 0,
            oldest_unsent_age_seconds=max(0.0, (time.time_ns() - oldest) / 1e9) if oldest else None,
            last_error=c.last_error if c else "",
        )

    # -- process events ------------------------------------------------------------------

    def handle_sigterm(self) -> None:
        """On SIGTERM: deliver for up to ``exit_timeout_seconds``, then let the signal's
        previous handler (or the default, ending the process) take its course. The client
        stays open, so a server draining its requests can still record; what they record
        is delivered at exit, or stays buffered for the next start."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: FrameType | None) -> None:
            # Only the main thread may set handlers: put the previous one back now, deliver in a
            # thread (the main thread may hold the buffer's lock), then send the signal again.
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

            def finish() -> None:
                self.flush(self.settings.exit_timeout_seconds)
                os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=finish, name="otaudit-sigterm", daemon=True).start()

        signal.signal(signal.SIGTERM, on_term)

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        if self._closed:
            return
        attrs = dict(self.settings.resource_attributes)
        instance = str(uuid.uuid4())
        attrs["service.instance.id"] = instance
        self.settings = dataclasses.replace(self.settings, instance_id=instance, resource_attributes=attrs)
        self._resource = enc.resource(attrs)
        self._sequence = 0
        self._recorded = 0
        self.buffer.reset_after_fork(self._resource, instance)
        if self._sender is not None:
            self._start_sender()


_clients: weakref.WeakSet[AuditClient] = weakref.WeakSet()


def _at_exit() -> None:
    for client in list(_clients):
        client.shutdown()


def _fork_hook(name: str) -> Callable[[], None]:
    def hook() -> None:
        for client in list(_clients):
            getattr(client, name)()

    return hook


atexit.register(_at_exit)
os.register_at_fork(
    before=_fork_hook("_before_fork"),
    after_in_parent=_fork_hook("_after_fork_parent"),
    after_in_child=_fork_hook("_after_fork_child"),
)


def _events(count: int, one: str, many: str) -> str:
    """ "1 audit event was" / "2 audit events were": log lines count in plain English."""
    return f"{count} audit event{'' if count == 1 else 's'} {one if count == 1 else many}"
