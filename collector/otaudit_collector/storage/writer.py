"""The writer: makes prepared batches durable, then lets their requests answer.

Group commit: every request waiting when a transaction starts shares it. For each group:

1. drop ids repeated within the group, and look up which (tenant, id) pairs are
   already stored (a primary-key probe per event: a retried request stores nothing twice);
2. in one transaction: take each tenant's next commit-sequence numbers (the row lock on
   ``tenant_seq`` is held until COMMIT, which orders commits per tenant across any number
   of collectors), COPY the new events straight into ``events`` and their keys into
   ``event_ids``, and put the rejected records into ``rejects`` in bulk (COPY to a
   temporary table, one INSERT from it: a thousand rejects are not a thousand statements);
3. COMMIT, then answer every request of the group.

If another collector stored one of the same events between steps 1 and 2 (a retried
request that reached two collectors at once), ``event_ids``' primary key refuses the
COPY, the transaction rolls back and the group is tried again.

Bounded: at most ``max_pending_records`` wait; beyond that ``submit`` raises Overloaded.
While the database is away, ``submit`` raises Unavailable at once and a background loop
reconnects; nothing is held in memory for an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import errors as pgerrors

from otaudit_collector.core.errors import IngestError, Overloaded, Unavailable
from otaudit_collector.core.prepare import EVENT_COLUMNS, Prepared, RejectRow, copy_text
from otaudit_collector.metrics import Metrics
from otaudit_collector.storage.log import LogCorrupt, RightEdges, append_in_commit

__all__ = ["Writer", "WriterStats", "close_quietly", "is_retryable"]

log = logging.getLogger(__name__)

_EXISTING_SQL = (
    "SELECT k.tenant, k.id FROM unnest(%s::text[], %s::text[]) AS k(tenant, id)"
    " JOIN event_ids e ON e.tenant = k.tenant AND e.id = k.id"
)
_SEQ_SQL = (
    "INSERT INTO tenant_seq AS t (tenant, last_seq) SELECT * FROM unnest(%s::text[], %s::bigint[])"
    " ON CONFLICT (tenant) DO UPDATE SET last_seq = t.last_seq + excluded.last_seq"
    " RETURNING tenant, last_seq, log_size"
)
_NEW_TENANTS_SQL = "INSERT INTO tenants (tenant, plan) SELECT unnest(%s::text[]), %s ON CONFLICT (tenant) DO NOTHING"
_COPY_EVENTS_SQL = f"COPY events (seq, {', '.join(EVENT_COLUMNS)}) FROM STDIN"
_COPY_IDS_SQL = "COPY event_ids (tenant, id, occurred_at) FROM STDIN"

# Rejects go in bulk: COPY into a session's temporary table, then one INSERT from it that
# skips fingerprints already quarantined (COPY alone cannot). A statement per reject cost a
# round trip each: a request of 200,000 rejects held the writer for 25 s. The table is made
# once per connection; its rows are gone at each commit or rollback. A fingerprint is
# quarantined once per tenant (migration 0016); a record naming no tenant is filed under ''.
_REJECT_STAGE_SQL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS otaudit_reject_stage (tenant text, category text, event text, reasons text[],"
    " resource bytea, record bytea, fingerprint bytea, record_encoding text, token_id text, token_tenant text)"
    " ON COMMIT DELETE ROWS"
)
_COPY_REJECTS_SQL = "COPY otaudit_reject_stage FROM STDIN"
_REJECT_SQL = (
    "INSERT INTO rejects (tenant, category, event, reasons, resource, record, fingerprint, record_encoding, token_id,"
    " token_tenant) SELECT coalesce(tenant, ''), category, event, reasons, resource, record, fingerprint, record_encoding,"
    " token_id, token_tenant FROM otaudit_reject_stage ON CONFLICT (tenant, fingerprint) DO NOTHING"
)

_RETRYABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    pgerrors.DeadlockDetected,
    pgerrors.SerializationFailure,
    pgerrors.LockNotAvailable,
    pgerrors.InsufficientResources,
    pgerrors.QueryCanceled,
)


def is_retryable(exc: BaseException) -> bool:
    """Database errors after which the same batch may well succeed (SQLSTATE 08, 40, 53, 57)."""
    return isinstance(exc, (*_RETRYABLE, TimeoutError, OSError))


@dataclass(slots=True)
class _Pending:
    batch: Prepared
    future: asyncio.Future[int]
    size: int


@dataclass(slots=True)
class WriterStats:
    transactions: int = 0
    events_written: int = 0
    duplicates: int = 0
    rejects_written: int = 0
    failures: int = 0
    last_error: str = ""


class Writer:
    """Owns one database connection and commits every batch handed to ``submit``."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_pending_records: int = 100_000,
        max_batch_records: int = 10_000,
        commit_timeout_seconds: float = 30.0,
        retry_after_seconds: float = 1.0,
        default_plan: str | None = None,
        metrics: Metrics | None = None,
        on_log_behind: Callable[[str], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._default_plan = default_plan
        self._max_pending = max_pending_records
        self._max_batch = max_batch_records
        self._commit_timeout = commit_timeout_seconds
        self._retry_after = retry_after_seconds
        self._queue: deque[_Pending] = deque()
        self._pending_records = 0
        self._wake = asyncio.Event()
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._partitions: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.available = False
        self.stats = WriterStats()
        self._committing = False
        self._metrics = metrics if metrics is not None else Metrics()
        self._metrics.queued_records.set_function(lambda: self._pending_records)
        self._metrics.watch_pool("writer", self.connection_stats)
        self._edges = RightEdges()  # each tenant's rightmost tiles, as this writer last committed them
        self._on_log_behind = on_log_behind

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (raising if the database cannot be reached) and start committing."""
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="otaudit-writer")

    async def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop. Batches that cannot be committed are refused as
        retryable; so is everything still uncommitted after ``timeout`` seconds: the commit
        in progress is abandoned (rolled back), and no request that waits for it is left
        without an answer. Nothing is acknowledged that was not committed."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error(
                    "stopping: the commit in progress did not finish in time and is abandoned; its requests are"
                    " answered as retryable",
                    extra={"pending_records": self._pending_records, "timeout_seconds": timeout},
                )
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._fail_queued(
                    Unavailable(
                        "the collector stopped before this batch was committed: retry", retry_after_seconds=self._retry_after
                    )
                )
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self.available = False

    @property
    def pending_records(self) -> int:
        return self._pending_records

    def connection_stats(self) -> dict[str, int]:
        """The writer's one connection in psycopg_pool's ``get_stats()`` terms, for the metrics:
        used while a batch commits, and the requests waiting for their commit."""
        open_ = int(self._conn is not None and not self._conn.closed)
        idle = int(open_ and not self._committing)
        return {"pool_max": 1, "pool_size": open_, "pool_available": idle, "requests_waiting": len(self._queue)}

    # -- the request side ------------------------------------------------------------

    async def submit(self, batch: Prepared) -> int:
        """Wait until ``batch`` is committed; return how many of its events were new.

        A batch larger than ``max_batch_records`` is committed in parts of that size, one
        after the other, each queued only once the previous one committed: requests that
        arrive meanwhile share the next transaction instead of waiting for the whole of a
        large one. The request is answered once every part is committed; if a part fails,
        the error is its answer and a retry stores only what is missing (storage is
        idempotent on the event id), so nothing is stored twice.
        """
        self._check_open()
        size = len(batch.lines) + len(batch.rejects)
        if self._pending_records and self._pending_records + size > self._max_pending:
            raise Overloaded(
                f"{self._pending_records} records are waiting to be committed (limit {self._max_pending}): retry later",
                retry_after_seconds=self._retry_after,
            )
        new = 0
        for index, part in enumerate(_parts(batch, self._max_batch)):
            if index:
                self._check_open()
            new += await self._submit_part(part)
        return new

    def _check_open(self) -> None:
        if self._closing:
            raise Unavailable(
                "the collector is shutting down: retry against another instance", retry_after_seconds=self._retry_after
            )
        if not self.available:
            raise self._unavailable()

    async def _submit_part(self, batch: Prepared) -> int:
        size = len(batch.lines) + len(batch.rejects)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(batch, future, size))
        self._pending_records += size
        self._wake.set()
        return await asyncio.shield(future)

    # -- the committing side ---------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self.available:
                self._fail_queued(self._unavailable())
                if self._closing:
                    return
                await self._reconnect_loop()
                continue
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._commit_group(self._take_group())

    def _unavailable(self) -> Unavailable:
        # Clients are not told the database's error: it names hosts and ports. Operators
        # find it in the log and on /readyz.
        return Unavailable("the database is unreachable: retry later", retry_after_seconds=self._retry_after)

    def _take_group(self) -> list[_Pending]:
        group = [self._queue.popleft()]
        total = group[0].size
        while self._queue and total + self._queue[0].size <= self._max_batch:
            item = self._queue.popleft()
            total += item.size
            group.append(item)
        return group

    async def _commit_group(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        self._committing = True
        try:
            new = await self._commit_with_retries([p.batch for p in group])
        except asyncio.CancelledError:  # the collector stops and cannot wait any longer
            self._settle(
                group,
                error=Unavailable(
                    "the collector stopped before this batch was committed: retry", retry_after_seconds=self._retry_after
                ),
            )
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is answered, none is lost silently
            if is_retryable(exc):
                self._mark_down(exc)
                self._settle(group, error=self._unavailable())
            elif len(group) > 1:
                # One request must not fail the others that shared its transaction.
                for item in group:
                    await self._commit_group([item])
            else:
                log.error("storage refused a batch", extra={"error": str(exc)})
                self.stats.failures += 1
                self._settle(group, error=IngestError(f"storage refused the batch: {exc}"))
            return
        finally:
            self._committing = False
        self._metrics.batch_commit_duration.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(sum(p.size for p in group))
        self._settle(group, new=new)

    def _settle(self, group: list[_Pending], *, new: int = 0, error: IngestError | None = None) -> None:
        for item in group:
            self._pending_records -= item.size
            if item.future.done():
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(new)

    def _fail_queued(self, error: IngestError) -> None:
        group = list(self._queue)
        self._queue.clear()
        self._settle(group, error=error)

    async def _commit_with_retries(self, batches: list[Prepared]) -> int:
        attempts = 0
        while True:
            try:
                return await asyncio.wait_for(self._commit(batches), self._commit_timeout)
            except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.UniqueViolation):
                # UniqueViolation: another collector stored one of these events meanwhile; the
                # next attempt finds it stored and skips it.
                attempts += 1
                if attempts >= 5:
                    raise
            except TimeoutError:
                await self._drop_connection()
                raise

    async def _commit(self, batches: list[Prepared]) -> int:
        conn = self._conn
        if conn is None or conn.closed:
            raise psycopg.OperationalError("no database connection")
        lines: list[str] = []
        keys: list[tuple[str, str, str]] = []
        leaves: list[bytes] = []
        sealed = all(len(batch.leaves) == len(batch.lines) for batch in batches)  # the log is on
        seen: set[tuple[str, str]] = set()
        for batch in batches:
            for n, (line, key) in enumerate(zip(batch.lines, batch.keys, strict=True)):
                if (key[0], key[1]) not in seen:
                    seen.add((key[0], key[1]))
                    lines.append(line)
                    keys.append(key)
                    if sealed:
                        leaves.append(batch.leaves[n])
        rejects = [reject for batch in batches for reject in batch.rejects]
        for month in {key[2][:7] for key in keys} - self._partitions:
            await conn.execute("SELECT otaudit_ensure_partition(%s::timestamptz)", (f"{month}-01T00:00:00Z",))
            self._partitions.add(month)
        if keys:
            cur = await conn.execute(_EXISTING_SQL, ([k[0] for k in keys], [k[1] for k in keys]))
            stored = set(await cur.fetchall())
            if stored:
                fresh = [i for i, k in enumerate(keys) if (k[0], k[1]) not in stored]
                lines, keys = [lines[i] for i in fresh], [keys[i] for i in fresh]
                if sealed:
                    leaves = [leaves[i] for i in fresh]
        counts: dict[str, int] = {}
        for key in keys:
            counts[key[0]] = counts.get(key[0], 0) + 1
        edges: dict[str, tuple[int, dict[int, bytes]]] = {}
        behind: list[str] = []
        async with conn.transaction(), conn.cursor() as cur:
            if keys:
                tenants = sorted(counts)  # one lock order for every writer: no deadlock between them
                await cur.execute(_SEQ_SQL, (tenants, [counts[t] for t in tenants]))
                next_seq = {}
                in_sync = set()
                for t, last, log_size in await cur.fetchall():
                    next_seq[str(t)] = cast(int, last) - counts[str(t)]
                    if log_size == next_seq[str(t)]:
                        in_sync.add(str(t))
                    elif sealed:
                        behind.append(str(t))
                first_seen = [t for t, before in next_seq.items() if before == 0]
                if first_seen and self._default_plan is not None:  # a tenant's first events: it gets the default plan
                    await cur.execute(_NEW_TENANTS_SQL, (first_seen, self._default_plan))
                numbered = []
                for line, key in zip(lines, keys, strict=True):
                    next_seq[key[0]] += 1
                    numbered.append(f"{next_seq[key[0]]}\t{line}\n")
                async with cur.copy(_COPY_EVENTS_SQL) as copy:
                    await copy.write("".join(numbered))
                async with cur.copy(_COPY_IDS_SQL) as copy:
                    await copy.write("".join(f"{k[0]}\t{k[1]}\t{k[2]}\n" for k in keys))
                if sealed and in_sync:
                    # The tree grows in this transaction, under the same locks as seq: the rows,
                    # seq and the tree never disagree. Leaves go in seq order (the numbering's).
                    appends: dict[str, tuple[int, list[bytes]]] = {t: (next_seq[t] - counts[t], []) for t in in_sync}
                    for key, leaf in zip(keys, leaves, strict=True):
                        if key[0] in appends:
                            appends[key[0]][1].append(leaf)
                    try:
                        edges = await append_in_commit(cur, self._edges, appends)
                    except LogCorrupt as exc:
                        # The events are stored all the same (an audit trail does not refuse
                        # events); the log stays behind, and 'otaudit verify' says why.
                        log.error("the log cannot be extended; events are stored, the log is left behind", extra={"error": str(exc)})
                        self._edges.forget(list(appends))
                        behind.extend(appends)
            if rejects:
                async with cur.copy(_COPY_REJECTS_SQL) as copy:
                    await copy.write(_reject_lines(rejects))
                await cur.execute(_REJECT_SQL)
        self._edges.update(edges)  # committed: these are the tiles as stored now
        if behind and self._on_log_behind is not None:
            for tenant in behind:
                self._on_log_behind(tenant)
        stats = self.stats
        duplicates = sum(len(b.lines) for b in batches) - len(keys)
        stats.transactions += 1
        stats.events_written += len(keys)
        stats.duplicates += duplicates
        stats.rejects_written += len(rejects)
        metrics = self._metrics
        metrics.records_accepted.inc(len(keys))
        metrics.records_duplicates.inc(duplicates)
        metrics.records_quarantined.inc(len(rejects))
        return len(keys)

    # -- connection ------------------------------------------------------------------

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=5, application_name="otaudit-writer"
        )
        cur = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
        )
        rows = await cur.fetchall()
        self._partitions = {str(row[0])[7:].replace("_", "-") for row in rows}
        await conn.execute(_REJECT_STAGE_SQL)
        self._conn = conn
        self.available = True
        self.stats.last_error = ""

    def _mark_down(self, exc: BaseException) -> None:
        if self.available:
            log.warning("database unreachable; refusing requests as retryable until it returns", extra={"error": str(exc)})
        self.available = False
        self.stats.failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(
            ": "
        )

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        await close_quietly(conn)

    async def _reconnect_loop(self) -> None:
        await self._drop_connection()
        delay = 0.1
        while not self._closing:
            try:
                await self._connect()
                log.info("database reachable again; accepting requests")
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the reason is kept for the answers
                self._mark_down(exc)
                self._fail_queued(self._unavailable())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _parts(batch: Prepared, size: int) -> list[Prepared]:
    """``batch`` in parts of at most ``size`` events; its rejects go with the first part."""
    if len(batch.lines) <= size:
        return [batch]
    return [
        Prepared(
            lines=batch.lines[start : start + size],
            keys=batch.keys[start : start + size],
            rejects=batch.rejects if start == 0 else [],
        )
        for start in range(0, len(batch.lines), size)
    ]


def _reject_lines(rejects: list[RejectRow]) -> str:
    """The rejects as COPY text lines for ``otaudit_reject_stage``, each fingerprint once per tenant (a
    retried request in the same group quarantines its rejects once). Their text is storable (``RejectRow``)."""
    seen: set[tuple[str, bytes]] = set()
    lines = []
    for r in rejects:
        key = (r.tenant or "", r.fingerprint)
        if key in seen:
            continue
        seen.add(key)
        reasons = "{" + ",".join('"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"' for x in r.reasons) + "}"
        fields = (r.tenant, r.category, r.event, reasons)
        lines.append(
            "\t".join(
                (
                    *(copy_text(f) for f in fields),
                    "\\\\x" + r.resource.hex(),
                    "\\\\x" + r.record.hex(),
                    "\\\\x" + r.fingerprint.hex(),
                    r.encoding,
                    copy_text(r.token_id),
                    copy_text(r.token_tenant),
                )
            )
            + "\n"
        )
    return "".join(lines)


async def close_quietly(conn: psycopg.AsyncConnection[Any] | None) -> None:
    """Close a connection being discarded; it may already be broken."""
    if conn is not None:
        try:
            await conn.close()
        except Exception:  # noqa: BLE001 - it is being discarded
            pass
