"""The filters of ``GET /v1/events`` (and export): parsed, checked, and turned into SQL.

Pure. Query parameters and the search phrase ``q`` become one ``Filters`` value; every
problem is a ``BadFilter`` naming the parameter. The SQL always starts from the tenant
and the categories the plan allows: no filter can widen that.

``q`` is a list of terms: ``key:value``, ``key:"a quoted value"``, ``-key:value`` (not),
and ``time:>value`` / ``time:>=`` / ``time:<`` / ``time:<=`` on the time the event
happened. Keys: event, category, outcome, actor (id or email), actor_type, target_type,
target_id, time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BadFilter",
    "DOCUMENT_SQL",
    "Filters",
    "parse_filters",
    "parse_time",
    "where_sql",
    "events_sql",
    "encode_cursor",
    "MAX_LIMIT",
]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

_COLUMNS = {
    "event": "event",
    "category": "category",
    "outcome": "outcome",
    "actor_type": "actor_type",
    "target_type": "target_type",
    "target_id": "target_id",
}
_TERM = re.compile(r'(-?)([a-z_]+):(>=|<=|>|<)?(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_TERM_START = re.compile(r"(?<!\S)-?[a-z_]+:")  # only after a blank: linear however long the words


class BadFilter(ValueError):
    """A filter that cannot be used; ``parameter`` names it (400)."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


@dataclass(slots=True)
class Filters:
    equal: dict[str, list[str]] = field(default_factory=dict)  # key -> any of these values
    not_equal: list[tuple[str, str]] = field(default_factory=list)
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[dt.datetime, int] | None = None

    @property
    def categories(self) -> list[str]:
        return self.equal.get("category", [])


def parse_time(value: str, parameter: str) -> dt.datetime:
    """RFC 3339 (a time zone required) or Unix seconds."""
    text = value.strip()
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return dt.datetime.fromtimestamp(float(text), dt.UTC)
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        zoned = when.tzinfo is not None
        # In UTC: PostgreSQL refuses offsets beyond +-15:59 that Python accepts.
        utc = when.astimezone(dt.UTC) if zoned else when
    except (ValueError, OverflowError, OSError):
        raise BadFilter(parameter, f"'{value}' is not an RFC 3339 time or Unix seconds") from None
    if not zoned:
        raise BadFilter(parameter, f"'{value}' has no time zone (add Z or +00:00)")
    return utc


def parse_filters(params: Mapping[str, Sequence[str]]) -> Filters:
    out = Filters()
    for key in ("category", "event", "outcome", "actor", "target_type", "target_id"):
        values = [v for v in params.get(key, []) if v != ""]
        if values:
            out.equal.setdefault(key, []).extend(values)
    for name in ("since", "until"):
        given = params.get(name, [])
        if len(given) > 1:
            raise BadFilter(name, "give it once")
        if given:
            setattr(out, name, parse_time(given[0], name))
    for text in params.get("q", []):
        _parse_q(text, out)
    limits = params.get("limit", [])
    if limits:
        try:
            out.limit = int(limits[0])
        except ValueError:
            raise BadFilter("limit", f"'{limits[0]}' is not a number") from None
        if not 1 <= out.limit <= MAX_LIMIT:
            raise BadFilter("limit", f"must be between 1 and {MAX_LIMIT}, got {out.limit}")
    cursors = params.get("cursor", [])
    if cursors and cursors[0]:
        out.cursor = _decode_cursor(cursors[0])
    for outcome in out.equal.get("outcome", []):
        if outcome not in ("success", "failure", "denied"):
            raise BadFilter("outcome", f"'{outcome}' is not one of success, failure, denied")
    if out.since and out.until and out.since >= out.until:
        raise BadFilter("until", "must be after since")
    return out


def _parse_q(text: str, out: Filters) -> None:
    # Each term is matched where the previous one (and the blanks after it) ended, never searched for:
    # a search restarts at every letter of a long word and takes time quadratic in its length.
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return
        match = _TERM.match(text, pos)
        if match is None:
            after = _TERM_START.search(text, pos + 1)
            gap = text[pos : after.start() if after else len(text)].strip()
            shown = gap if len(gap) <= 80 else gap[:80] + "..."
            raise BadFilter("q", f"'{shown}' is not a key:value term (keys: {', '.join(sorted({*_COLUMNS, 'actor', 'time'}))})")
        pos = match.end()
        negated, key, op, quoted, plain = match.groups()
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
        if key == "time":
            if negated or not op:
                raise BadFilter("q", f"time takes a comparison: time:>VALUE, time:>=, time:< or time:<= (in '{match[0]}')")
            when = parse_time(value, "q")
            if op.startswith(">"):
                out.since = max(out.since, when) if out.since else when
            else:
                out.until = min(out.until, when) if out.until else when
            continue
        if key not in _COLUMNS and key != "actor":
            raise BadFilter("q", f"unknown key '{key}' (keys: {', '.join(sorted({*_COLUMNS, 'actor', 'time'}))})")
        if op:
            raise BadFilter("q", f"only time takes a comparison, not {key} (in '{match[0]}')")
        if negated:
            out.not_equal.append((key, value))
        else:
            out.equal.setdefault(key, []).append(value)


# An event as the API shows it: the normalized document with seq and received_at, as
# JSON text made by PostgreSQL (pages and exports pass it through without parsing it).
DOCUMENT_SQL = (
    "(doc || jsonb_build_object('seq', seq, 'received_at',"
    " to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')))::text"
)


def encode_cursor(occurred_at: dt.datetime, seq: int) -> str:
    raw = json.dumps([occurred_at.isoformat(), seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[dt.datetime, int]:
    try:
        when, seq = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        at = dt.datetime.fromisoformat(when)
        if at.tzinfo is not None and type(seq) is int:
            return at, seq
    except (ValueError, TypeError, binascii.Error):
        pass
    raise BadFilter("cursor", "not a cursor this API gave out; start again without it")


def where_sql(tenant: str, categories: Sequence[str] | None, filters: Filters) -> tuple[str, list[Any]]:
    """The WHERE condition (without the cursor) of the tenant's events matching ``filters``.
    ``categories`` None reads every category (a plan with ``*``)."""
    where = ["tenant = %s"]
    params: list[Any] = [tenant]
    if categories is not None:
        where.append("category = ANY(%s)")
        params.append(list(categories))
    for key, values in filters.equal.items():
        if key == "category":
            continue  # already the categories argument, checked against the plan
        if key == "actor":
            where.append("(actor_id = ANY(%s) OR actor_email = ANY(%s))")
            params += [values, values]
        else:
            where.append(f"{_COLUMNS[key]} = ANY(%s)")
            params.append(values)
    for key, value in filters.not_equal:
        if key == "actor":
            where.append("(actor_id IS DISTINCT FROM %s AND actor_email IS DISTINCT FROM %s)")
            params += [value, value]
        else:
            where.append(f"{_COLUMNS[key]} IS DISTINCT FROM %s")
            params.append(value)
    if filters.since is not None:
        where.append("occurred_at >= %s")
        params.append(filters.since)
    if filters.until is not None:
        where.append("occurred_at < %s")
        params.append(filters.until)
    return " AND ".join(where), params


def events_sql(tenant: str, categories: Sequence[str] | None, filters: Filters, *, columns: str) -> tuple[str, list[Any]]:
    """SELECT ``columns`` of the tenant's matching events, newest first, one page after the cursor."""
    where, params = where_sql(tenant, categories, filters)
    if filters.cursor is not None:
        where += " AND (occurred_at, seq) < (%s, %s)"
        params += list(filters.cursor)
    sql = f"SELECT {columns} FROM events WHERE {where} ORDER BY occurred_at DESC, seq DESC LIMIT %s"
    return sql, [*params, filters.limit]
