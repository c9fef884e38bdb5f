"""The background sender: takes batches from the buffer and settles each record's fate.

Every record ends exactly one way: delivered (the collector acknowledged it), or
dead-lettered (the collector rejected it, or it could not be delivered within the
configured retry time). Retryable answers are retried with capped, jittered backoff,
honouring the collector's RetryInfo / Retry-After. A batch the collector finds too large,
or refuses whole, is split until the culprit is alone. Nothing is dropped in between.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otaudit_sdk import _encode as enc
from otaudit_sdk._buffer import Batch, Buffer
from otaudit_sdk._config import Settings
from otaudit_sdk._transport import Answer, Transport

__all__ = ["Sender", "Rejected", "Counters"]

_log = logging.getLogger("otaudit_sdk")

_NAMED = re.compile(r"(?:quarantined: | \| )(record \d+ \(resource_logs\[0\]\.scope_logs\[0\]\.log_records\[(\d+)\])")
_MIN_PAUSE_SECONDS = 0.05
_ORPHAN_SCAN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event the collector did not store, as written to the dead-letter file."""

    id: str | None
    event: str | None
    category: str | None
    tenant: str | None
    reason: str
    record: bytes
    resource: bytes


class Counters:
    """What the sender has done, for ``status()``; guarded by one condition."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.sent = 0
        self.rejected = 0
        self.expired = 0
        self.retries = 0
        self.adopted = 0
        self.last_error = ""

    def add(self, **amounts: int) -> None:
        with self.changed:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)
            self.changed.notify_all()


class Sender:
    def __init__(
        self,
        buffer: Buffer,
        settings: Settings,
        scope: bytes,
        open_transport: Callable[[], Transport],
        on_reject: Callable[[Rejected], None] | None,
    ) -> None:
        self.buffer = buffer
        self.settings = settings
        self.counters = Counters()
        self._scope = scope
        self._open = open_transport
        self._on_reject = on_reject
        self._transport: Transport | None = None
        self._stop_at: float | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otaudit-sender", daemon=True)
        self._sync_thread: threading.Thread | None = None
        self._random = random.Random()

    def start(self) -> None:
        self._thread.start()
        if self.settings.durability == "file" and self.settings.fsync_interval_seconds > 0:
            self._sync_thread = threading.Thread(target=self._sync_loop, name="otaudit-fsync", daemon=True)
            self._sync_thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def hurry(self) -> None:
        """Cut a backoff wait short (``flush``)."""
        self._wake.set()
        self.buffer.has_data.set()

    def stop(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop."""
        self._stop_at = time.monotonic() + max(0.0, timeout)
        self.hurry()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)
        if self._sync_thread is not None:
            self._sync_thread.join(2.0)

    def _stopping(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    # -- the loop ------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while self._stop_at is None:
            time.sleep(self.settings.fsync_interval_seconds)
            try:
                self.buffer.sync()
            except OSError as exc:
                _log.error("could not fsync the audit buffer: %s", exc)

    def _run(self) -> None:
        next_scan = 0.0
        failures = 0
        while not self._stopping():
            try:
                if time.monotonic() >= next_scan:
                    self._adopt()
                    next_scan = time.monotonic() + _ORPHAN_SCAN_SECONDS
                batch = self.buffer.take(self.settings.batch_records, self.settings.batch_bytes)
                if batch is None:
                    if self._stop_at is not None:
                        break
                    self.buffer.has_data.wait(min(1.0, max(0.0, next_scan - time.monotonic())))
                    continue
                if self._deliver(batch, batch.records, time.monotonic()):
                    self.buffer.done(batch)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a disk error, a bad certificate path, a bug: log, wait, go on
                failures += 1
                _log.exception("the otaudit sender failed; the events stay buffered and it tries again")
                self.counters.last_error = f"sender error: {type(exc).__name__}: {exc}"
                self._reset_transport()
                self._pause(Answer("retry"), failures)
        self._reset_transport()

    def _reset_transport(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - closing a broken channel may fail too
                _log.debug("closing the transport failed", exc_info=True)

    def _adopt(self) -> None:
        try:
            found = self.buffer.adopt_orphans()
        except OSError as exc:
            _log.error("could not read buffered events left by an earlier process: %s", exc)
            return
        if found:
            self.counters.add(adopted=found)
            _log.info("sending %d audit events left undelivered by an earlier process", found)

    # -- one batch -----------------------------------------------------------------

    def _deliver(self, batch: Batch, records: Sequence[bytes], started: float) -> bool:
        """Settle every record of ``records``; False when stopped before that."""
        attempt = 0
        while True:
            answer = self._send(batch.resource, records)
            if answer.kind == "ok":
                return self._settle(batch, records, answer, started)
            if answer.kind in ("too_large", "refused"):
                if len(records) > 1:
                    half = len(records) // 2
                    return self._deliver(batch, records[:half], started) and self._deliver(batch, records[half:], started)
                self._dead_letter(batch.resource, records, f"the collector refused the event: {answer.message}")
                return True
            limit = self.settings.retry_timeout_seconds
            if limit is not None and time.monotonic() - started >= limit:
                why = f"not delivered within {limit:g} s of trying; last answer: {answer.message}"
                self._dead_letter(batch.resource, records, why, expired=True)
                return True
            self._note_failure(answer, attempt)
            if not self._pause(answer, attempt):
                return False
            attempt += 1

    def _send(self, resource: bytes, records: Sequence[bytes]) -> Answer:
        if self._transport is None:
            self._transport = self._open()
        body = enc.export_request([(resource, self._scope, records)])
        timeout = self.settings.timeout_seconds
        if self._stop_at is not None:  # stopping: the request must end before the stop deadline
            timeout = max(0.1, min(timeout, self._stop_at - time.monotonic()))
        return self._transport.send(body, timeout)

    def _settle(self, batch: Batch, records: Sequence[bytes], answer: Answer, started: float) -> bool:
        rejected = min(answer.rejected, len(records))
        if rejected <= 0:
            self.counters.add(sent=len(records))
            return True
        named = _named_rejects(answer.message, len(records))
        if len(named) >= rejected or len(records) == 1:
            if not named:
                named = {0: answer.message}
            for index, why in named.items():
                self._dead_letter(batch.resource, [records[index]], why)
            self.counters.add(sent=len(records) - len(named))
            return True
        # The collector rejected more than it named: settle the named ones, and send the rest
        # again (stored ones are acknowledged again, as duplicates) until each is named.
        for index, why in named.items():
            self._dead_letter(batch.resource, [records[index]], why)
        rest = [r for i, r in enumerate(records) if i not in named]
        if named:
            return self._deliver(batch, rest, time.monotonic())
        half = len(rest) // 2
        return self._deliver(batch, rest[:half], started) and self._deliver(batch, rest[half:], started)

    def _note_failure(self, answer: Answer, attempt: int) -> None:
        self.counters.add(retries=1)
        self.counters.last_error = answer.message
        level = logging.ERROR if answer.kind == "config" else logging.WARNING
        if attempt == 0 or attempt % 10 == 0:
            _log.log(level, "audit events not delivered yet (attempt %d, will retry): %s", attempt + 1, answer.message)

    def _pause(self, answer: Answer, attempt: int) -> bool:
        """Sleep before the next attempt; False when asked to stop meanwhile."""
        cap = self.settings.retry_max_seconds
        if answer.retry_after is not None:
            delay = min(answer.retry_after, 10 * cap)
        else:
            delay = min(cap, self.settings.retry_initial_seconds * 2 ** min(attempt, 30))
            delay *= self._random.uniform(0.5, 1.0)
        delay = max(delay, _MIN_PAUSE_SECONDS)
        deadline = time.monotonic() + delay
        while True:
            if self._stopping():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self._wake.wait(min(left, 0.5)):
                self._wake.clear()
                if self._stop_at is None and answer.retry_after is None:
                    return True  # flush() cuts our own backoff short, never the collector's hint

    # -- dead letters --------------------------------------------------------------

    def _dead_letter(self, resource: bytes, records: Sequence[bytes], why: str, *, expired: bool = False) -> None:
        rejected = [_describe(record, resource, why) for record in records]
        _write_dead_letters(self.settings.dead_letter_path, rejected)
        for item in rejected:
            _log.error(
                "audit event %s (%s) was not stored and went to %s: %s",
                item.id,
                item.event,
                self.settings.dead_letter_path,
                why,
            )
            if self._on_reject is not None:
                try:
                    self._on_reject(item)
                except Exception:  # noqa: BLE001 - the caller's callback must not stop delivery
                    _log.exception("the on_reject callback failed")
        self.counters.add(**({"expired": len(records)} if expired else {"rejected": len(records)}))


def _named_rejects(message: str, count: int) -> dict[int, str]:
    """The records a collector's partial_success message names, with its words for each."""
    found = list(_NAMED.finditer(message))
    named: dict[int, str] = {}
    for i, match in enumerate(found):
        index = int(match.group(2))
        stop = found[i + 1].start() if i + 1 < len(found) else len(message)
        text = message[match.start(1) : stop].rstrip(" |")
        text = re.sub(r" \| and \d+ more .*$", "", text)
        if index < count:
            named[index] = text
    return named


def _describe(record: bytes, resource: bytes, why: str) -> Rejected:
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    attrs: dict[str, Any] = {}
    event = None
    try:
        message = LogRecord.FromString(record)
        event = message.event_name or None
        for kv in message.attributes:
            if kv.key in ("log.record.uid", "audit.category", "audit.tenant.id"):
                attrs[kv.key] = kv.value.string_value
    except DecodeError:  # the collector's reason is what matters; keep the bytes regardless
        pass
    return Rejected(
        id=attrs.get("log.record.uid"),
        event=event,
        category=attrs.get("audit.category"),
        tenant=attrs.get("audit.tenant.id"),
        reason=why,
        record=record,
        resource=resource,
    )


def _write_dead_letters(path: Path, items: Sequence[Rejected]) -> None:
    lines = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for item in items:
        lines.append(
            json.dumps(
                {
                    "rejected_at": stamp,
                    "id": item.id,
                    "event": item.event,
                    "category": item.category,
                    "tenant": item.tenant,
                    "reason": item.reason,
                    "record": base64.b64encode(item.record).decode(),
                    "resource": base64.b64encode(item.resource).decode(),
                },
                ensure_ascii=False,
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        data = memoryview(("\n".join(lines) + "\n").encode())
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
