"""Bringing history in (``otaudit import``): lines of an NDJSON or CSV file to normalized documents.

Pure: the command (``import_command``) reads the file, checks each document against the
catalogs, builds its row (``prepare.document_row``) and hands the rows to the writer.

An import differs from live ingest on purpose in one thing: the time. Live traffic with a
time over ``ingest.clock_skew.max_past_days`` old is re-dated (flag ``clock_skew``), since a
wrong clock is likelier than a late event; a migrated trail is old by nature, so an import
keeps ``occurred_at`` as given and refuses only the absurd (before 1970, or later than now
plus the allowed future skew). Every imported document carries the flag ``imported``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from otaudit_collector.core.export import CSV_COLUMNS, spreadsheet_cell
from otaudit_collector.core.normalize import iso_from_ns

__all__ = [
    "ImportProblem",
    "LineError",
    "Source",
    "FIELDS",
    "REQUIRED_FIELDS",
    "parse_mapping",
    "mapping_file_entries",
    "export_mapping",
    "check_mapping",
    "document_from_json",
    "document_from_row",
    "finish_document",
    "parse_occurred_at",
    "parse_related",
    "sort_line",
    "split_sort_line",
]

IMPORTED = "imported"
"""The flag every imported document carries (envelope.json's flags enum)."""

FIELDS = (
    "id",
    "tenant",
    "category",
    "event",
    "occurred_at",
    "outcome",
    "actor.type",
    "actor.id",
    "actor.email",
    "actor.name",
    "actor.roles",
    "client.address",
    "client.user_agent",
    "client.session_id",
    "target.type",
    "target.id",
    "target.name",
    "related",
    "changes",
    "details",
    "reason",
    "message",
    "source.service",
    "source.instance",
    "source.sequence",
    "trace.trace_id",
    "trace.span_id",
)
"""The fields of the normalized event (contract.md) a CSV column can be mapped to."""

REQUIRED_FIELDS = ("occurred_at", "event")
"""Fields a CSV mapping must give; the rest are optional or checked by the catalogs per event."""

_EXPORT_ONLY = ("received_at", "seq")  # set by the collector that stored them; an import sets its own

_EXPORT_FIELDS = {
    "actor_type": "actor.type",
    "actor_id": "actor.id",
    "actor_email": "actor.email",
    "actor_name": "actor.name",
    "actor_roles": "actor.roles",
    "client_address": "client.address",
    "user_agent": "client.user_agent",
    "session_id": "client.session_id",
    "target_type": "target.type",
    "target_id": "target.id",
    "target_name": "target.name",
    "source_service": "source.service",
    "source_instance": "source.instance",
    "source_sequence": "source.sequence",
    "trace_id": "trace.trace_id",
    "span_id": "trace.span_id",
}
"""The CSV export's columns (core/export.py CSV_COLUMNS) whose field is not named alike."""


class ImportProblem(Exception):
    """The import cannot start (an unreadable file, a bad mapping): nothing was stored; the message says what to fix."""


class LineError(Exception):
    """One line cannot be imported: ``reason`` in a word (prepare.REJECT_REASONS' words, plus ``unreadable`` and
    ``bad_time``), ``problems`` for the report."""

    def __init__(self, reason: str, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.reason = reason
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a field's value comes from: a CSV column, or a constant for every row."""

    column: str | None = None
    value: str | None = None


# -- the mapping ------------------------------------------------------------------------


def parse_mapping(entries: Iterable[str], where: str = "--map") -> dict[str, Source]:
    """``FIELD=COLUMN`` entries (``FIELD="VALUE"``: a constant, written as a JSON string) as a mapping."""
    mapping: dict[str, Source] = {}
    for entry in entries:
        name, sep, column = entry.partition("=")
        name = name.strip()
        if not sep or not name or not column:
            raise ImportProblem(
                f"{where} '{entry}': write FIELD=COLUMN, e.g. occurred_at=Date, or FIELD=\"VALUE\" for a constant"
            )
        if name not in FIELDS:
            raise ImportProblem(f"{where} '{entry}': '{name}' is not a field of the event; map one of {', '.join(FIELDS)}")
        if name in mapping:
            raise ImportProblem(f"{where} '{entry}': '{name}' is mapped twice; keep one")
        if len(column) >= 2 and column.startswith('"') and column.endswith('"'):
            try:
                constant = json.loads(column)
            except ValueError:
                raise ImportProblem(f"{where} '{entry}': {column} is not a JSON string; write it as \"VALUE\"") from None
            mapping[name] = Source(value=str(constant))
        else:
            mapping[name] = Source(column=column)
    return mapping


def mapping_file_entries(text: str) -> list[str]:
    """A mapping file's entries: one ``FIELD=COLUMN`` per line, as ``--map`` takes; blank lines and ``#`` comments skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def export_mapping(header: list[str]) -> dict[str, Source] | None:
    """The mapping of ``otaudit export --format csv``'s own header (by its column names), or None for another header."""
    exported = [name for name, _ in CSV_COLUMNS]
    if not set(REQUIRED_FIELDS) <= set(header) or not set(header) <= set(exported):
        return None
    mapping: dict[str, Source] = {}
    for column in header:
        field = _EXPORT_FIELDS.get(column, column)
        if field in FIELDS:  # the others (seq, received_at, the catalog's title) are the collector's, not the event's
            mapping[field] = Source(column=column)
    return mapping


def check_mapping(mapping: Mapping[str, Source], header: list[str]) -> None:
    """Every required field mapped, every mapped column in the header: else ImportProblem naming what is missing."""
    missing = [name for name in REQUIRED_FIELDS if name not in mapping]
    if missing:
        raise ImportProblem(
            f"the mapping gives no {' and no '.join(missing)}: add --map {missing[0]}=COLUMN (the CSV's columns: {', '.join(header)})"
        )
    absent = [f"{name}={s.column}" for name, s in mapping.items() if s.column is not None and s.column not in header]
    if absent:
        raise ImportProblem(f"the CSV has no column for {', '.join(absent)} (its columns: {', '.join(header)})")


# -- documents --------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def document_from_json(text: str) -> dict[str, Any]:
    """One NDJSON line (an exported document) as a document; its export-only fields (seq, received_at) are dropped."""
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise LineError("unreadable", f"not a JSON document: {exc}") from None
    if not isinstance(doc, dict):
        raise LineError("unreadable", f"a line holds one JSON object (an event), not {type(doc).__name__}")
    for name in _EXPORT_ONLY:
        doc.pop(name, None)
    return doc


def document_from_row(row: Mapping[str, str], mapping: Mapping[str, Source], *, from_export: bool = False) -> dict[str, Any]:
    """A CSV row as a document. Empty cells are absent fields. ``from_export``: the row is from otaudit's own CSV
    export, whose cells a spreadsheet could run were prefixed with an apostrophe: it is taken off again."""
    doc: dict[str, Any] = {"actor": {}, "source": {}}
    for name, source in mapping.items():
        raw = source.value if source.column is None else row.get(source.column, "")
        if raw is None or raw == "":
            continue
        if from_export and raw.startswith("'") and spreadsheet_cell(raw[1:]) == raw:
            raw = raw[1:]
        section, _, key = name.partition(".")
        if not key:
            doc[name] = _top_value(name, raw)
        else:
            doc.setdefault(section, {})[key] = _nested_value(name, raw)
    return doc


def _top_value(name: str, raw: str) -> Any:
    if name == "details":
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except ValueError:
            raise LineError("unreadable", f"details: '{_short(raw)}' is not a JSON object") from None
        return value
    if name == "changes":
        return parse_changes(raw)
    if name == "related":
        return parse_related(raw)
    return raw


def _nested_value(name: str, raw: str) -> Any:
    if name == "actor.roles":
        return [role.strip() for role in raw.split(",") if role.strip()]
    if name == "source.sequence":
        try:
            return int(raw)
        except ValueError:
            raise LineError("unreadable", f"source.sequence: '{_short(raw)}' is not a whole number") from None
    return raw


def parse_related(raw: str) -> Any:
    """Related objects from a CSV cell: a JSON array of {type, id, name}, or the export's lines ``type:id (name)``.

    A line is split at its first colon, and a name is the text in the parentheses ending it. Lossy at
    the edges (a type with a colon, an id ending in parentheses, a name with a line break): NDJSON is
    the faithful format.
    """
    if raw.lstrip().startswith("["):
        try:
            return json.loads(raw, parse_constant=_refuse_constant)  # the catalogs check its shape
        except ValueError:
            raise LineError("unreadable", f"related: '{_short(raw)}' is not a JSON array of {{type, id, name}}") from None
    related: list[Any] = []
    for line in raw.split("\n"):
        kind, sep, rest = line.partition(":")
        if not sep or not kind or not rest:
            raise LineError("unreadable", f"related: '{_short(line)}' is not 'type:id (name)' nor a JSON array")
        found: dict[str, str] = {"type": kind, "id": rest}
        if rest.endswith(")") and " (" in rest:
            ident, _, name = rest[:-1].partition(" (")
            if ident:
                found = {"type": kind, "id": ident, "name": name}
        related.append(found)
    return related


def parse_changes(raw: str) -> list[Any]:
    """Changes from a CSV cell: a JSON array of {field, old, new}, or the export's lines ``field: old -> new``.

    The export writes text values as they are and other values as JSON, ``(none)`` for null (an added
    field's old value) and ``(withheld)`` for a value not recorded; read back, a value that is valid JSON
    becomes that value. Lossy at the edges (a text that reads as JSON or as ``(none)``, an arrow inside a
    value): NDJSON is the faithful format.
    """
    if raw.lstrip().startswith("["):
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except ValueError:
            raise LineError("unreadable", f"changes: '{_short(raw)}' is not a JSON array") from None
        if not isinstance(value, list):
            raise LineError("unreadable", "changes: give a JSON array of {field, old, new}")
        return value
    changes: list[Any] = []
    for line in raw.split("\n"):
        field, sep, rest = line.partition(": ")
        old, arrow, new = rest.partition(" -> ")
        if not sep or not arrow:
            raise LineError("unreadable", f"changes: '{_short(line)}' is not 'field: old -> new'")
        change: dict[str, Any] = {"field": field}
        for key, text in (("old", old), ("new", new)):
            if text != "(withheld)":
                change[key] = _value(text)
        changes.append(change)
    return changes


def _value(text: str) -> Any:
    if text in ("", "(none)"):  # "(none)": null since migration 0011; exports before it wrote nothing
        return None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text


def finish_document(doc: dict[str, Any], tenant: str, *, retenant: bool, now_ns: int, max_future_seconds: int) -> dict[str, Any]:
    """Apply the import's rules to a document: its tenant, its time kept, an id, the flag ``imported``.

    A document naming another tenant is refused unless ``retenant``; one naming none gets ``tenant``.
    A document without an id gets one derived from its content (flag ``derived_id``), so that importing
    the same file again stores nothing twice.
    """
    named = doc.get("tenant")
    if named not in (None, "", tenant) and not retenant:
        raise LineError(
            "tenant_mismatch",
            f"the event names tenant '{named}', not '{tenant}': import it with --tenant {named},"
            f" or pass --retenant to import it as '{tenant}'",
        )
    doc["tenant"] = tenant
    if "occurred_at" not in doc:
        raise LineError("bad_time", "the event has no occurred_at")
    doc["occurred_at"] = iso_from_ns(parse_occurred_at(doc["occurred_at"], now_ns, max_future_seconds))
    flags = doc.get("flags")
    if flags is None:
        flags = doc["flags"] = []
    if not doc.get("id"):
        doc.pop("id", None)
        doc["id"] = derived_import_id(doc)
        if isinstance(flags, list) and "derived_id" not in flags:
            flags.append("derived_id")
    if isinstance(flags, list) and IMPORTED not in flags:  # not a list: the envelope refuses it, naming it
        flags.append(IMPORTED)
    return doc


def derived_import_id(doc: Mapping[str, Any]) -> str:
    """A stable id for a document without one: a version-8 UUID over SHA-256 of its content (flags aside)."""
    content = json.dumps(
        {k: v for k, v in doc.items() if k != "flags"}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    raw = bytearray(hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


_NUMBER = re.compile(r"\d+(\.\d+)?")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_occurred_at(value: Any, now_ns: int, max_future_seconds: int) -> int:
    """When an imported event happened, in Unix nanoseconds, however long ago.

    RFC 3339 / ISO 8601 (a time without a zone is UTC) or Unix seconds. Refused: a time before 1970
    and one later than now plus ``max_future_seconds`` (``ingest.clock_skew.max_future_seconds``).
    """
    text = value.strip() if isinstance(value, str) else None
    if not text:
        raise LineError(
            "bad_time", f"occurred_at: {json.dumps(value)} is not a time; give RFC 3339 (2023-05-01T09:30:00Z) or Unix seconds"
        )
    try:
        if _NUMBER.fullmatch(text):
            whole, _, fraction = text.partition(".")
            ns = int(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])
        else:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
            delta = when - _EPOCH
            ns = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    except (ValueError, OverflowError):
        raise LineError(
            "bad_time", f"occurred_at: '{_short(text)}' is not a time; give RFC 3339 (2023-05-01T09:30:00Z) or Unix seconds"
        ) from None
    if ns < 0:
        raise LineError("bad_time", f"occurred_at: '{_short(text)}' is before 1970; no audit event is that old")
    if ns > now_ns + max_future_seconds * 1_000_000_000:
        raise LineError(
            "bad_time", f"occurred_at: '{_short(text)}' is in the future (more than {max_future_seconds} s ahead of now)"
        )
    return ns


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- sorting runs ---------------------------------------------------------------------------


def sort_line(occurred_at: str, number: int, tenant: str, event_id: str, row: str, leaf: bytes = b"") -> str:
    """One row of a sorted run, as a text line that sorts by time, then by its line in the file.

    ``occurred_at`` is iso_from_ns's fixed-width form (years 1970-9999), so text order is time
    order; tenant and id hold no tab (envelope patterns) and the COPY row no newline. ``leaf``:
    the row's leaf hash for the log (none when the log is off).
    """
    return f"{occurred_at}\t{number:012d}\t{tenant}\t{event_id}\t{leaf.hex()}\t{row}\n"


def split_sort_line(line: str) -> tuple[tuple[str, str, str], str, bytes]:
    """A run's line back as the writer's key (tenant, id, occurred_at), the COPY row and the leaf hash."""
    occurred_at, _number, tenant, event_id, leaf, row = line.rstrip("\n").split("\t", 5)
    return (tenant, event_id, occurred_at), row, bytes.fromhex(leaf)
