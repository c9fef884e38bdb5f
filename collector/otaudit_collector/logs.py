"""Structured logs: one JSON object per line on stderr (or plain text for a terminal).

Messages carry no secrets and no event contents: callers pass counts, ids of requests
and error texts, never attribute values. Two filters on the handler hold that line and
keep the log readable whatever clients send:

- ``Redact``: defence in depth for texts the collector does not write itself (an
  exception's message quoting a malformed request, a library's log line). Anything shaped
  like an otaudit token (``otaudit_<id>_<secret>``, even cut short) loses its secret, and
  the credential after ``Bearer`` is replaced, in the message, the extras, the exception
  and the stack text.
- ``Repeats``: the same warning or error (same logger, level and message template, whatever
  its arguments and extras such as ``token_id``) is logged once per
  ``logging.repeat_window_seconds``; the first one after the window carries
  ``suppressed: N``, the count dropped meanwhile (a count still pending when no such line
  comes again is not reported). Errors are limited too: a client that can cause an error
  once can cause it thousands of times, and the first occurrence with its traceback, then
  the count, says as much as every copy. Info and debug lines are not limited: they are
  state changes an operator reads in order, or were asked for; nor is critical.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Redact", "Repeats", "redact", "setup_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_TOKEN = re.compile(r"(otaudit_[0-9A-Fa-f]{1,12}_)[A-Za-z0-9_\-]+")
_BEARER = re.compile(r"(?i)(bearer)(?:\s+|\\x[0-9a-f]{2}|\\[tn])+([^\s'\"]+)")
REDACTED = "[redacted]"
_REDACTED_TOKEN = re.compile(r"otaudit_[0-9A-Fa-f]{1,12}_\[redacted\]")
_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9_\-]+")  # a stream's secret (core/webhook_signature.py)


def redact(text: str) -> str:
    """``text`` without token secrets, webhook secrets or bearer credentials (the token's id is
    kept: it is no secret)."""
    if "whsec_" in text:
        text = _WEBHOOK_SECRET.sub("whsec_" + REDACTED, text)
    if "otaudit_" not in text and "earer" not in text.lower():
        return text
    text = _TOKEN.sub(lambda m: m[1] + REDACTED, text)
    return _BEARER.sub(_bearer, text)


def _bearer(match: re.Match[str]) -> str:
    kept = _REDACTED_TOKEN.match(match[2])  # a token whose secret is gone already: its id may stay
    return f"{match[1]} {kept[0] if kept else REDACTED}"


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes | bytearray):
        return redact(repr(bytes(value)))
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))  # formatted with str() anyway (an exception, a path...)


class Redact(logging.Filter):
    """Removes credentials from a record before any formatter sees it (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log the template, not lose the line
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _redact_value(value))
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None  # only the redacted text is formatted from here on
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class Repeats(logging.Filter):
    """Logs the same warning or error once per ``window`` seconds (see the module docstring).

    At most ``max_kinds`` kinds are remembered (least recently seen forgotten first), so that
    messages built with varying text cannot grow it without bound.
    """

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic, max_kinds: int = 1024) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._max_kinds = max_kinds
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # kind -> [logged at, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window <= 0 or not logging.WARNING <= record.levelno <= logging.ERROR:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None:
            self._seen.move_to_end(kind)
            if now - seen[0] < self.window:
                seen[1] += 1
                return False
            if seen[1]:
                record.suppressed = int(seen[1])
            seen[0], seen[1] = now, 0
            return True
        self._seen[kind] = [now, 0]
        if len(self._seen) > self._max_kinds:
            self._seen.popitem(last=False)
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        suppressed = getattr(record, "suppressed", None)
        return f"{text} (and {suppressed} more like it suppressed)" if suppressed else text


def setup_logging(level: str = "info", fmt: str = "json", repeat_window_seconds: float = 60.0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    # Repeats first: a dropped record is not worth redacting. Redact last, before the formatter.
    handler.addFilter(Repeats(repeat_window_seconds))
    handler.addFilter(Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pgserver", "psycopg", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
