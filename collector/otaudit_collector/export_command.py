"""``otaudit export``: write a tenant's trail to a file, with a progress bar.

Two ways in:
- through the API (``--url`` and a token): an export job, polled for its progress, then
  downloaded from its signed URL. The token's tenant, role and plan apply;
- straight from the database (``--tenant``), for operators: the same COPY the API runs,
  every category, no plan. It is recorded in the tenant's trail like an API export.

Without ``-o`` the file lands in the current folder as ``otaudit-TENANT-TIME.FORMAT``; the last
line printed names the full path written, so nobody has to guess where it went.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import psycopg

from otaudit_collector._text import plural
from otaudit_collector.core.export import Format
from otaudit_collector.core.query import parse_filters, where_sql

__all__ = ["Progress", "export_via_api", "export_from_database", "filters_from_args"]


class Progress:
    """A one-line progress bar on a terminal; on anything else, only the final line."""

    def __init__(self, stream: IO[str], unit: str, *, enabled: bool = True) -> None:
        self.stream = stream
        self.unit = unit
        self.live = enabled and stream.isatty()
        self._shown = 0.0

    def update(self, done: int, total: int | None, *, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._shown < 0.1:
            return
        self._shown = now
        if total:
            share = min(done / total, 1.0)
            bar = "#" * int(share * 30)
            text = f"[{bar:<30}] {share:6.1%}  {done:,}/{total:,} {self.unit}"
        else:
            text = f"{done:,} {self.unit}"
        self.stream.write("\r" + text + " " * 4)
        self.stream.flush()

    def finish(self, line: str) -> None:
        if self.live:
            self.stream.write("\r" + " " * 79 + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()


def _default_name(tenant: str, fmt: Format) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"otaudit-{tenant}-{stamp}.{fmt.extension}"


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


class _Target:
    """The output file, written as NAME.part and renamed when complete (``-``: standard output).

    ``name`` is what the last line reports: the file's full path, or ``standard output``."""

    def __init__(self, output: str) -> None:
        if output == "-":
            self.name = "standard output"
            self.path = None
            self.file: IO[bytes] = sys.stdout.buffer
        else:
            self.path = Path(output).absolute()
            self.name = str(self.path)
            self.part = self.path.with_name(self.path.name + ".part")
            self.file = self.part.open("wb")

    def done(self) -> None:
        self.file.flush()
        if self.path is not None:
            self.file.close()
            self.part.replace(self.path)

    def abandon(self) -> None:
        if self.path is not None:
            self.file.close()
            self.part.unlink(missing_ok=True)


# -- through the API -------------------------------------------------------------------


class ApiError(Exception):
    """The API refused (its status and message), or could not be reached."""


def api_call(method: str, url: str, token: str, body: Mapping[str, Any] | None = None) -> Any:
    """One API request as the token (the commands' client, ``otaudit export`` and ``otaudit
    stream``): its JSON answer, None for an empty one (204), ``ApiError`` otherwise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            text = answer.read()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ApiError(f"{method} {urllib.parse.urlsplit(url).path}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def export_via_api(
    url: str,
    token: str,
    fmt: Format,
    bom: bool,
    filters: Mapping[str, list[str]],
    output: str | None,
    progress: Progress,
    poll_seconds: float = 0.5,
) -> int:
    base = url.rstrip("/")
    try:
        job = api_call("POST", base + "/v1/exports", token, {"format": fmt.name, "bom": bom, **filters})
        if job.get("since_clamped"):
            print(f"otaudit: {job['since_clamped']}", file=sys.stderr)
        while job["state"] not in ("done", "failed"):
            progress.update(job["rows"], job["total"])
            time.sleep(poll_seconds)
            job = api_call("GET", f"{base}/v1/exports/{job['id']}", token)
        if job["state"] == "failed":
            progress.finish(f"otaudit: export job {job['id']} failed: {job['error']}")
            return 1
        progress.update(job["rows"], job["total"], force=True)
    except ApiError as exc:
        progress.finish(f"otaudit: {exc}")
        return 1
    target = _Target(output or _default_name("export", fmt))
    try:
        # A full URL (on exports.public_url, or on the host asked); joined, an older collector's path works too.
        with urllib.request.urlopen(urllib.parse.urljoin(base + "/", job["download_url"]), timeout=60) as answer:
            while block := answer.read(1 << 20):
                target.file.write(block)
        target.done()
    except (urllib.error.URLError, OSError) as exc:
        target.abandon()
        progress.finish(f"otaudit: the download of export job {job['id']} failed: {exc}")
        return 1
    progress.finish(f"wrote {plural(job['rows'], 'event', thousands=True)} ({_size(job['bytes'])}) to {target.name}")
    return 0


# -- straight from the database ---------------------------------------------------------


async def export_from_database(
    settings: Any,
    conninfo: str,
    tenant: str,
    fmt: Format,
    bom: bool,
    filters: Mapping[str, list[str]],
    output: str | None,
    progress: Progress,
) -> int:
    from otaudit_collector.storage import exports as store

    parsed = parse_filters(filters)
    where, params = where_sql(tenant, parsed.categories or None, parsed)  # an operator reads every category
    target = _Target(output or _default_name(tenant, fmt))
    written = 0

    async def sink(block: bytes) -> None:
        nonlocal written
        target.file.write(block)
        written += len(block)

    try:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await conn.set_read_only(True)
            async with conn.transaction():
                total = await store.count_rows(conn, where, params)

                async def shown(rows: int) -> None:
                    progress.update(rows, total)

                sheet_rows = int(settings.get("exports", "xlsx_sheet_rows"))
                rows = await store.stream_export(
                    conn,
                    fmt,
                    bom,
                    where,
                    params,
                    sink,
                    shown,
                    sheet_rows=sheet_rows,
                    bundle=store.BundleSource(conninfo, tenant, filters),
                )
        target.done()
    except BaseException:
        target.abandon()
        raise
    progress.update(rows, total, force=True)
    await _audit(settings, conninfo, tenant, fmt, filters, rows)
    progress.finish(f"wrote {plural(rows, 'event', thousands=True)} ({_size(written)}) to {target.name}")
    return 0


async def _audit(settings: Any, conninfo: str, tenant: str, fmt: Format, filters: Mapping[str, list[str]], rows: int) -> None:
    """Record the export in the tenant's trail, through the ingest pipeline like the API does."""
    from otaudit_collector.api.export import export_event
    from otaudit_collector.app import catalog_dirs
    from otaudit_collector.core.catalog import load_catalogs
    from otaudit_collector.operator_audit import OperatorAudit
    from otaudit_collector.storage.writer import Writer

    catalogs = load_catalogs(catalog_dirs(settings))
    writer = Writer(conninfo, default_plan=settings.raw["default_plan"])
    await writer.start()
    try:
        audit = OperatorAudit(writer, settings, catalogs, tenant, "otaudit export")
        try:
            fields = export_event(audit.access, fmt, dict(filters), rows, "success", None, job_id=None)
            del fields["access"]  # OperatorAudit gives its own, the same
            await audit.record(**fields)
        finally:
            audit.close()
    finally:
        await writer.close()


def filters_from_args(args: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in ("category", "event", "actor", "target_type", "target_id", "outcome", "q"):
        values = getattr(args, name, None) or []
        if values:
            out[name] = list(values)
    for name in ("since", "until"):
        value = getattr(args, name, None)
        if value:
            out[name] = [value]
    parse_filters(out)  # a bad filter fails here, naming it, before anything is asked
    return out
