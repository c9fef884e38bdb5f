"""Exports in PostgreSQL: streaming one (COPY straight to a sink) and export jobs.

A job's file is written into ``export_chunks`` (migration 0003), so any collector replica
can serve its download, after a restart too. Jobs are claimed with ``FOR UPDATE SKIP
LOCKED`` under a lease that the running collector renews as it writes; a job whose
collector died is claimed again once its lease runs out and starts over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from otaudit_collector.core.export import FORMATS, Format, copy_sql, csv_header
from otaudit_collector.core.query import parse_filters, where_sql

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
) -> int:
    """COPY the matching events to ``sink`` in ``fmt``; returns the rows written.

    PostgreSQL sends one COPY message per row, so rows are counted without being parsed.
    """
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
            "SELECT id FROM export_jobs WHERE state = 'queued' OR (state = 'running' AND lease_until < now())"
            " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        found = await cur.fetchone()
        if found is None:
            return None
        await cur.execute("DELETE FROM export_chunks WHERE job_id = %s", (found["id"],))
        await cur.execute(
            "UPDATE export_jobs SET state = 'running', owner = %s, attempts = attempts + 1, rows = 0, bytes = 0,"
            " total = NULL, started_at = now(), lease_until = now() + make_interval(secs => %s)"
            " WHERE id = %s RETURNING *",
            (owner, lease_seconds, found["id"]),
        )
        return await cur.fetchone()


class LeaseLost(Exception):
    """Another collector took the job over (this one was too slow to renew its lease)."""


async def run_job(conninfo: str, job: dict[str, Any], owner: str, lease_seconds: float) -> int:
    """Write a claimed job's file into export_chunks; returns its rows. Marks it done or failed."""
    async with (
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as control,
        await psycopg.AsyncConnection.connect(conninfo) as reader,
    ):
        try:
            fmt = FORMATS[job["format"]]
            where, params = job_where(job["tenant"], job["categories"], job["filters"])
            buffer = bytearray()
            chunk_no = 0
            counted = 0

            async def renew(rows: int, written: int) -> None:
                cur = await control.execute(
                    "UPDATE export_jobs SET rows = %s, bytes = %s, lease_until = now() + make_interval(secs => %s)"
                    " WHERE id = %s AND owner = %s AND state = 'running'",
                    (rows, written, lease_seconds, job["id"], owner),
                )
                if cur.rowcount != 1:
                    raise LeaseLost(job["id"])

            async def flush_chunk(data: bytes) -> None:
                nonlocal chunk_no
                await control.execute(
                    "INSERT INTO export_chunks (job_id, n, data) VALUES (%s, %s, %s)", (job["id"], chunk_no, data)
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
                await control.execute("UPDATE export_jobs SET total = %s WHERE id = %s", (total, job["id"]))
                rows = await stream_export(reader, fmt, job["bom"], where, params, sink, progress)
            if buffer:
                await flush_chunk(bytes(buffer))
            cur = await control.execute(
                "UPDATE export_jobs SET state = 'done', rows = %s, bytes = %s, finished_at = now(), lease_until = NULL"
                " WHERE id = %s AND owner = %s AND state = 'running'",
                (rows, written, job["id"], owner),
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
                " WHERE id = %s AND owner = %s",
                (message, job["id"], owner),
            )
            raise


async def fail_job(conn: psycopg.AsyncConnection[Any], job_id: str, message: str) -> None:
    await conn.execute(
        "UPDATE export_jobs SET state = 'failed', error = %s, finished_at = now(), lease_until = NULL WHERE id = %s",
        (message, job_id),
    )


async def read_file(conn: psycopg.AsyncConnection[Any], job_id: str) -> AsyncIterator[bytes]:
    """A finished job's file, chunk by chunk (one chunk in memory at a time)."""
    n = 0
    while True:
        cur = await conn.execute("SELECT data FROM export_chunks WHERE job_id = %s AND n = %s", (job_id, n))
        row = await cur.fetchone()
        if row is None:
            return
        yield bytes(row[0])
        n += 1


async def delete_expired(conn: psycopg.AsyncConnection[Any], keep: dt.timedelta) -> int:
    """Delete finished jobs (and their files) older than ``keep``; returns how many."""
    cur = await conn.execute("DELETE FROM export_jobs WHERE state IN ('done', 'failed') AND finished_at < now() - %s", (keep,))
    return cur.rowcount
