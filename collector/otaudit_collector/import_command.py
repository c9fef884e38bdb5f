"""``otaudit import``: load a tenant's past trail from an NDJSON or CSV file, straight into the database.

For operators, like ``otaudit export --tenant``. In three steps:

1. read: every line becomes a document (``core.importing``), keeps its time, gets the flag
   ``imported``, is checked against the catalogs like any event, and becomes its storage row.
   Rejected lines go to a rejects file (NDJSON: line number, reason, problems, the input),
   not to the quarantine: the quarantine keeps OTLP records to replay, and a fixed file is
   simply imported again;
2. sort: rows are kept in time order in bounded memory: runs of ``RUN_ROWS`` rows are sorted
   in memory and spilled to temporary files, then merged (an external merge sort), so that
   the events get their ``seq`` numbers in the file's time order whatever its order;
3. store (``import_store``): batches through the writer, which numbers them after what the tenant
   already has and skips ids already stored (a second run stores nothing again); then the run is
   recorded in the tenant's own trail (``importAuditTrail``), as a failure when storing stopped.

Nothing is stored before the whole file was read: a file that cannot be read stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import heapq
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg

from otaudit_collector._text import plural
from otaudit_collector.core.catalog import CatalogSet
from otaudit_collector.core.importing import (
    ImportProblem,
    LineError,
    Source,
    check_mapping,
    document_from_json,
    document_from_row,
    export_mapping,
    finish_document,
    mapping_file_entries,
    parse_mapping,
    sort_line,
)
from otaudit_collector.core.normalize import iso_from_ns
from otaudit_collector.core.prepare import document_row
from otaudit_collector.export_command import Progress
from otaudit_collector.import_store import ImportEvent, Summary, store

__all__ = ["import_command", "ImportSource", "SortedRows", "Summary", "RUN_ROWS"]

RUN_ROWS = 50_000
"""Rows sorted in memory at once; more are spilled to sorted temporary files and merged."""
_RUN_BYTES = 64 << 20
_SHOWN_REJECTS = 20


# -- reading ------------------------------------------------------------------------------


def format_of(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix in (".ndjson", ".jsonl"):
        return "ndjson"
    if suffix == ".csv":
        return "csv"
    raise ImportProblem(f"cannot tell the format of '{path}' from its name: pass --format ndjson or --format csv")


class ImportSource:
    """The file's events: (line number, the line as read, its document or why it has none)."""

    def __init__(self, path: Path, fmt: str, mapping: list[str], mapping_file: Path | None) -> None:
        self.path = path
        self.fmt = fmt
        if not path.is_file():
            raise ImportProblem(f"no file '{path}': give the path of an NDJSON export or a CSV file")
        try:
            self.size = path.stat().st_size
            self._file: IO[bytes] = path.open("rb")
        except OSError as exc:
            raise ImportProblem(f"cannot read '{path}': {exc.strerror or exc}") from None
        self.mapping: dict[str, Source] = {}
        self.from_export = False
        self._header: list[str] = []
        self._text: io.TextIOWrapper | None = None
        if fmt == "csv":
            self._open_csv(mapping, mapping_file)
        elif mapping or mapping_file:
            self.close()
            raise ImportProblem("--map and --mapping are for CSV files; an NDJSON file holds the documents themselves")

    def _open_csv(self, mapping: list[str], mapping_file: Path | None) -> None:
        self._text = io.TextIOWrapper(self._file, encoding="utf-8-sig", newline="")
        self._reader = csv.reader(self._text)
        try:
            self._header = next(self._reader, [])
            entries = list(mapping)
            if mapping_file is not None:
                try:
                    entries = mapping_file_entries(mapping_file.read_text(encoding="utf-8")) + entries
                except OSError as exc:
                    raise ImportProblem(f"cannot read the mapping file '{mapping_file}': {exc.strerror or exc}") from None
            if not self._header:
                raise ImportProblem(f"'{self.path}' is empty: a CSV file starts with a header line naming its columns")
            if entries:
                self.mapping = parse_mapping(entries, "--mapping" if mapping_file is not None and not mapping else "--map")
            else:
                found = export_mapping(self._header)
                if found is None:
                    raise ImportProblem(
                        f"the columns of '{self.path}' are not those of 'otaudit export --format csv': map them with"
                        " --map FIELD=COLUMN (e.g. --map occurred_at=Date --map event=Action) or --mapping FILE"
                    )
                self.mapping, self.from_export = found, True
            check_mapping(self.mapping, self._header)
        except (ImportProblem, UnicodeDecodeError) as exc:
            self.close()
            if isinstance(exc, UnicodeDecodeError):
                raise ImportProblem(f"'{self.path}' is not UTF-8 text: save it as UTF-8 and import it again") from None
            raise

    def close(self) -> None:
        (self._text or self._file).close()

    @property
    def position(self) -> int:
        return self._file.tell()

    def __iter__(self) -> Iterator[tuple[int, Any, dict[str, Any] | LineError]]:
        if self.fmt == "csv":
            yield from self._csv_rows()
            return
        for number, raw in enumerate(self._file, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, raw.decode("utf-8", "replace"), LineError("unreadable", "the line is not UTF-8 text")
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                yield number, text.rstrip("\r\n"), document_from_json(text)
            except LineError as exc:
                yield number, text.rstrip("\r\n"), exc

    def _csv_rows(self) -> Iterator[tuple[int, Any, dict[str, Any] | LineError]]:
        header = self._header
        last = self._reader.line_num
        try:
            for cells in self._reader:
                number, last = last + 1, self._reader.line_num
                if not cells:
                    continue
                if len(cells) != len(header):
                    error = LineError("unreadable", f"the row has {len(cells)} cells; the header has {len(header)}")
                    yield number, cells, error
                    continue
                row = dict(zip(header, cells, strict=True))
                try:
                    yield number, row, document_from_row(row, self.mapping, from_export=self.from_export)
                except LineError as exc:
                    yield number, row, exc
        except UnicodeDecodeError:
            raise ImportProblem(
                f"'{self.path}' is not UTF-8 text after line {last}: save it as UTF-8 and import it again"
            ) from None
        except csv.Error as exc:
            raise ImportProblem(f"'{self.path}' line {last + 1}: not CSV ({exc}); nothing was stored") from None


# -- sorting in bounded memory ------------------------------------------------------------


class SortedRows:
    """Rows in time order in bounded memory: sorted runs spilled to temporary files, merged at the end."""

    def __init__(self, folder: Path, run_rows: int = RUN_ROWS, run_bytes: int = _RUN_BYTES) -> None:
        self._folder = folder
        self._run_rows = run_rows
        self._run_bytes = run_bytes
        self._lines: list[str] = []
        self._bytes = 0
        self._runs: list[Path] = []
        self.count = 0

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._bytes += len(line)
        self.count += 1
        if len(self._lines) >= self._run_rows or self._bytes >= self._run_bytes:
            self._spill()

    def _spill(self) -> None:
        self._lines.sort()
        run = self._folder / f"run-{len(self._runs):06d}"
        with run.open("w", encoding="utf-8", newline="\n") as out:
            out.writelines(self._lines)
        self._runs.append(run)
        self._lines, self._bytes = [], 0

    def __iter__(self) -> Iterator[str]:
        if not self._runs:
            self._lines.sort()
            yield from self._lines
            return
        if self._lines:
            self._spill()
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(run.open(encoding="utf-8", newline="\n")) for run in self._runs]
            yield from heapq.merge(*files)


# -- the command ----------------------------------------------------------------------------


def import_command(args: Any, load_settings: Callable[[Any], Any]) -> int:
    """Run ``otaudit import`` from its parsed arguments; ``load_settings`` is the CLI's (flags, environment, file)."""
    from otaudit_collector.app import catalog_dirs, policy_from
    from otaudit_collector.core.catalog import load_catalogs
    from otaudit_collector.storage.database import open_database
    from otaudit_collector.storage.migrate import apply_migrations

    path = Path(args.file)
    try:
        if args.batch_size < 1 or args.batch_size > 10_000:
            raise ImportProblem(f"--batch-size {args.batch_size}: give 1 to 10000 events per transaction")
        source = ImportSource(path, format_of(path, args.format), args.map or [], Path(args.mapping) if args.mapping else None)
    except ImportProblem as exc:
        print(f"otaudit: {exc}", file=sys.stderr)
        return 2
    rejects_path = Path(args.rejects) if args.rejects else path.with_name(path.name + ".rejects.ndjson")
    settings = load_settings(args)
    catalogs = load_catalogs(catalog_dirs(settings))
    max_future = policy_from(settings).max_future_seconds
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="otaudit-import-") as folder:
        rows = SortedRows(Path(folder))
        try:
            _read(
                source,
                rows,
                catalogs,
                args.tenant,
                args.retenant,
                max_future,
                rejects_path,
                summary,
                not args.no_progress,
                seal=bool(settings.get("integrity", "enabled")),
            )
        except ImportProblem as exc:
            print(f"otaudit: {exc}", file=sys.stderr)
            return 2
        finally:
            source.close()
        for line in summary.shown:
            print(line, file=sys.stderr)
        database = open_database(settings)
        try:
            apply_migrations(database.conninfo)
            progress = Progress(sys.stderr, "events stored", enabled=not args.no_progress)
            event = ImportEvent(path, source.fmt, args.retenant, summary)
            outcome = asyncio.run(
                store(database.conninfo, rows, args.batch_size, settings, catalogs, args.tenant, event, progress)
            )
            if outcome.refused:
                print(
                    f"otaudit: {outcome.refused}; nothing was stored. Every import is recorded in the tenant's trail: load the"
                    " bundled data_extraction catalog (catalogs.bundled) or give yours its importAuditTrail event, then import again",
                    file=sys.stderr,
                )
                return 2
            if outcome.stopped:
                progress.finish(
                    f"otaudit: storing stopped after {summary.stored + summary.already:,} of {plural(rows.count, 'event', thousands=True)}: {outcome.stopped}."
                    " Run the same import again: what is already stored is not stored twice"
                    + (f" (this run is not in the trail either: {outcome.unrecorded})" if outcome.unrecorded else "")
                )
                return 1
            progress.finish(f"{plural(rows.count, 'event', thousands=True)} in time order through the writer")
            summary.retention = _retention_note(database.conninfo, settings, args.tenant)
        finally:
            database.close()
    print("\n".join(summary.lines()))
    if outcome.unrecorded:
        print(
            f"otaudit: the events are stored, but this import is not recorded in tenant '{args.tenant}''s trail: {outcome.unrecorded}."
            " Run the same import again to record it: nothing is stored twice",
            file=sys.stderr,
        )
        return 1
    return 1 if summary.rejected else 0


def _read(
    source: ImportSource,
    rows: SortedRows,
    catalogs: CatalogSet,
    tenant: str,
    retenant: bool,
    max_future_seconds: int,
    rejects_path: Path,
    summary: Summary,
    show_progress: bool,
    *,
    seal: bool = True,
) -> None:
    progress = Progress(sys.stderr, "bytes read", enabled=show_progress)
    now_ns = time.time_ns()
    received = iso_from_ns(now_ns)
    rejects: IO[str] | None = None
    try:
        for number, original, parsed in source:
            summary.read += 1
            try:
                if isinstance(parsed, LineError):
                    raise parsed
                doc = finish_document(parsed, tenant, retenant=retenant, now_ns=now_ns, max_future_seconds=max_future_seconds)
                refusal = catalogs.check(doc)
                if refusal is not None:
                    raise LineError(refusal.reason, *refusal.problems)
                row, problem, leaf = document_row(doc, received, catalogs, seal=seal)
                if row is None:
                    raise LineError("too_large" if problem.startswith("the event is ") else "unstorable", problem)
                rows.add(sort_line(doc["occurred_at"], number, doc["tenant"], doc["id"], row, leaf))
                summary.saw(doc["occurred_at"])
            except LineError as exc:
                summary.rejected += 1
                if rejects is None:
                    rejects = rejects_path.open("w", encoding="utf-8")
                    summary.rejects_file = rejects_path
                entry = {"line": number, "reason": exc.reason, "problems": exc.problems, "input": original}
                rejects.write(json.dumps(entry, ensure_ascii=False) + "\n")
                if len(summary.shown) < _SHOWN_REJECTS:
                    summary.shown.append(f"line {number}: {exc.reason}: {'; '.join(exc.problems)}")
                elif len(summary.shown) == _SHOWN_REJECTS:
                    summary.shown.append(f"... more rejected lines in {rejects_path}")
            progress.update(source.position, source.size)
    finally:
        if rejects is not None:
            rejects.close()
    progress.update(source.position, source.size, force=True)
    progress.finish(
        f"read {plural(summary.read, 'event', thousands=True)} from {source.path}: {rows.count:,} valid, {summary.rejected:,} rejected"
    )


def _retention_note(conninfo: str, settings: Any, tenant: str) -> str:
    """Imported events the tenant's plan does not keep: the next retention run deletes them; say so, counted."""
    from otaudit_collector.core.plans import plans_from

    with psycopg.connect(conninfo) as conn:
        found = conn.execute("SELECT plan FROM tenants WHERE tenant = %s", (tenant,)).fetchone()
        name = str(found[0]) if found else str(settings.raw["default_plan"])
        plan = plans_from(settings.raw["plans"]).get(name)
        if plan is None or plan.retention_days is None:
            return ""  # kept forever, or a plan retention leaves alone
        (older,) = conn.execute(
            "SELECT count(*) FROM events WHERE tenant = %s AND occurred_at < now() - make_interval(days => %s)"
            " AND flags @> '{imported}'",
            (tenant, plan.retention_days),
        ).fetchone() or (0,)
    if not older:
        return ""
    return (
        f"warning: {plural(older, 'imported event', thousands=True)} of tenant '{tenant}' {'is' if older == 1 else 'are'} older than its plan '{name}' keeps"
        f" ({plan.retention_days} days): the next retention run deletes them. To keep them, give the tenant a plan"
        f" that keeps them first (otaudit tenant set {tenant} --plan PLAN; retention_days null keeps forever)"
    )
