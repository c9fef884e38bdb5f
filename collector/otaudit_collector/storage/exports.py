"""Exports in PostgreSQL: streaming one (COPY straight to a sink) and export jobs.

A job's file is written into ``export_chunks`` (migration 0003), so any collector replica
can serve its download, after a restart too. Jobs and their chunks are keyed by tenant first
(migration 0016): every statement about a job names its tenant, except the download's lookup,
which has only the id its URL names. Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` under a
lease that the running collector renews as it writes; a job whose collector died is claimed
again once its lease runs out and starts over.

An xlsx file cannot be sent before it is whole (a zip's directory comes last): its sheets are
written, in constant memory, to a temporary file as the COPY's CSV rows arrive, and that file is
then handed to the sink like any other export's bytes.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import psycopg
import xlsxwriter  # type: ignore[import-untyped]  # no type hints shipped
from psycopg.rows import dict_row

from otaudit_collector.core.export import CSV_COLUMNS, FORMATS, XLSX_SHEET_ROWS, Format, copy_sql, csv_header, sheet_row
from otaudit_collector.core.query import parse_filters, where_sql
from otaudit_collector.storage.bundles import stream_bundle

__all__ = [
    "BLOCK_BYTES",
    "stream_export",
    "count_rows",
    "create_job",
    "get_job",
    "claim_job",
    "run_job",
    "read_file",
    "delete_expired",
    "MAX_ATTEMPTS",
]

log = logging.getLogger(__name__)

BLOCK_BYTES = 256 * 1024
"""Rows are handed to the sink in blocks of about this size: memory stays flat whatever the row count."""
CHUNK_BYTES = 1024 * 1024
MAX_ATTEMPTS = 3

Sink = Callable[[bytes], Awaitable[None]]


def job_where(tenant: str, categories: list[str] | None, filters: dict[str, list[str]]) -> tuple[str, list[Any]]:
    """The WHERE of a job, rebuilt from what was stored when it was made."""
    return where_sql(tenant, categories, parse_filters(filters))


async def count_rows(conn: psycopg.AsyncConnection[Any], where: str, params: list[Any]) -> int:
    cur = await conn.execute(f"SELECT count(*) FROM events WHERE {where}", params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def stream_export(
    conn: psycopg.AsyncConnection[Any],
    fmt: Format,
    bom: bool,
    where: str,
    params: list[Any],
    sink: Sink,
    progress: Callable[[int], Awaitable[None]] | None = None,
    *,
    sheet_rows: int = XLSX_SHEET_ROWS,
    bundle: BundleSource | None = None,
) -> int:
    """COPY the matching events to ``sink`` in ``fmt``; returns the rows written.

    PostgreSQL sends one COPY message per row, so rows are counted without being parsed.
    ``sheet_rows``: events per sheet of an xlsx file (Excel's limit by default). ``bundle``:
    where a bundle's material is read (it needs the log's tables, not only the rows).
    """
    if fmt.name == "bundle":
        if bundle is None:
            raise ValueError("a bundle export needs its BundleSource")
        return await stream_bundle(bundle.conninfo, bundle.tenant, where, params, sink, bundle.filters, progress)
    if fmt.name == "xlsx":
        return await _stream_xlsx(conn, where, params, sink, progress, sheet_rows)
    rows = 0
    parts: list[bytes | bytearray | memoryview] = []
    size = 0
    if fmt.name == "csv":
        parts.append(csv_header(bom))
    elif fmt.name == "json":
        parts.append(b"[")
    as_array = fmt.name == "json"
    async with conn.cursor().copy(copy_sql(fmt, where), params) as copy:
        async for data in copy:
            if as_array:
                parts.append(b"\n" if rows == 0 else b",\n")
                parts.append(memoryview(data)[:-1])  # the row without its newline
            else:
                parts.append(data)
            rows += 1
            size += len(data)
            if size >= BLOCK_BYTES:
                await sink(b"".join(parts))
                parts.clear()
                size = 0
                if progress is not None:
                    await progress(rows)
    if as_array:
        parts.append(b"\n]\n" if rows else b"]\n")
    await sink(b"".join(parts))
    return rows


class _Book:
    """An xlsx workbook written in constant memory (XlsxWriter writes each row to disk as it comes) to a
    temporary file: sheets named ``events``, ``events 2``... of at most ``sheet_rows`` events below the header.

    Text is written with ``write_string``: a text cell is never a formula, whatever it holds.
    """

    def __init__(self, file: IO[bytes], sheet_rows: int) -> None:
        if sheet_rows < 1:
            raise ValueError("sheet_rows must be at least 1")
        self.sheet_rows = sheet_rows
        self.book = xlsxwriter.Workbook(file, {"constant_memory": True})
        self.header = self.book.add_format({"bold": True})
        self.time = self.book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss.000"})
        self.sheets = 0
        self.row = 0
        self.sheet: Any = None
        self._new_sheet()

    def _new_sheet(self) -> None:
        self.sheets += 1
        self.sheet = self.book.add_worksheet("events" if self.sheets == 1 else f"events {self.sheets}")
        for col, (name, _) in enumerate(CSV_COLUMNS):
            self.sheet.write_string(0, col, name, self.header)
            if name.endswith("_at"):
                self.sheet.set_column(col, col, 23)
        self.sheet.freeze_panes(1, 0)
        self.row = 0

    def add(self, csv_text: str) -> int:
        """Write the CSV rows of ``csv_text`` (whole rows, as COPY sent them); returns how many."""
        count = 0
        for cells in csv.reader(io.StringIO(csv_text, newline="")):
            if self.row == self.sheet_rows:
                self._new_sheet()
            self.row += 1
            for col, value in enumerate(sheet_row(cells)):
                if value is None:
                    continue
                if isinstance(value, str):
                    self.sheet.write_string(self.row, col, value)
                elif isinstance(value, int):
                    self.sheet.write_number(self.row, col, value)
                else:
                    self.sheet.write_datetime(self.row, col, value, self.time)
            count += 1
        return count

    def close(self) -> None:
        self.book.close()


async def _stream_xlsx(
    conn: psycopg.AsyncConnection[Any],
    where: str,
    params: list[Any],
    sink: Sink,
    progress: Callable[[int], Awaitable[None]] | None,
    sheet_rows: int,
) -> int:
    """Write the xlsx file (in a worker thread: zipping and XML are CPU work the event loop must not wait for)
    to a temporary file, then hand it to ``sink`` in blocks. Its rows are the CSV export's."""
    rows = 0
    with tempfile.TemporaryFile(prefix="otaudit-export-", suffix=".xlsx") as file:
        book = await asyncio.to_thread(_Book, file, sheet_rows)
        try:
            parts: list[bytes] = []
            size = 0
            async with conn.cursor().copy(copy_sql(FORMATS["xlsx"], where), params) as copy:
                async for data in copy:
                    parts.append(bytes(data))
                    size += len(data)
                    if size >= BLOCK_BYTES:
                        rows += await asyncio.to_thread(book.add, b"".join(parts).decode("utf-8"))
                        parts.clear()
                        size = 0
                        if progress is not None:
                            await progress(rows)
            rows += await asyncio.to_thread(book.add, b"".join(parts).decode("utf-8"))
        finally:
            await asyncio.to_thread(book.close)  # also on failure: it removes the sheets' own temporary files
        file.seek(0)
        while block := await asyncio.to_thread(file.read, BLOCK_BYTES):
            await sink(block)
            if progress is not None:
                await progress(rows)  # a job renews its lease while its file is stored
    return rows


@dataclass(frozen=True, slots=True)
class BundleSource:
    conninfo: str
    tenant: str
    filters: Mapping[str, Any]
    """As asked, for the manifest (informational)."""


# -- jobs ------------------------------------------------------------------------------


async def create_job(
    conn: psycopg.AsyncConnection[Any],
    *,
    tenant: str,
    token_id: str,
    fmt: Format,
    bom: bool,
    filters: dict[str, list[str]],
    categories: list[str] | None,
    client: dict[str, str],
) -> dict[str, Any]:
    job_id = "exp_" + secrets.token_hex(10)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO export_jobs (id, tenant, token_id, format, bom, filters, categories, client)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (job_id, tenant, token_id, fmt.name, bom, json.dumps(filters), categories, json.dumps(client)),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def get_job(conn: psycopg.AsyncConnection[Any], tenant: str, job_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM export_jobs WHERE id = %s AND tenant = %s", (job_id, tenant))
        return await cur.fetchone()


async def claim_job(conn: psycopg.AsyncConnection[Any], owner: str, lease_seconds: float) -> dict[str, Any] | None:
    """Take the oldest queued job, or one whose collector stopped renewing its lease, and
    clear what an earlier attempt wrote. Autocommit connection expected."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT tenant, id FROM export_jobs WHERE state = 'queued' OR (state = 'running' AND lease_until < now())"
            " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        found = await cur.fetchone()
        if found is None:
            return None
        await cur.execute("DELETE FROM export_chunks WHERE tenant = %s AND job_id = %s", (found["tenant"], found["id"]))
        await cur.execute(
            "UPDATE export_jobs SET state = 'running', owner = %s, attempts = attempts + 1, rows = 0, bytes = 0,"
            " total = NULL, started_at = now(), lease_until = now() + make_interval(secs => %s)"
            " WHERE tenant = %s AND id = %s RETURNING *",
            (owner, lease_seconds, found["tenant"], found["id"]),
        )
        return await cur.fetchone()


class LeaseLost(Exception):
    """Another collector took the job over (this one was too slow to renew its lease)."""


async def run_job(
    conninfo: str, job: dict[str, Any], owner: str, lease_seconds: float, *, sheet_rows: int = XLSX_SHEET_ROWS
) -> int:
    """Write a claimed job's file into export_chunks; returns its rows. Marks it done or failed."""
    async with (
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as control,
        await psycopg.AsyncConnection.connect(conninfo) as reader,
    ):
        try:
            key = (job["tenant"], job["id"])
            fmt = FORMATS[job["format"]]
            where, params = job_where(job["tenant"], job["categories"], job["filters"])
            buffer = bytearray()
            chunk_no = 0
            counted = 0

            async def renew(rows: int, written: int) -> None:
                cur = await control.execute(
                    "UPDATE export_jobs SET rows = %s, bytes = %s, lease_until = now() + make_interval(secs => %s)"
                    " WHERE tenant = %s AND id = %s AND owner = %s AND state = 'running'",
                    (rows, written, lease_seconds, *key, owner),
                )
                if cur.rowcount != 1:
                    raise LeaseLost(job["id"])

            async def flush_chunk(data: bytes) -> None:
                nonlocal chunk_no
                await control.execute(
                    "INSERT INTO export_chunks (tenant, job_id, n, data) VALUES (%s, %s, %s, %s)", (*key, chunk_no, data)
                )
                chunk_no += 1

            written = 0

            async def sink(data: bytes) -> None:
                nonlocal written
                buffer.extend(data)
                written += len(data)
                while len(buffer) >= CHUNK_BYTES:
                    await flush_chunk(bytes(buffer[:CHUNK_BYTES]))
                    del buffer[:CHUNK_BYTES]

            async def progress(rows: int) -> None:
                nonlocal counted
                counted = rows
                await renew(rows, written)

            # One snapshot for the count and the rows: the total is exact.
            await reader.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await reader.set_read_only(True)
            async with reader.transaction():
                total = await count_rows(reader, where, params)
                await control.execute("UPDATE export_jobs SET total = %s WHERE tenant = %s AND id = %s", (total, *key))
                rows = await stream_export(
                    reader,
                    fmt,
                    job["bom"],
                    where,
                    params,
                    sink,
                    progress,
                    sheet_rows=sheet_rows,
                    bundle=BundleSource(conninfo, job["tenant"], job["filters"]),
                )
            if buffer:
                await flush_chunk(bytes(buffer))
            cur = await control.execute(
                "UPDATE export_jobs SET state = 'done', rows = %s, bytes = %s, finished_at = now(), lease_until = NULL"
                " WHERE tenant = %s AND id = %s AND owner = %s AND state = 'running'",
                (rows, written, *key, owner),
            )
            if cur.rowcount != 1:
                raise LeaseLost(job["id"])
            return rows
        except LeaseLost:
            raise
        except (psycopg.OperationalError, asyncio.CancelledError):
            raise  # the database went away or the collector is stopping: the lease runs out and the job is retried
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            await control.execute(
                "UPDATE export_jobs SET state = 'failed', error = %s, finished_at = now(), lease_until = NULL"
                " WHERE tenant = %s AND id = %s AND owner = %s",
                (message, *key, owner),
            )
            raise


async def fail_job(conn: psycopg.AsyncConnection[Any], tenant: str, job_id: str, message: str) -> None:
    await conn.execute(
        "UPDATE export_jobs SET state = 'failed', error = %s, finished_at = now(), lease_until = NULL"
        " WHERE tenant = %s AND id = %s",
        (message, tenant, job_id),
    )


async def read_file(conn: psycopg.AsyncConnection[Any], tenant: str, job_id: str) -> AsyncIterator[bytes]:
    """A finished job's file, chunk by chunk (one chunk in memory at a time)."""
    n = 0
    while True:
        cur = await conn.execute(
            "SELECT data FROM export_chunks WHERE tenant = %s AND job_id = %s AND n = %s", (tenant, job_id, n)
        )
        row = await cur.fetchone()
        if row is None:
            return
        yield bytes(row[0])
        n += 1


async def delete_expired(conn: psycopg.AsyncConnection[Any], keep: dt.timedelta) -> int:
    """Delete finished jobs (and their files) older than ``keep``; returns how many."""
    cur = await conn.execute("DELETE FROM export_jobs WHERE state IN ('done', 'failed') AND finished_at < now() - %s", (keep,))
    return cur.rowcount
