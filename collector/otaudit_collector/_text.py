"""Words for people: counts in messages read "1 event" and "2 events", never "1 events"."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, word: str, words: str | None = None, *, thousands: bool = False) -> str:
    """``count`` and ``word`` (``words`` when it is not 1; ``word + "s"`` by default); ``thousands`` writes 1,000."""
    number = f"{count:,}" if thousands else str(count)
    return f"{number} {word if count == 1 else (words or word + 's')}"
