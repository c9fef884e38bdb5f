"""Exports: the formats, the CSV columns, the COPY statement that writes them, the typed
cells of an xlsx sheet row, and the signed download URLs of export jobs.

Pure. The flattening and the formula neutralizing happen inside PostgreSQL (the
``otaudit_csv_*`` functions of migrations 0003, 0006 and 0011), so an export is one ``COPY (SELECT ...)
TO STDOUT`` whose rows pass through Python untouched. ``spreadsheet_cell`` is the same
neutralizing rule in Python: the one definition the SQL is tested against, for every
spreadsheet format to come.

An xlsx export is the CSV's rows turned into sheet rows (``sheet_row``): the same columns and
the same neutralized text (written as text cells, which a spreadsheet never runs as formulas;
the apostrophe is kept so that a cell copied out of the sheet stays inert too), with the two
times as real dates in UTC and the sequence numbers as numbers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otaudit_collector.core.query import DOCUMENT_SQL, BadFilter

__all__ = [
    "Format",
    "is_unicode",
    "FORMATS",
    "CSV_COLUMNS",
    "XLSX_CONTENT_TYPE",
    "XLSX_SHEET_ROWS",
    "XLSX_CELL_CHARS",
    "SheetCell",
    "sheet_row",
    "FILTER_PARAMETERS",
    "format_named",
    "copy_sql",
    "csv_header",
    "filters_from_body",
    "signing_key",
    "sign_download",
    "check_download",
    "FORMULA_STARTS",
    "SPREADSHEET_STRIPPED",
    "spreadsheet_cell",
    "StreamSlots",
]


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    content_type: str
    extension: str


FORMATS = {
    "csv": Format("csv", "text/csv; charset=utf-8", "csv"),
    "ndjson": Format("ndjson", "application/x-ndjson", "ndjson"),
    "json": Format("json", "application/json", "json"),
    "xlsx": Format("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    # A verifiable bundle (storage.bundles, otaudit_verify.bundle): events, leaves, proof, checkpoint, key.
    "bundle": Format("bundle", "application/zip", "zip"),
}
XLSX_CONTENT_TYPE = FORMATS["xlsx"].content_type

FILTER_PARAMETERS = ("category", "event", "actor", "target_type", "target_id", "outcome", "since", "until", "q")
"""The filters an export takes: those of GET /v1/events without limit and cursor."""


def _cell(expr: str) -> str:
    return f"otaudit_csv_cell({expr})"


# (header, SQL expression). Text cells go through otaudit_csv_cell; numbers and times cannot start a formula.
CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("occurred_at", "doc->>'occurred_at'"),
    ("received_at", "to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"),
    ("seq", "seq"),
    ("id", _cell("id")),
    ("tenant", _cell("tenant")),
    ("category", _cell("category")),
    ("event", _cell("event")),
    # The catalog's title (migration 0009's catalog_titles, written by the collector as it loads its catalogs). The
    # subquery names no column of events: PostgreSQL runs it once per export (an InitPlan) and each row looks its
    # key up in the one jsonb object. A lookup per row cost 17-25% of the export's rows/s; a join made PostgreSQL
    # sort the whole export before its first row (2 s at 1.2M rows, against 0.3 s).
    (
        "title",
        _cell(
            "(SELECT jsonb_object_agg(t.category || '/' || t.event, t.title) FROM catalog_titles t)"
            " ->> (events.category || '/' || events.event)"
        ),
    ),
    ("outcome", _cell("outcome")),
    ("actor_type", _cell("actor_type")),
    ("actor_id", _cell("actor_id")),
    ("actor_email", _cell("actor_email")),
    ("actor_name", _cell("doc#>>'{actor,name}'")),
    ("actor_roles", _cell("array_to_string(ARRAY(SELECT jsonb_array_elements_text(doc#>'{actor,roles}')), ', ')")),
    ("client_address", _cell("doc#>>'{client,address}'")),
    ("user_agent", _cell("doc#>>'{client,user_agent}'")),
    ("session_id", _cell("doc#>>'{client,session_id}'")),
    ("target_type", _cell("target_type")),
    ("target_id", _cell("target_id")),
    ("target_name", _cell("doc#>>'{target,name}'")),
    # One line per related object, "type:id (name)" (migration 0011); STRICT, so not called for events without any.
    ("related", _cell("otaudit_csv_related(doc->'related')")),
    ("changes", _cell("otaudit_csv_changes(doc->'changes')")),
    ("details", _cell("(doc->'details')::text")),
    ("reason", _cell("doc->>'reason'")),
    ("message", _cell("doc->>'message'")),
    ("source_service", _cell("doc#>>'{source,service}'")),
    ("source_instance", _cell("doc#>>'{source,instance}'")),
    ("source_sequence", "doc#>>'{source,sequence}'"),
    ("trace_id", "doc#>>'{trace,trace_id}'"),
    ("span_id", "doc#>>'{trace,span_id}'"),
)

# JSON text holds no raw control characters (jsonb escapes them), so CSV mode with
# delimiter and quote set to two control characters writes each document verbatim:
# COPY's text mode would double every backslash.
_VERBATIM = "FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02'"


def format_named(name: str | None) -> Format:
    if not name:
        raise BadFilter("format", f"give one of {', '.join(FORMATS)}")
    found = FORMATS.get(name)
    if found is None:
        raise BadFilter("format", f"'{name}' is not one of {', '.join(FORMATS)}")
    return found


def copy_sql(fmt: Format, where: str) -> str:
    """The COPY statement streaming the matching events, oldest first, one COPY row per event."""
    # Qualified: the JSON document's "occurred_at" output column would otherwise shadow the
    # table's, and PostgreSQL would sort by text instead of walking the time index.
    order = "ORDER BY events.occurred_at, events.seq"
    if fmt.name in ("csv", "xlsx"):  # an xlsx sheet is made of the CSV's rows (storage.exports)
        columns = ", ".join(f"{expr} AS {name}" for name, expr in CSV_COLUMNS)
        return f"COPY (SELECT {columns} FROM events WHERE {where} {order}) TO STDOUT WITH (FORMAT csv)"
    return f"COPY (SELECT {DOCUMENT_SQL} FROM events WHERE {where} {order}) TO STDOUT WITH ({_VERBATIM})"


def csv_header(bom: bool) -> bytes:
    return ("\ufeff" if bom else "").encode() + (
        ",".join(name for name, _ in CSV_COLUMNS) + "\n"
    ).encode()  # LF, as COPY ends its rows


def filters_from_body(body: Any) -> tuple[Format, bool, dict[str, list[str]]]:
    """The format, the BOM choice and the filters (as query parameters) of a POST /v1/exports body."""
    if not isinstance(body, Mapping):
        raise BadFilter("body", 'send a JSON object such as {"format": "csv", "category": ["site_access"]}')
    params: dict[str, list[str]] = {}
    for key, value in body.items():
        if key in ("format", "bom"):
            continue
        if key not in FILTER_PARAMETERS:
            raise BadFilter(key, f"unknown field; an export takes format, bom and the filters {', '.join(FILTER_PARAMETERS)}")
        values = value if isinstance(value, list) else [value]
        if key in ("since", "until"):  # job platforms send times as numbers: Unix seconds, as the query string takes
            values = [_unix_seconds(v) if _is_number(v) else v for v in values]
            if not all(isinstance(v, str) for v in values):
                raise BadFilter(key, "must be an RFC 3339 time (a string) or Unix seconds (a number or a string)")
        if not all(isinstance(v, str) for v in values):
            raise BadFilter(key, "must be a string or a list of strings")
        if not all(is_unicode(v) for v in values):  # JSON's "\ud800": nothing PostgreSQL or an audit event can hold
            raise BadFilter(key, "contains a lone surrogate (an unpaired \\ud800-\\udfff escape); send valid Unicode text")
        params[key] = list(values)
    bom = body.get("bom", False)
    if not isinstance(bom, bool):
        raise BadFilter("bom", "must be true or false")
    fmt = body.get("format")
    return format_named(fmt if isinstance(fmt, str) else None), bom, params


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unix_seconds(value: float) -> str:
    """A JSON number as the Unix seconds ``parse_time`` reads (no exponent); NaN and infinities stay unreadable."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return f"{value:.6f}"


# -- xlsx sheet rows ---------------------------------------------------------------------

XLSX_SHEET_ROWS = 1_048_575
"""Events on one sheet of an xlsx export: Excel's 1,048,576 rows less the header; more go on the next sheet."""
XLSX_CELL_CHARS = 32_767
"""The most characters (UTF-16 code units) a spreadsheet cell holds."""

SheetCell = str | int | dt.datetime | None
"""A cell of an xlsx row: text, a whole number, a naive UTC time, or nothing."""

_DATE_COLUMNS = frozenset({"occurred_at", "received_at"})
_NUMBER_COLUMNS = frozenset({"seq", "source_sequence"})
_EXACT_INTEGER = re.compile(r"-?[0-9]{1,15}")  # what a spreadsheet's double holds exactly
_CUT = " [cut: a spreadsheet cell holds 32,767 characters; a CSV or NDJSON export has it whole]"


def sheet_row(cells: Sequence[str]) -> list[SheetCell]:
    """An xlsx row from a CSV row of ``CSV_COLUMNS`` (text already neutralized by ``otaudit_csv_cell``).

    Empty cells stay empty; ``occurred_at`` and ``received_at`` become times in UTC (naive, as
    spreadsheets hold them); ``seq`` and ``source_sequence`` numbers; any other text stays text,
    cut to what a cell holds (the cut keeps its start, so the apostrophe of a neutralized cell too).
    """
    return [_sheet_cell(name, text) for (name, _), text in zip(CSV_COLUMNS, cells, strict=True)]


def _sheet_cell(column: str, text: str) -> SheetCell:
    if text == "":
        return None
    if column in _DATE_COLUMNS:
        when = _utc_time(text)
        if when is not None:
            return when
    elif column in _NUMBER_COLUMNS and _EXACT_INTEGER.fullmatch(text):
        return int(text)
    return _fit(text)


def _utc_time(text: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when if when.year >= 1900 else None  # a spreadsheet's dates start in 1900: earlier ones stay text


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str) -> str:
    if len(text) <= XLSX_CELL_CHARS // 2 or _utf16_units(text) <= XLSX_CELL_CHARS:
        return text
    room = XLSX_CELL_CHARS - len(_CUT)
    kept = text[:room]
    excess = _utf16_units(kept) - room  # characters beyond the Basic Multilingual Plane take two units
    return (kept[: len(kept) - excess] if excess > 0 else kept) + _CUT


# -- formula neutralizing -----------------------------------------------------------------

FORMULA_STARTS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")
"""What makes a spreadsheet read a cell as a formula: = + - @ and their fullwidth forms (which some convert)."""

_STRIPPED_RANGES = (
    (0x0000, 0x0020),  # C0 control characters (tab, newline, CR...) and the space
    (0x007F, 0x00A0),  # DEL, the C1 control characters (NEL among them) and the no-break space
    (0x00AD, 0x00AD),  # soft hyphen
    (0x1680, 0x1680),  # ogham space mark
    (0x180E, 0x180E),  # mongolian vowel separator
    (0x2000, 0x200F),  # the typographic spaces, zero-width space/joiners, LRM and RLM
    (0x2028, 0x202F),  # line and paragraph separators, the bidi embeddings, narrow no-break space
    (0x205F, 0x206F),  # medium mathematical space, word joiner, invisible operators, bidi isolates
    (0x3000, 0x3000),  # ideographic space
    (0xFEFF, 0xFEFF),  # byte order mark, zero-width no-break space
)
SPREADSHEET_STRIPPED = frozenset(chr(c) for low, high in _STRIPPED_RANGES for c in range(low, high + 1))
"""What a spreadsheet may strip or not show before a cell's formula: whitespace, invisible and control characters."""

_STRIPPED_TEXT = "".join(sorted(SPREADSHEET_STRIPPED))


def spreadsheet_cell(value: str) -> str:
    """A text cell a spreadsheet cannot run (CSV injection): prefixed with an apostrophe when it begins with a
    tab or a carriage return, or when, after what a spreadsheet strips, it begins with a formula character.

    The whole original value follows the apostrophe. Migration 0006's ``otaudit_csv_cell`` is the same rule.
    """
    if value[:1] in ("\t", "\r") or value.lstrip(_STRIPPED_TEXT)[:1] in FORMULA_STARTS:
        return "'" + value
    return value


# -- streams at once -------------------------------------------------------------------------


class StreamSlots:
    """Exports and downloads streaming at once: at most ``total`` on this collector and ``per_tenant``
    for one tenant, so that one tenant's open (or stalled) streams cannot take every slot."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self._held: dict[str, int] = {}

    @property
    def busy(self) -> int:
        return sum(self._held.values())

    def held(self, tenant: str) -> int:
        return self._held.get(tenant, 0)

    def refusal(self, tenant: str | None) -> str | None:
        """Why a stream of ``tenant`` cannot start now ("collector" or "tenant"), None when it can.
        ``tenant`` None asks about the collector's slots only."""
        if self.busy >= self.total:
            return "collector"
        if tenant is not None and self.held(tenant) >= self.per_tenant:
            return "tenant"
        return None

    def take(self, tenant: str) -> str | None:
        """Take a slot for ``tenant``; None when taken, else why not (as ``refusal``)."""
        refused = self.refusal(tenant)
        if refused is None:
            self._held[tenant] = self.held(tenant) + 1
        return refused

    def give_back(self, tenant: str) -> None:
        left = self.held(tenant) - 1
        if left > 0:
            self._held[tenant] = left
        else:
            self._held.pop(tenant, None)


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: JSON's ``"\\ud800"`` decodes to a lone surrogate, which
    neither PostgreSQL nor an audit event can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _signature(key: bytes, job_id: str, expires: int) -> str:
    return hmac.new(key, f"otaudit-export:{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def signing_key(stored: bytes, pepper: str) -> bytes:
    """The key of download signatures: the random key stored in the database (every replica
    shares it) mixed with the configured pepper, so neither alone can sign."""
    return hmac.new(stored, b"otaudit export download urls\x00" + pepper.encode(), hashlib.sha256).digest()


def sign_download(key: bytes, job_id: str, expires: int) -> str:
    """The path and query of a job's download URL, valid until ``expires`` (Unix seconds)."""
    return f"/v1/exports/{job_id}/download?expires={expires}&signature={_signature(key, job_id, expires)}"


def check_download(key: bytes, job_id: str, expires: str, signature: str, now: float) -> str | None:
    """None when the URL is genuine and current; otherwise 'bad_signature' or 'expired'."""
    try:
        when = int(expires)
    except ValueError:
        return "bad_signature"
    if not hmac.compare_digest(_signature(key, job_id, when).encode(), signature.encode()):
        return "bad_signature"
    return "expired" if when < now else None
