"""Validated candidates to storage rows and quarantine rows, and the client's answer.

Pure: the result is handed to storage (``storage.writer``), which commits it in one
transaction before the request is answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.normalize import Candidate, iso_from_ns, iter_strings, storable

__all__ = ["Prepared", "RejectRow", "prepare", "copy_text", "MAX_EVENT_BYTES", "EVENT_COLUMNS"]

MAX_EVENT_BYTES = 1 << 20
"""The largest normalized event, as JSON, that is stored (1 MiB)."""

EVENT_COLUMNS = (
    "tenant",
    "id",
    "occurred_at",
    "received_at",
    "category",
    "event",
    "outcome",
    "actor_type",
    "actor_id",
    "actor_email",
    "target_type",
    "target_id",
    "flags",
    "doc",
)
"""Columns of one COPY line, in order (the staging table adds its own ordinal)."""

_MAX_REJECTS_NAMED = 20


@dataclass(frozen=True, slots=True)
class RejectRow:
    """A record kept in quarantine: why, and the original record to replay later."""

    tenant: str | None
    category: str | None
    event: str | None
    reasons: tuple[str, ...]
    resource: bytes
    record: bytes
    fingerprint: bytes


@dataclass(slots=True)
class Prepared:
    lines: list[str] = field(default_factory=list)
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (tenant, id, occurred_at) of each line
    rejects: list[RejectRow] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def partial_success_message(self) -> str:
        """The OTLP partial_success message: each rejected record with its reasons."""
        if not self.messages:
            return ""
        shown = self.messages[:_MAX_REJECTS_NAMED]
        more = len(self.messages) - len(shown)
        text = f"{len(self.messages)} record(s) rejected and quarantined: " + " | ".join(shown)
        if more:
            text += f" | and {more} more (see 'otaudit rejects list')"
        return text


def prepare(candidates: list[Candidate], catalogs: CatalogSet, received_ns: int) -> Prepared:
    """Validate each candidate against its catalog and build its row or its reject."""
    out = Prepared()
    received = iso_from_ns(received_ns)
    for index, cand in enumerate(candidates):
        doc = cand.doc
        if doc is not None and not cand.errors:
            problems = catalogs.check(doc)
            if not problems:
                try:
                    text = _dumps(doc)
                except (TypeError, ValueError):  # bytes or a non-finite double: make it storable, check again
                    cand.doc = doc = storable(doc)
                    problems = catalogs.check(doc)
                    text = _dumps(doc)
            if not problems:
                line, problem = _line(doc, text, received)
                if line is not None:
                    out.lines.append(line)
                    out.keys.append((doc["tenant"], doc["id"], doc["occurred_at"]))
                    continue
                problems = [problem]
            cand.errors.extend(problems)
        out.rejects.append(_reject(cand))
        out.messages.append(_describe(index, cand))
    return out


def _describe(index: int, cand: Candidate) -> str:
    i, j, k = cand.path
    what = f"record {index} (resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
    if cand.event:
        what += f", event '{cand.event}'"
    if cand.doc is not None and cand.doc.get("category"):
        what += f", category '{cand.doc['category']}'"
    return f"{what}): " + "; ".join(cand.errors)


def _reject(cand: Candidate) -> RejectRow:
    resource = cand.context.encoded()
    record = cand.record_bytes()
    doc = cand.doc or {}
    return RejectRow(
        tenant=doc.get("tenant") or cand.context.tenant,
        category=doc.get("category"),
        event=cand.event or None,
        reasons=tuple(cand.errors),
        resource=resource,
        record=record,
        fingerprint=hashlib.sha256(resource + b"\x00" + record).digest(),
    )


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str | None) -> str:
    """A value for PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_dumps = _ENCODER.encode


_SPECIAL = re.compile(r"[\\\t\n\r]")


def _line(doc: dict[str, Any], text: str, received: str) -> tuple[str | None, str]:
    if len(text) > MAX_EVENT_BYTES:
        return None, f"the event is {len(text)} characters as JSON; at most {MAX_EVENT_BYTES} are stored"
    if "\\u0000" in text and any("\x00" in s for s in iter_strings(doc)):
        return None, "a string in the event contains a NUL character (U+0000), which cannot be stored: remove it at the source"
    actor = doc["actor"]
    target = doc.get("target") or {}
    flags = doc.get("flags")
    # tenant, id, category and event match the envelope's patterns, outcome and flags its
    # enums: only the actor's and target's free text can hold characters COPY must escape.
    free = [actor.get("type"), actor.get("id"), actor.get("email"), target.get("type"), target.get("id")]
    if _SPECIAL.search("".join(v for v in free if v)):
        free = [copy_text(v) for v in free]
    else:
        free = [v if v is not None else "\\N" for v in free]
    return "\t".join(
        (
            doc["tenant"],
            doc["id"],
            doc["occurred_at"],
            received,
            doc["category"],
            doc["event"],
            doc["outcome"],
            *free,
            "{" + ",".join(flags) + "}" if flags else "{}",
            text.replace("\\", "\\\\"),
        )
    ), ""
