"""Admission of OTLP requests: a concurrency slot each, and a byte budget they all share.

Pure (no I/O, no event loop): counters with take/reserve and release, safe to use from one
event loop. A receiver admits a request *before* reading its body, so the memory held by
request bodies is bounded by configuration whatever the clients do:

- ``Slots``: at most ``limit`` requests are being read or processed at once
  (``ingest.max_concurrent_requests``); one more is refused at once, unread.
- ``ByteBudget``: the bytes of request bodies held in memory at once, every request
  together (``ingest.max_inflight_bytes``): bytes received, and bytes decompressed from
  them. A request charges its ``Charge`` before it holds more; a charge that does not fit is
  refused (the request is answered as retryable), never waited for.
- ``Ticket``: one admitted request, its slot and its charge; released together, once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["ByteBudget", "Charge", "Slot", "Slots", "Ticket"]


class Slots:
    """A counter of requests in flight, with a limit."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a slot limit is at least 1, got {limit}")
        self.limit = limit
        self.in_use = 0

    def take(self) -> Slot | None:
        """A slot, or None when ``limit`` are in use."""
        if self.in_use >= self.limit:
            return None
        self.in_use += 1
        return Slot(self)


class Slot:
    """One taken slot; ``release`` gives it back (once, however often it is called)."""

    __slots__ = ("_slots",)

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots

    @property
    def released(self) -> bool:
        return self._slots is None

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.in_use -= 1


class ByteBudget:
    """Bytes that requests may hold at once; each request charges its own ``Charge``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a byte budget is at least 1 byte, got {capacity}")
        self.capacity = capacity
        self.used = 0

    @property
    def available(self) -> int:
        return self.capacity - self.used

    def charge(self) -> Charge:
        """A new, empty account against this budget (one request's)."""
        return Charge(self)


class Charge:
    """The bytes one request holds against a ``ByteBudget``."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    @property
    def budget(self) -> ByteBudget:
        return self._budget

    def reserve(self, size: int) -> bool:
        """Hold ``size`` more bytes if the budget has them (all or nothing); False if it has not."""
        if size < 0:
            raise ValueError(f"cannot reserve {size} bytes")
        if size > self._budget.available:
            return False
        self._budget.used += size
        self.held += size
        return True

    def release(self, size: int | None = None) -> None:
        """Give back ``size`` bytes of those held (all of them by default)."""
        size = self.held if size is None else min(size, self.held)
        if size < 0:
            raise ValueError(f"cannot release {size} bytes")
        self.held -= size
        self._budget.used -= size


class Ticket:
    """One admitted request: its concurrency slot and its charge of body bytes.

    A context manager: leaving it releases both, whatever happened.
    """

    __slots__ = ("bytes", "slot")

    def __init__(self, slot: Slot, charge: Charge) -> None:
        self.slot = slot
        self.bytes = charge

    @property
    def released(self) -> bool:
        return self.slot.released

    def release(self) -> None:
        self.bytes.release()
        self.slot.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
