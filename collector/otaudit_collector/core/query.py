"""The filters of ``GET /v1/events`` (and export): parsed, checked, and turned into SQL.

Pure. Query parameters and the search phrase ``q`` become one ``Filters`` value; every
problem is a ``BadFilter`` naming the parameter. The SQL always starts from the tenant
and the categories the plan allows: no filter can widen that.

``q`` is a list of terms: ``key:value``, ``key:"a quoted value"``, ``-key:value`` (not),
and ``time:>value`` / ``time:>=`` / ``time:<`` / ``time:<=`` on the time the event
happened. Keys: event, category, outcome, actor (id or email), actor_type, target_type,
target_id, time; and, matched by equality or by prefix (a value ending in ``*``, escaped
as ``"\\*"`` in quotes for a literal star), target_name and ``details.KEY`` (a top-level
key of the event's details). Terms with the same key match any of their values; different
keys, and negated terms, must all hold.

``target_type`` / ``target_id`` match the event's target or any of its related objects
(``related``): an object's history includes the events that merely concern it. Every
condition is written in the expressions that the indexes of migrations 0001 and 0007 cover.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BadFilter",
    "DOCUMENT_SQL",
    "Filters",
    "TextTerm",
    "parse_filters",
    "parse_time",
    "where_sql",
    "events_sql",
    "page_sql",
    "encode_cursor",
    "MAX_LIMIT",
]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_OBJECTS = 100
"""At most this many (target_type, target_id) combinations in one filter: each is a lookup in the related index."""

_COLUMNS = {
    "event": "event",
    "category": "category",
    "outcome": "outcome",
    "actor_type": "actor_type",
    "target_type": "target_type",
    "target_id": "target_id",
}
_KEY = r"(?:details\.[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}|[a-z_]+)"
_TERM = re.compile(r"(-?)(" + _KEY + r'):(>=|<=|>|<)?(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_TERM_START = re.compile(r"(?<!\S)-?" + _KEY + ":")  # only after a blank: linear however long the words
_MATCHED = ("target_name",)  # keys matched by equality or prefix, besides details.KEY
_KEYS_HELP = "event, category, outcome, actor, actor_type, target_type, target_id, target_name, details.KEY, time"
_TARGET_NAME_SQL = "(doc #>> '{target,name}')"
_DETAILS_SQL = "(doc -> 'details')"


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

    text: list[TextTerm] = field(default_factory=list)  # target_name and details.KEY terms
    indexed_details: frozenset[str] = frozenset()  # details keys with a prefix index of their own

    @property
    def categories(self) -> list[str]:
        return self.equal.get("category", [])

    @property
    def custom_plan(self) -> bool:
        """Whether the page query should be planned for its values rather than run as a prepared
        (generic) plan. A generic plan cannot see that one object's id or a target name matches a
        handful of rows, walks the time index and filters the whole window (measured on 100,000
        events: an object's history 13 ms prepared, 1.6 ms planned for its values; a target name
        14 ms against 0.9 ms). A prefix on a details key with an index of its own
        (``search.details_prefix_keys``) is planned for its values too: only with the key known
        does the index's expression match. Other prefixes are left to the generic plan, which
        walks the time index and did better there (for a prefix most events have, 3 ms against
        90 ms on 100,000 events: without statistics the planner guessed few matches)."""
        return bool(
            self.equal.get("target_type")
            or self.equal.get("target_id")
            or any(not t.negated and (not t.prefix or self._indexed_prefix(t)) for t in self.text)
        )

    def _indexed_prefix(self, term: TextTerm) -> bool:
        return term.key.startswith("details.") and term.key[len("details.") :] in self.indexed_details


@dataclass(frozen=True, slots=True)
class TextTerm:
    """A q term on the target's name or on a details key: equal to ``value``, or starting with it."""

    key: str  # "target_name" or "details.KEY"
    value: str
    prefix: bool = False
    negated: bool = False


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


def parse_filters(params: Mapping[str, Sequence[str]], *, indexed_details: Collection[str] = ()) -> Filters:
    """The filters of a query string; ``indexed_details``: the details keys with a prefix index
    of their own (``search.details_prefix_keys``), which decides how a prefix on them is planned."""
    out = Filters(indexed_details=frozenset(indexed_details))
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
    # Distinct values: the same id named twice is one lookup.
    pairs = max(1, len(set(out.equal.get("target_type", [])))) * max(1, len(set(out.equal.get("target_id", []))))
    if pairs > MAX_OBJECTS:
        raise BadFilter("target_id", f"{pairs} type and id combinations; at most {MAX_OBJECTS}: ask for fewer objects at a time")
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
            raise BadFilter("q", f"'{shown}' is not a key:value term (keys: {_KEYS_HELP})")
        pos = match.end()
        negated, key, op, quoted, plain = match.groups()
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
        # A trailing "*" asks for a prefix, unless escaped inside quotes ("a\\*": a literal star).
        starred = plain.endswith("*") if quoted is None else _ends_with_unescaped_star(quoted)
        if key == "time":
            if negated or not op:
                raise BadFilter("q", f"time takes a comparison: time:>VALUE, time:>=, time:< or time:<= (in '{match[0]}')")
            when = parse_time(value, "q")
            if op.startswith(">"):
                out.since = max(out.since, when) if out.since else when
            else:
                out.until = min(out.until, when) if out.until else when
            continue
        if op:
            raise BadFilter("q", f"only time takes a comparison, not {key} (in '{match[0]}')")
        if key in _MATCHED or key.startswith("details."):
            if "\x00" in value:
                raise BadFilter("q", f"the value of {key} contains a NUL character, which no stored text holds: remove it")
            out.text.append(TextTerm(key, value[:-1] if starred else value, starred, bool(negated)))
            continue
        if key not in _COLUMNS and key != "actor":
            raise BadFilter("q", f"unknown key '{key}' (keys: {_KEYS_HELP})")
        if starred:
            raise BadFilter(
                "q",
                f"a prefix (a trailing *) works on target_name and details.KEY only, not {key} (in '{match[0]}');"
                ' to match a literal *, quote the value and escape it: key:"value\\*"',
            )
        if negated:
            out.not_equal.append((key, value))
        else:
            out.equal.setdefault(key, []).append(value)


def _ends_with_unescaped_star(quoted: str) -> bool:
    if not quoted.endswith("*"):
        return False
    before = quoted[:-1]
    return (len(before) - len(before.rstrip("\\"))) % 2 == 0  # an odd run of backslashes escapes the star


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
    object_sql, object_params = _object_sql(filters.equal.get("target_type", []), filters.equal.get("target_id", []))
    if object_sql:
        where.append(object_sql)
        params += object_params
    for key, values in filters.equal.items():
        if key in ("category", "target_type", "target_id"):
            continue  # the plan's categories, and the object above
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
        elif key in ("target_type", "target_id"):
            sql, more = _object_sql([value] if key == "target_type" else [], [value] if key == "target_id" else [])
            where.append(f"NOT coalesce({sql}, false)")
            params += more
        else:
            where.append(f"{_COLUMNS[key]} IS DISTINCT FROM %s")
            params.append(value)
    text_sql, text_params = _text_sql(filters.text)
    where += text_sql
    params += text_params
    if filters.since is not None:
        where.append("occurred_at >= %s")
        params.append(filters.since)
    if filters.until is not None:
        where.append("occurred_at < %s")
        params.append(filters.until)
    return " AND ".join(where), params


def _object_sql(types: Sequence[str], ids: Sequence[str]) -> tuple[str, list[Any]]:
    """The events about an object of one of ``types`` with one of ``ids``: as their target, or
    among their related objects. Empty when neither is given.

    The target side is the (tenant, target_type, target_id) index; the related side is one
    containment test per (type, id) pair on ``doc->'related'`` (GIN, migration 0007), ORed:
    the planner answers each with a bitmap and unions them."""
    if not types and not ids:
        return "", []
    target: list[str] = []
    params: list[Any] = []
    if types:
        target.append("target_type = ANY(%s)")
        params.append(list(types))
    if ids:
        target.append("target_id = ANY(%s)")
        params.append(list(ids))
    related = []
    any_one: list[str | None] = [None]
    for kind in [*types] or any_one:
        for ident in [*ids] or any_one:
            obj = {key: value for key, value in (("type", kind), ("id", ident)) if value is not None}
            related.append("(doc -> 'related') @> %s::jsonb")
            params.append(json.dumps([obj]))
    return f"(({' AND '.join(target)}) OR {' OR '.join(related)})", params


def _text_sql(terms: Sequence[TextTerm]) -> tuple[list[str], list[Any]]:
    """Conditions for q's target_name and details.KEY terms: positive terms with the same key
    match any of their values; each negated term must not match (an absent value does not)."""
    where: list[str] = []
    params: list[Any] = []
    anyof: dict[str, tuple[list[str], list[Any]]] = {}
    for term in terms:
        sql, more = _text_condition(term)
        if term.negated:
            where.append(f"NOT coalesce({sql}, false)")
            params += more
        else:
            group = anyof.setdefault(term.key, ([], []))
            group[0].append(sql)
            group[1].extend(more)
    for sqls, more in anyof.values():
        where.append(sqls[0] if len(sqls) == 1 else f"({' OR '.join(sqls)})")
        params += more
    return where, params


def _text_condition(term: TextTerm) -> tuple[str, list[Any]]:
    if term.key == "target_name":
        # Equality, or a byte-wise range [prefix, next) that the text_pattern_ops index of
        # migration 0007 answers, with or without the value known at planning time.
        if not term.prefix:
            return f"{_TARGET_NAME_SQL} = %s", [term.value]
        if term.value == "":
            return f"{_TARGET_NAME_SQL} IS NOT NULL", []
        upper = _after_prefix(term.value)
        if upper is None:
            return f"{_TARGET_NAME_SQL} ~>=~ %s", [term.value]
        return f"({_TARGET_NAME_SQL} ~>=~ %s AND {_TARGET_NAME_SQL} ~<~ %s)", [term.value, upper]
    name = term.key[len("details.") :]
    if term.prefix:
        # A byte-wise range on the key's value: the form the key's own index answers (and
        # whose statistics tell the planner how many events match) when the operator named it (storage/search_indexes.py; planned for
        # the values, see Filters.custom_plan); any other key is checked row by row within
        # the tenant and time range, with the same answers.
        value = f"({_DETAILS_SQL} ->> %s)"
        if term.value == "":
            return f"{value} IS NOT NULL", [name]
        upper = _after_prefix(term.value)
        if upper is None:
            return f"{value} ~>=~ %s", [name, term.value]
        return f"({value} ~>=~ %s AND {value} ~<~ %s)", [name, term.value, name, upper]
    # Equality by containment (GIN, migration 0007): the value as text, and as the JSON
    # number, boolean or null it spells, since q cannot say which the emitter sent.
    candidates: list[Any] = [term.value]
    try:
        parsed = json.loads(term.value)
    except ValueError:
        pass
    else:
        if parsed is None or isinstance(parsed, (bool, int, float)):
            candidates.append(parsed)
    sqls = [f"{_DETAILS_SQL} @> %s::jsonb"] * len(candidates)
    values = [json.dumps({name: c}) for c in candidates]
    return (sqls[0] if len(sqls) == 1 else f"({' OR '.join(sqls)})"), values


def _after_prefix(prefix: str) -> str | None:
    """The least text greater than every text starting with ``prefix``, in code point (= UTF-8
    byte) order; None when there is none (the prefix is all U+10FFFF)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = last + 1 if last + 1 != 0xD800 else 0xE000  # surrogates are not text
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def events_sql(tenant: str, categories: Sequence[str] | None, filters: Filters, *, columns: str) -> tuple[str, list[Any]]:
    """SELECT ``columns`` of the tenant's matching events, newest first, one page after the cursor."""
    where, params = where_sql(tenant, categories, filters)
    if filters.cursor is not None:
        where += " AND (occurred_at, seq) < (%s, %s)"
        params += list(filters.cursor)
    sql = f"SELECT {columns} FROM events WHERE {where} ORDER BY occurred_at DESC, seq DESC LIMIT %s"
    return sql, [*params, filters.limit]


def page_sql(tenant: str, categories: Sequence[str] | None, filters: Filters) -> tuple[str, list[Any]]:
    """One page of ``GET /v1/events`` as one row: how many events it holds, the last one's
    ``occurred_at`` and ``seq`` (the next cursor), and their documents (``DOCUMENT_SQL``), newest
    first, joined by commas: the body's array without its brackets.

    One row because PostgreSQL then sends the page at once, when it is complete. Row by row, it
    sends each 8 KiB as the scan produces it, and an asyncio connection wakes the event loop for
    each: measured on 100-event pages of the 5M data set, 1.58 ms of the collector's CPU per
    page against 0.58 ms for this form, with the same wall time for the query."""
    inner, params = events_sql(tenant, categories, filters, columns=f"occurred_at, seq, {DOCUMENT_SQL} AS doc")
    sql = (
        "SELECT count(*), (array_agg(occurred_at ORDER BY occurred_at, seq))[1], (array_agg(seq ORDER BY occurred_at, seq))[1],"
        f" coalesce(string_agg(doc, ',' ORDER BY occurred_at DESC, seq DESC), '') FROM ({inner}) page"
    )
    return sql, params
