"""``otaudit import``'s last step: the sorted rows through the writer, then the run recorded in the tenant's trail.

Every run that gets this far is recorded, like ``otaudit export --tenant`` (``operator_audit``): a
``data_extraction``/``importAuditTrail`` event with the operator as actor (``USER@HOST (otaudit import)``),
the file, its format, the events read, stored, already present and rejected, and the time range of the
file's valid events; ``failure``, with the reason, when storing stopped part way. The event is checked
against the catalogs before anything is stored: an import that could not be recorded stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from otaudit_collector._text import plural
from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.errors import IngestError
from otaudit_collector.core.importing import split_sort_line
from otaudit_collector.core.prepare import Prepared
from otaudit_collector.export_command import Progress
from otaudit_collector.operator_audit import OperatorAudit
from otaudit_collector.selfaudit import TRAIL_TARGET, Unrecorded
from otaudit_collector.storage.writer import Writer

__all__ = ["ImportEvent", "Rows", "StoreOutcome", "Summary", "store"]


class Rows(Protocol):
    """The sort lines (``core.importing.sort_line``) in time order, and how many there are."""

    count: int

    def __iter__(self) -> Iterator[str]: ...


@dataclass(slots=True)
class Summary:
    read: int = 0
    stored: int = 0
    already: int = 0
    rejected: int = 0
    rejects_file: Path | None = None
    retention: str = ""
    shown: list[str] = field(default_factory=list)
    first: str | None = None  # the earliest and latest occurred_at of the valid events (iso_from_ns's fixed width)
    last: str | None = None

    def saw(self, occurred_at: str) -> None:
        if self.first is None or occurred_at < self.first:
            self.first = occurred_at
        if self.last is None or occurred_at > self.last:
            self.last = occurred_at

    def lines(self) -> list[str]:
        out = [
            f"read {plural(self.read, 'event', thousands=True)}: {self.stored:,} stored, {self.already:,} already there, {self.rejected:,} rejected"
            + (f" (each with its line and reasons in {self.rejects_file})" if self.rejects_file else "")
        ]
        if self.retention:
            out.append(self.retention)
        return out


@dataclass(frozen=True, slots=True)
class ImportEvent:
    """The run's ``data_extraction``/``importAuditTrail`` event, recorded in the tenant's trail (``OperatorAudit``)."""

    path: Path
    fmt: str
    retenant: bool
    summary: Summary

    def fields(self, outcome: str = "success", reason: str | None = None) -> dict[str, Any]:
        s = self.summary
        details: dict[str, Any] = {
            "file": self.path.name,
            "path": str(self.path.absolute()),
            "format": self.fmt,
            "read": s.read,
            "stored": s.stored,
            "already_present": s.already,
            "rejected": s.rejected,
        }
        if s.first is not None and s.last is not None:
            details["first_occurred_at"], details["last_occurred_at"] = s.first, s.last
        if self.retenant:
            details["retenant"] = True
        if s.rejects_file is not None:
            details["rejects_file"] = str(s.rejects_file.absolute())
        return {
            "event": "importAuditTrail",
            "category": "data_extraction",
            "outcome": outcome,
            "target": TRAIL_TARGET,
            "details": details,
            "reason": reason,
            "message": f"imported {self.path.name}: {s.stored} stored, {s.already} already present, {s.rejected} rejected",
        }


@dataclass(slots=True)
class StoreOutcome:
    """How storing went; each is None, or what went wrong, in words."""

    refused: str | None = None  # the catalogs refuse the run's event: nothing was stored
    stopped: str | None = None  # storing stopped part way (what was stored stays)
    unrecorded: str | None = None  # the run's event could not be stored


async def store(
    conninfo: str,
    rows: Rows,
    batch_size: int,
    settings: Any,
    catalogs: CatalogSet,
    tenant: str,
    event: ImportEvent,
    progress: Progress,
) -> StoreOutcome:
    """Store the rows, then record the run in ``tenant``'s trail: as a failure, with the reason, when storing stopped.

    The event is checked against the catalogs first, so that an import that could not be recorded stores nothing."""
    outcome = StoreOutcome()
    writer = Writer(conninfo, max_batch_records=batch_size, default_plan=settings.raw["default_plan"], commit_timeout_seconds=300)
    audit = OperatorAudit(writer, settings, catalogs, tenant, "otaudit import")
    await writer.start()
    try:
        try:
            audit.check(**event.fields())
        except Unrecorded as exc:
            outcome.refused = str(exc)
            return outcome
        try:
            await _store_rows(writer, rows, batch_size, event.summary, progress)
        except IngestError as exc:
            outcome.stopped = str(exc)
        try:
            await audit.record(**event.fields("failure" if outcome.stopped else "success", outcome.stopped))
        except Exception as exc:  # noqa: BLE001 - the database away, a refusal: the caller says so, and what to do
            outcome.unrecorded = str(exc) or type(exc).__name__
        return outcome
    finally:
        audit.close()
        await writer.close()


async def _store_rows(writer: Any, rows: Rows, batch_size: int, summary: Summary, progress: Progress) -> None:
    batch = Prepared()
    for line in rows:
        key, row, leaf = split_sort_line(line)
        batch.lines.append(row)
        batch.keys.append(key)
        if leaf:
            batch.leaves.append(leaf)
        if len(batch.lines) >= batch_size:
            await _submit(writer, batch, summary)
            batch = Prepared()
            progress.update(summary.stored + summary.already, rows.count)
    if batch.lines:
        await _submit(writer, batch, summary)
    progress.update(summary.stored + summary.already, rows.count, force=True)


async def _submit(writer: Any, batch: Prepared, summary: Summary) -> None:
    new: int = await writer.submit(batch)
    summary.stored += new
    summary.already += len(batch.lines) - new
