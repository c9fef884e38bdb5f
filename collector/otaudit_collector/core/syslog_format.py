"""A stream's records as syslog messages: RFC 5424, framed by octet counting (RFC 6587 3.4.1).

One message per record::

    <PRI>1 TIMESTAMP HOSTNAME otaudit - MSGID [SD-ID tenant="…" seq="…" id="…" category="…" outcome="…"] BOM{json}

- PRI = facility * 8 + severity. The facility is configurable, by default 13, "log audit" in
  RFC 5424's table 1. The severity comes from the event's outcome: ``success`` is 5 (notice:
  normal but significant, what an audit trail is), anything else (``failure``, ``denied``, an
  outcome this collector does not know) is 4 (warning: someone may want to look at it).
- TIMESTAMP: the event's ``occurred_at`` in UTC, RFC 3339 with ``Z`` and at most 6 fraction
  digits (RFC 5424 6.2.3; further digits are cut, not rounded). NILVALUE (``-``) when the record
  has none that can be read; the MSG still holds the record as it is.
- HOSTNAME: the configured name (PRINTUSASCII, at most 255 characters; see :func:`check_hostname`).
- APP-NAME ``otaudit``; PROCID NILVALUE.
- MSGID: the event's name, its PRINTUSASCII characters only, at most 32; NILVALUE when none remain.
- STRUCTURED-DATA: one element. Its default SD-ID ``otaudit@32473`` uses 32473, the private
  enterprise number RFC 5424 (7.2.2, 9) reserves for examples and documentation: it is no
  registered number of otaudit's. An operator with a registered PEN sets its own SD-ID
  (``name@<PEN>``, see :func:`check_sd_id`). Parameters: ``tenant`` (the batch's), ``seq`` and
  ``id`` (the record's), ``category`` and ``outcome`` (the event's, left out when it has none).
  Values escape ``"``, ``\\`` and ``]`` with a backslash (RFC 5424 6.3.3); control characters are
  left out of them (the MSG keeps the exact values).
- MSG: the UTF-8 BOM, then the record's text (for the ``otaudit`` format: the event's JSON
  document with ``seq``; for ``ocsf``: the OCSF event), unchanged. The header's values come
  from the stored document in either format.

Framing: ``MSG-LEN SP SYSLOG-MSG``, MSG-LEN the message's length in octets, so no byte of the
message can end it early. A record whose text holds a line break or a NUL is refused
(``ValueError``): JSON text never does, and receivers that write one message a line would split
or cut it. Receivers must accept messages as long as the largest event (RFC 5425 asks for at
least 2048 octets, should 8192; rsyslog: ``global(maxMessageSize=...)``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Protocol

__all__ = [
    "APP_NAME",
    "DEFAULT_FACILITY",
    "DEFAULT_SD_ID",
    "RecordLike",
    "SyslogFormat",
    "check_hostname",
    "check_sd_id",
    "clean_hostname",
    "frame",
    "severity_of",
    "timestamp_of",
]

APP_NAME: Final = "otaudit"
DEFAULT_FACILITY: Final = 13  # "log audit" (RFC 5424, table 1)
DEFAULT_SD_ID: Final = "otaudit@32473"  # 32473: the example PEN of RFC 5424, not a registered one
SEVERITY_NOTICE: Final = 5
SEVERITY_WARNING: Final = 4
NILVALUE: Final = "-"
BOM: Final = b"\xef\xbb\xbf"
MSGID_MAX: Final = 32
HOSTNAME_MAX: Final = 255
SD_NAME_MAX: Final = 32

_ENTERPRISE = re.compile(r"[1-9][0-9]*(\.(0|[1-9][0-9]*))*")
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)


class RecordLike(Protocol):
    """What a message is made of: a stream's record (streams/transport.py's ``Record``)."""

    @property
    def seq(self) -> int: ...

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def document(self) -> Mapping[str, Any] | None: ...


def _printusascii(text: str) -> str:
    return "".join(character for character in text if "!" <= character <= "~")


def check_hostname(hostname: str) -> str:
    """``hostname`` if RFC 5424 allows it as HOSTNAME (1 to 255 PRINTUSASCII), else ValueError."""
    if not hostname or len(hostname) > HOSTNAME_MAX or _printusascii(hostname) != hostname:
        raise ValueError(
            f"the syslog hostname {hostname!r} is not 1 to {HOSTNAME_MAX} printable ASCII characters without spaces: "
            "set the stream's hostname to the name (or address) receivers should show"
        )
    return hostname


def clean_hostname(hostname: str) -> str:
    """A name taken from the system (``socket.gethostname()``) fit for HOSTNAME: its
    PRINTUSASCII characters, at most 255; NILVALUE when none remain."""
    return _printusascii(hostname)[:HOSTNAME_MAX] or NILVALUE


def check_sd_id(sd_id: str) -> str:
    """``sd_id`` if it is an SD-ID of the ``name@<private enterprise number>`` form, else ValueError."""
    name, at, enterprise = sd_id.partition("@")
    if (
        not at
        or not name
        or len(sd_id) > SD_NAME_MAX
        or _printusascii(sd_id) != sd_id
        or any(character in sd_id for character in '=]"')
        or "@" in name
        or _ENTERPRISE.fullmatch(enterprise) is None
    ):
        raise ValueError(
            f"the SD-ID {sd_id!r} is not name@<private enterprise number> in at most {SD_NAME_MAX} printable ASCII "
            "characters (no space, '=', ']', '\"'): use e.g. 'otaudit@' followed by your organization's IANA PEN"
        )
    return sd_id


def severity_of(outcome: object) -> int:
    """5 (notice) for a ``success``, 4 (warning) for any other outcome."""
    return SEVERITY_NOTICE if outcome == "success" else SEVERITY_WARNING


def timestamp_of(occurred_at: object) -> str:
    """An RFC 3339 time as RFC 5424's TIMESTAMP: in UTC with ``Z``, at most 6 fraction digits
    (more are cut); NILVALUE when it is not such a time."""
    if not isinstance(occurred_at, str):
        return NILVALUE
    match = _RFC3339.fullmatch(occurred_at)
    if match is None:
        return NILVALUE
    fraction = (match["fraction"] or "")[:6]
    zone = match["zone"]
    try:
        when = datetime.fromisoformat(f"{match['date']}T{match['time']}")
        if zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            when = when.replace(tzinfo=timezone(sign * offset)).astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return NILVALUE
    if not 1 <= when.year <= 9999:
        return NILVALUE
    stamp = f"{when.year:04d}-{when:%m-%dT%H:%M:%S}"
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def _param_value(value: str) -> str:
    kept = "".join(character for character in value if unicodedata.category(character) != "Cc")
    return kept.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _text(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) else None


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 3.4.1): ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


@dataclass(frozen=True, slots=True)
class SyslogFormat:
    """The settings of a stream's messages, checked when made (ValueError says what to fix)."""

    hostname: str
    facility: int = DEFAULT_FACILITY
    sd_id: str = DEFAULT_SD_ID

    def __post_init__(self) -> None:
        check_hostname(self.hostname)
        check_sd_id(self.sd_id)
        if type(self.facility) is not int or not 0 <= self.facility <= 23:
            raise ValueError(f"the syslog facility is a number from 0 to 23 (13: log audit), not {self.facility!r}")

    def message(self, record: RecordLike, tenant: str) -> bytes:
        """The record as one RFC 5424 message (no framing)."""
        if any(character in record.text for character in "\n\r\0"):
            raise ValueError(
                f"record seq {record.seq} holds a line break or a NUL: a syslog stream sends JSON records, one a message"
            )
        parsed: Any = record.document  # the stored document when the text is another format of it (OCSF)
        if parsed is None:
            try:
                parsed = json.loads(record.text)
            except ValueError:
                parsed = None
        document: Mapping[str, Any] = parsed if isinstance(parsed, Mapping) else {}
        outcome = _text(document, "outcome")
        category = _text(document, "category")
        msgid = _printusascii(_text(document, "event") or "")[:MSGID_MAX] or NILVALUE
        params = [("tenant", tenant), ("seq", str(record.seq)), ("id", record.id)]
        if category is not None:
            params.append(("category", category))
        if outcome is not None:
            params.append(("outcome", outcome))
        data = " ".join(f'{name}="{_param_value(value)}"' for name, value in params)
        pri = self.facility * 8 + severity_of(outcome)
        header = f"<{pri}>1 {timestamp_of(document.get('occurred_at'))} {self.hostname} {APP_NAME} {NILVALUE} {msgid}"
        return f"{header} [{self.sd_id} {data}] ".encode() + BOM + record.text.encode("utf-8", errors="replace")

    def frames(self, records: Iterable[RecordLike], tenant: str) -> bytes:
        """The records' messages, each framed by its length, one after the other."""
        return b"".join(frame(self.message(record, tenant)) for record in records)
