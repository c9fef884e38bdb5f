"""What a destination of a stream is to the delivery loop.

The loop reads the next events after the stream's cursor, in ``seq`` order, and hands them to
its transport as one :class:`Batch`. ``send`` returns once the destination holds every record
of the batch (the loop then moves the cursor past it), or raises :class:`DeliveryFailed` (the
loop keeps the cursor and sends the same batch again after a backoff, at least the
``retry_after`` the destination asked for). A transport never skips a record and never
reorders: delivery is at-least-once, in ``seq`` order, and each record carries the event's id
and ``seq`` so a receiver can drop repeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Batch", "DeliveryFailed", "Record", "Transport"]


@dataclass(frozen=True, slots=True)
class Record:
    """One event: its ``seq`` in the tenant's trail, its id, and the record as the stream's
    format writes it (for the ``otaudit`` format: the event's JSON document with ``seq``).
    ``document``: the stored document itself, when the text is another format of it (what a
    syslog header reads its event name and outcome from)."""

    seq: int
    id: str
    text: str
    document: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one tenant's stream, ``seq`` ascending and gap-free over what the stream's
    filter and the tenant's plan let through (other events' numbers are skipped)."""

    tenant: str
    stream_id: str
    records: Sequence[Record]
    format: str = "otaudit"
    """The records' format (core/streams.py's FORMATS)."""

    @property
    def first_seq(self) -> int:
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq


class DeliveryFailed(Exception):
    """The destination did not take the batch. ``message`` is the receiver's own words (a
    status and the start of its answer, a connection error), never a secret of the stream;
    ``retry_after``: seconds the receiver asked to wait (Retry-After, RetryInfo), if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Transport(Protocol):
    """A destination. Made by the runner from the stream's stored settings (secrets decrypted
    in memory only); one per stream and lease, closed when the lease ends."""

    async def send(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...
