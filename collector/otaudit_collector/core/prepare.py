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

from otaudit_collector.core.catalog import CatalogSet, Refusal
from otaudit_collector.core.normalize import (
    Candidate,
    describe,
    iso_from_ns,
    iter_strings,
    storable,
    storable_text,
    too_many_rejects,
)
from otaudit_collector.core.otlp_model import encode_resource
from otaudit_collector.core.sealing import Sealed, seal_event

__all__ = ["Prepared", "RejectRow", "prepare", "document_row", "copy_text", "MAX_EVENT_BYTES", "EVENT_COLUMNS", "REJECT_REASONS"]

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
    "seals",
)
"""Columns of one COPY line, in order (the writer puts ``seq`` first)."""

_MAX_REJECTS_NAMED = 20

REJECT_REASONS = (
    "undecodable",  # the record's bytes could not be decoded
    "invalid_record",  # decoded, but not an audit event: no event name or tenant, an attribute of the wrong type or size
    "unknown_category",  # names a category no loaded catalog has
    "unknown_event",  # an event its category (or, without one, every catalog) does not define
    "ambiguous_event",  # no category, and the event is defined in several
    "schema",  # breaks its event's schema
    "too_large",  # over MAX_EVENT_BYTES as JSON
    "unstorable",  # holds what PostgreSQL cannot store (a NUL character, an unpaired surrogate)
    "tenant_mismatch",  # names a tenant its ingest token may not write (not quarantined)
)
"""Why a record was rejected, in a word: a small fixed set, for counting (the messages say the rest)."""


@dataclass(frozen=True, slots=True)
class RejectRow:
    """A record kept in quarantine: why, and the original record to replay later.

    The text fields are storable (``storable_text``) whatever the record holds; ``record`` is
    the record's own bytes in ``encoding`` (otlp_model.ENCODINGS). ``token_id`` and
    ``token_tenant``: the ingest token that sent it, if any, so that a replay applies the
    same tenant rule as the ingest did.
    """

    tenant: str | None
    category: str | None
    event: str | None
    reasons: tuple[str, ...]
    resource: bytes
    record: bytes
    fingerprint: bytes
    encoding: str = "protobuf"
    token_id: str | None = None
    token_tenant: str | None = None


@dataclass(slots=True)
class Prepared:
    lines: list[str] = field(default_factory=list)
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (tenant, id, occurred_at) of each line
    leaves: list[bytes] = field(default_factory=list)
    """The leaf hash of each line (core.sealing), or none at all when the log is off."""
    rejects: list[RejectRow] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    refused: int = 0
    """Records rejected but not quarantined: they claim a tenant their ingest token may not write."""
    reasons: list[tuple[str | None, str]] = field(default_factory=list)
    """(category, reason) of each rejected record: the category when a loaded catalog has it, a reason of REJECT_REASONS."""

    @property
    def rejected(self) -> int:
        return len(self.rejects) + self.refused

    def partial_success_message(self) -> str:
        """The OTLP partial_success message: each rejected record with its reasons."""
        if not self.messages:
            return ""
        shown = self.messages[:_MAX_REJECTS_NAMED]
        more = len(self.messages) - len(shown)
        if self.refused:
            head = f"{len(self.messages)} record(s) rejected, {len(self.rejects)} of them quarantined: "
        else:
            head = f"{len(self.messages)} record(s) rejected and quarantined: "
        text = head + " | ".join(shown)
        if more:
            text += f" | and {more} more (see 'otaudit rejects list')"
        return text


def prepare(
    candidates: list[Candidate],
    catalogs: CatalogSet,
    received_ns: int,
    *,
    tenant: str | None = None,
    token_id: str | None = None,
    max_rejects: int | None = None,
    seal: bool = True,
) -> Prepared:
    """Validate each candidate against its catalog and build its row or its reject.

    ``tenant``: the tenant of the request's ingest token (``token_id``). A record claiming
    another one is refused and not quarantined; the others' rejects record the token, so
    that a replay applies the same rule. More than ``max_rejects`` rejected records raise
    BadRequest (``too_many_rejects``): the request is refused whole, nothing is stored.
    ``seal``: the log is on; each row gets its seals and its leaf hash (core.sealing).
    """
    out = Prepared()
    received = iso_from_ns(received_ns)
    for index, cand in enumerate(candidates):
        if max_rejects is not None and out.rejected > max_rejects:
            raise too_many_rejects(f"at least {out.rejected} of its {len(candidates)}", max_rejects, out.messages[:5])
        claimed = None if tenant is None else cand.doc["tenant"] if cand.doc is not None else claimed_tenant(cand)
        if claimed is not None and claimed != tenant:
            out.refused += 1
            reason = f"tenant '{claimed}' is not the token's tenant '{tenant}'; an ingest token writes only its own tenant"
            out.messages.append(describe(index, cand, [reason]))
            out.reasons.append((_loaded_category(cand.doc, catalogs), "tenant_mismatch"))
            continue
        doc = cand.doc
        kind = "undecodable" if cand.record is None else cand.kind
        if doc is not None and not cand.errors:
            refusal = catalogs.check(doc)
            if refusal is None:
                try:
                    sealed = _serialize(doc, received, catalogs, seal)
                except (TypeError, ValueError):  # bytes or a non-finite double: make it storable, check again
                    cand.doc = doc = storable(doc)
                    refusal = catalogs.check(doc)
                    sealed = _serialize(doc, received, catalogs, seal)
                text = sealed.text
            if refusal is None:
                line, problem = _line(doc, text, received, sealed.seals)
                if line is not None:
                    out.lines.append(line)
                    out.keys.append((doc["tenant"], doc["id"], doc["occurred_at"]))
                    if seal:
                        out.leaves.append(sealed.leaf)
                    continue
                refusal = Refusal("too_large" if len(text) > MAX_EVENT_BYTES else "unstorable", [problem])
            kind = refusal.reason
            cand.errors.extend(refusal.problems)
        out.rejects.append(_reject(cand, tenant, token_id, assign=tenant is not None and claimed_tenant(cand) is None))
        out.messages.append(describe(index, cand))
        out.reasons.append((_loaded_category(cand.doc, catalogs), kind))
    if max_rejects is not None and out.rejected > max_rejects:
        raise too_many_rejects(str(out.rejected), max_rejects, out.messages[:5])
    return out


def _serialize(doc: dict[str, Any], received: str, catalogs: CatalogSet, seal: bool) -> Sealed:
    """The stored JSON of ``doc``, with its seals and leaf hash when the log is on."""
    if not seal:
        return Sealed(_dumps(doc), None, b"")
    return seal_event(doc, received, catalogs.personal_pointers(doc))


def _loaded_category(doc: dict[str, Any] | None, catalogs: CatalogSet) -> str | None:
    category = doc.get("category") if doc is not None else None
    return category if isinstance(category, str) and category in catalogs.categories else None


def claimed_tenant(cand: Candidate) -> str | None:
    """The tenant a record names on itself or on its resource, read as normalization reads it; None when it names none."""
    named = None
    if cand.record is not None:
        for key, value in cand.record[7]:
            if key == "audit.tenant.id":
                named = value if type(value) is str else str(value) if type(value) is int else None
    return named or cand.context.tenant


def _reject(cand: Candidate, token_tenant: str | None = None, token_id: str | None = None, *, assign: bool = False) -> RejectRow:
    """The quarantine row. ``assign``: the record named no tenant, so its token's is added to
    the stored resource, so that a replay keeps it (as rows quarantined before the token was
    recorded on them rely on). Every text column is made storable: the record may hold a NUL."""
    resource = cand.context.encoded()
    if assign and token_tenant is not None:  # a serialized repeated field appends: the resource gains one attribute
        resource += encode_resource(None, [("audit.tenant.id", token_tenant)])
    record = cand.record_bytes()
    encoding = cand.record_encoding
    doc = cand.doc or {}
    tenant = doc.get("tenant") or cand.context.tenant or (token_tenant if assign else None)
    category = doc.get("category")
    marker = b"" if encoding == "protobuf" else encoding.encode("ascii") + b"\x00"  # protobuf ones: as before
    return RejectRow(
        tenant=None if tenant is None else storable_text(tenant),
        category=None if category is None else storable_text(category),
        event=storable_text(cand.event) if cand.event else None,
        reasons=tuple(storable_text(reason) for reason in cand.errors),
        resource=resource,
        record=record,
        fingerprint=hashlib.sha256(marker + resource + b"\x00" + record).digest(),
        encoding=encoding,
        token_id=token_id,
        token_tenant=token_tenant,
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


def _line(doc: dict[str, Any], text: str, received: str, seals: str | None) -> tuple[str | None, str]:
    if len(text) > MAX_EVENT_BYTES:
        return None, f"the event is {len(text)} characters as JSON; at most {MAX_EVENT_BYTES} are stored"
    # PostgreSQL stores no NUL in text or jsonb. (Nor an unpaired surrogate: the OTLP decoders
    # let none through, strict UTF-8 and OTLP/JSON's own check; document_row checks imports.)
    if "\\u0000" in text and any("\x00" in s for s in iter_strings(doc)):
        return None, (f"{_where_nul(doc)} contains a NUL character (U+0000), which cannot be stored: remove it at the source")
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
            "\\N" if seals is None else seals.replace("\\", "\\\\"),
        )
    ), ""


def document_row(doc: dict[str, Any], received: str, catalogs: CatalogSet, *, seal: bool = True) -> tuple[str | None, str, bytes]:
    """The COPY line and leaf hash of a document that passed its catalog without coming from OTLP
    (``otaudit import``), or None and why it cannot be stored: the same size and storability rules
    as ``prepare``."""
    try:
        text = _dumps(doc)
    except (TypeError, ValueError):
        return None, "the event holds a value JSON cannot carry (NaN or Infinity): fix it in the file", b""
    if not text.isascii() and storable_text(text) != text:  # json.loads turns a "\ud800" escape into one
        return None, "a string in the event contains an unpaired UTF-16 surrogate, which is not text: fix it in the file", b""
    sealed = _serialize(doc, received, catalogs, seal)
    line, problem = _line(doc, sealed.text, received, sealed.seals)
    return line, problem, sealed.leaf


def _where_nul(value: Any, path: str = "") -> str:
    """Where in a normalized event the first NUL is, as a JSON pointer: the message names the field."""
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"a key in the event's {path or '/'}"
            found = _where_nul(item, f"{path}/{key}")
            if found:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = _where_nul(item, f"{path}/{n}")
            if found:
                return found
    elif isinstance(value, str) and "\x00" in value:
        return f"the event's {path}"
    return ""
