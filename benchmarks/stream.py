#!/usr/bin/env python
"""Streams benchmark (issue 14): does one stream keep up with ingest, how long from commit to
the receiver, and how fast a stream backfills a tenant's trail.

Everything runs on this machine in one run, side by side: an embedded PostgreSQL (pgserver),
``otaudit serve`` subprocesses (``ingest.CollectorProcess``), ``ingest.py``'s OTLP/gRPC
clients and workload (its generator, every record in tenant ``acme``, on the enterprise
plan so that the stream delivers every category), and, in this process, an OTLP/gRPC
receiver recording every LogRecord's ``log.record.uid``, ``otaudit.seq`` and arrival time.
The stream settings are realistic ones (``--batch-records`` 2000, ``--poll-seconds`` 0.2).

1. **One stream keeps up with ingest** (goal: drain rate >= 1.0x the ingest rate), for a
   file stream and for an OTLP/gRPC stream, each on a fresh database: ``--records`` events
   (100,000) stored end to end (4 clients, as ``ingest.py``; first send to last
   acknowledgement) while the stream does not deliver yet; then the stream delivers that
   backlog from seq 1, timed until its cursor reaches the tenant's last seq. The file stream
   is declared, so the first collector (``streams.enabled: false``) makes it; a second one
   delivers it, its lease held as another replica's while that collector starts and given
   back (``storage.streams.release``'s UPDATE) when the clock starts. The OTLP stream is
   made by ``POST /v1/streams``, timed from that request. Then, with the stream active,
   another ``--records`` events: the ingest rate beside it, the largest lag seen (cursor and
   last seq read every 25 ms) and how long after the last acknowledgement it caught up.
2. **Commit-to-receiver latency** (goal: p99 < 2 s at half the ingest capacity): with the
   OTLP stream active, requests paced at 0.5x the OTLP run's ingest rate for
   ``--latency-seconds``; an event's commit time is the acknowledgement of its request (the
   collector answers after the commit), its arrival the receiver's clock (same process, same
   clock): p50/p95/p99/max over every event.
3. **Backfill** (goal: a file stream from seq 1 at least 0.5x the rows/s of
   ``GET /v1/export?format=ndjson``): ``query.py``'s loader puts ``--backfill-events`` events
   (1,000,000) in tenant acme (and 2/3 as many in two others) with SQL, tenant_seq and plans
   set; the collector serves it with the log off (as ``query.py``: the loaded rows are not in
   the log). The export is read to the end by a client (rows/s, rows counted by line), then
   a declared file stream with ``start: {seq: 1}`` drains the tenant up to its last seq.

Checks (exit 1 when one fails): every event of the tenant, seq 1 up to the stream's cursor,
delivered, in seq order, with the stored id (the receiver's records, or the stream's files
read back with gzip, each finished file's name against its first and last seq); repeats
counted (a failure when the stream reports no failed attempt: at-least-once repeats only
after one); every event of the latency run received; the export's rows = the rows it recorded. Timings are never tests: this is where they live.

    python benchmarks/stream.py [--records N] [--backfill-events N] [--latency-seconds S] [--quick] [--json] [--strict]

About 10 minutes on a quiet 2-core machine (17 with 1-1.5 cores taken by other work; the
1M-event load alone is 2-3 minutes); ``--quick`` (50,000 events per ingest run, 100,000 to
backfill, 15 s of latency) about 4. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import gzip
import http.client
import json
import math
import os
import platform
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import query
from _measure import git_commit, say
from ingest import (
    BATCH,
    EXPORT_METHOD,
    BenchmarkError,
    Client,
    CollectorProcess,
    Generator,
    Workload,
    settle,
)
from ingest import (
    TENANTS as INGEST_TENANTS,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from psycopg.conninfo import make_conninfo
from query import Cpu, CpuWindow, percentile

from otaudit_collector.app import ensure_partitions
from otaudit_collector.storage.access import create_token, set_plan
from otaudit_collector.storage.migrate import apply_migrations

TENANT = "acme"
PEPPER = "otaudit-benchmark-pepper-not-a-secret"
STREAM = "bench"  # a declared stream's id is cfg_<name>
GOAL_KEEP_UP = 1.0  # drain rate >= this x the ingest rate
GOAL_P99_SECONDS = 2.0  # commit -> receiver p99 below this ...
LATENCY_LOAD = 0.5  # ... at this x the measured ingest rate
GOAL_BACKFILL = 0.5  # file stream rows/s >= this x GET /v1/export rows/s
NOISY_CORES = 0.25  # other processes' CPU during a timed phase above which the report warns
STALL_SECONDS = 90.0  # a stream whose cursor does not move this long while behind fails the run
POLL = 0.025  # how often the watcher reads the stream's cursor and the tenant's last seq
SERVICE, METHOD = EXPORT_METHOD.strip("/").split("/")
_HEAD = re.compile(rb'^\{"id": "([^"]+)", "seq": ([0-9]+)[,}]')  # jsonb text: the shortest keys first


def rnd(x: float, n: int = 2) -> float | None:
    return None if x is None or math.isnan(x) else round(x, n)  # NaN (not measured) becomes null in the JSON


# ---------------------------------------------------------------------------------------
# The workload: ingest.py's generator, one tenant
# ---------------------------------------------------------------------------------------


class Requests:
    """``ingest.Generator`` requests with every record in TENANT (so one stream carries the
    whole ingest), made in pieces as the phases need them: every event id is new."""

    def __init__(self, seed: int) -> None:
        self.gen = Generator(seed)
        self.gen.tenant_weights = [1 if t == TENANT else 0 for t in INGEST_TENANTS]
        self.stats = Workload([], 0, 0.0, Counter(), Counter(), Counter())

    def make(self, n: int) -> list[bytes]:
        return [self.gen.request(self.stats) for _ in range(n)]


def record_ids(body: bytes) -> list[str]:
    """The ``log.record.uid`` of every record of a serialized request (the generator puts it first)."""
    request = ExportLogsServiceRequest.FromString(body)
    out = []
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                first = lr.attributes[0]
                out.append(first.value.string_value if first.key == "log.record.uid" else _attr(lr, "log.record.uid"))
    return out


def _attr(lr: Any, key: str) -> Any:
    for kv in lr.attributes:
        if kv.key == key:
            return kv.value.string_value or kv.value.int_value
    raise BenchmarkError(f"a log record without {key}")


# ---------------------------------------------------------------------------------------
# The OTLP/gRPC receiver
# ---------------------------------------------------------------------------------------


class Receiver:
    """``LogsService/Export`` answering an empty response; keeps each request's (seq, uid) in
    the order of its LogRecords and the first arrival time of each uid (``time.perf_counter``,
    the clients' clock). Records are kept in the order they came, within a request and from
    request to request, and the order checked is that one: ``core.otlp_out.export_request``
    keeps seq order across the sources of a request. ``regrouped`` counts records that came
    after a higher seq of the same request (the check fails unless it is 0)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[int, str]] = []  # every request's records as they came, requests in arrival order
        self.regrouped = 0
        self.arrival: dict[str, float] = {}
        self.requests = 0
        self.empty = ExportLogsServiceResponse().SerializeToString()
        handler = grpc.unary_unary_rpc_method_handler(self._export, request_deserializer=None, response_serializer=None)
        self.server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=2),
            handlers=[grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})],
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        now = time.perf_counter()
        got = []
        for rl in ExportLogsServiceRequest.FromString(body).resource_logs:
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    attrs = lr.attributes  # core/otlp_out.py: the uid first, otaudit.seq second to last
                    uid = attrs[0].value.string_value if attrs[0].key == "log.record.uid" else _attr(lr, "log.record.uid")
                    seq = attrs[-2].value.int_value if attrs[-2].key == "otaudit.seq" else _attr(lr, "otaudit.seq")
                    got.append((int(seq), uid))
        top = regrouped = 0
        for seq, _uid in got:
            if seq < top:
                regrouped += 1
            top = max(top, seq)
        with self.lock:
            self.requests += 1
            self.regrouped += regrouped
            self.records.extend(got)
            for _seq, uid in got:
                self.arrival.setdefault(uid, now)
        return self.empty

    def stop(self) -> None:
        self.server.stop(grace=1).wait()


# ---------------------------------------------------------------------------------------
# The collector, its API, the stream's progress
# ---------------------------------------------------------------------------------------


class Collector(CollectorProcess):
    """``ingest.CollectorProcess`` (which knows the OTLP/gRPC address) with a configuration
    file of ours in its own folder, and the API's address from its ready lines."""

    def __init__(self, conninfo: str, folder: Path, config: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "collector.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        super().__init__(conninfo, folder, str(path))
        deadline = time.monotonic() + 30
        self.api_port = 0
        while not self.api_port:
            for line in list(self.stdout):
                if m := re.search(r"^\s+API\s+http://(\S+):(\d+)", line):
                    self.api_port = int(m[2])
            if time.monotonic() > deadline:
                raise BenchmarkError("the collector did not print its API address")
            time.sleep(0.01)


def collector_config(
    args: argparse.Namespace, *, deliver: bool, integrity: bool, declared: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "listen": {"workers": args.workers},  # otaudit serve --workers: the first delivers, all take ingest
        "retention": {"enabled": False},  # as _measure.ServedCollector: no deletes mid-measurement
        "catalogs": {"reload_interval_seconds": 0},
        "integrity": {"enabled": integrity},
        "streams": {
            "enabled": deliver,
            "batch_records": args.batch_records,
            "poll_seconds": args.poll_seconds,
            "lease_seconds": args.lease_seconds,
            "max_active": args.max_active,
            "declared": declared,
        },
    }


def file_stream(folder: Path) -> dict[str, Any]:
    return {"name": STREAM, "tenants": [TENANT], "kind": "file", "folder": str(folder), "start": {"seq": 1}}


def api(port: int, token: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = conn.getresponse()
        text = answer.read()
        if answer.status >= 300:
            raise BenchmarkError(f"{method} {path}: {answer.status} {text[:500]!r}")
        return json.loads(text) if text else {}
    finally:
        conn.close()


@dataclass
class Sample:
    at: float  # perf_counter
    cursor: int  # -1: no such stream (yet)
    head: int  # the tenant's last seq
    failed: int
    last_error: str | None


class Watcher(threading.Thread):
    """Reads the stream's cursor and the tenant's last seq every POLL seconds, on a
    connection of its own (not through the collector)."""

    def __init__(self, conninfo: str, stream_id: str) -> None:
        super().__init__(name="watcher", daemon=True)
        self.conninfo, self.stream_id = conninfo, stream_id
        self.samples: list[Sample] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        sql = (
            "SELECT coalesce(s.cursor, -1), coalesce(ts.last_seq, 0), coalesce(s.failed, 0), s.last_error"
            " FROM (SELECT 1) one LEFT JOIN streams s ON s.tenant = %(t)s AND s.id = %(s)s"
            " LEFT JOIN tenant_seq ts ON ts.tenant = %(t)s"
        )
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                while not self.halt.is_set():
                    row = conn.execute(sql, {"t": TENANT, "s": self.stream_id}).fetchone()
                    assert row is not None
                    self.samples.append(Sample(time.perf_counter(), int(row[0]), int(row[1]), int(row[2]), row[3]))
                    self.ready.set()
                    self.halt.wait(POLL)
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        self.halt.set()
        self.join(10)

    def latest(self) -> Sample:
        self.ready.wait(30)
        if self.error is not None:
            raise BenchmarkError(f"watching the stream failed: {self.error}")
        return self.samples[-1]

    def wait_cursor(self, target: int, collector: CollectorProcess) -> Sample:
        """The first sample whose cursor reached ``target``; fails when the stream stalls."""
        seen = len(self.samples)
        moved_at, last = time.monotonic(), -2
        while True:
            for s in self.samples[max(0, seen - 1) :]:
                if s.cursor >= target:
                    return s
            seen = len(self.samples)
            s = self.latest()
            if s.cursor != last:
                moved_at, last = time.monotonic(), s.cursor
            if collector.proc.poll() is not None:
                raise BenchmarkError(f"the collector exited ({collector.proc.returncode}):\n{collector.log_tail()}")
            if time.monotonic() - moved_at > STALL_SECONDS:
                raise BenchmarkError(
                    f"the stream stopped at cursor {s.cursor} of {target} for {STALL_SECONDS:.0f} s; last error: {s.last_error}"
                )
            time.sleep(POLL)

    def max_lag(self, start: float, end: float) -> int:
        return max((s.head - s.cursor for s in self.samples if start <= s.at <= end and s.cursor >= 0), default=0)


def last_seq(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT last_seq FROM tenant_seq WHERE tenant = %s", (TENANT,)).fetchone()
    return int(row[0]) if row else 0


def stream_row(conninfo: str, stream_id: str) -> dict[str, Any]:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT cursor, delivered, failed, last_error FROM streams WHERE tenant = %s AND id = %s", (TENANT, stream_id)
        ).fetchone()
    if row is None:
        raise BenchmarkError(f"no stream {stream_id}")
    return {"cursor": int(row[0]), "delivered": int(row[1]), "failed": int(row[2]), "last_error": row[3]}


LEASE_HOLDER = "stream-benchmark"


def hold_lease(conninfo: str, stream_id: str) -> None:
    """Hold the stream's lease as another replica would (``storage.streams.claim``): no collector takes it."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "UPDATE streams SET lease_owner = %s, lease_until = now() + interval '1 hour' WHERE tenant = %s AND id = %s",
            (LEASE_HOLDER, TENANT, stream_id),
        )


def release_lease(conninfo: str, stream_id: str) -> None:
    """Give it back as that replica stopping would (``storage.streams.release``): due at the next claim."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "UPDATE streams SET lease_owner = NULL, lease_until = NULL WHERE tenant = %s AND id = %s AND lease_owner = %s",
            (TENANT, stream_id, LEASE_HOLDER),
        )


# ---------------------------------------------------------------------------------------
# Timed pieces
# ---------------------------------------------------------------------------------------


def window_of(collector: CollectorProcess, postmaster_pid: int) -> CpuWindow:
    return CpuWindow(collector.pid, postmaster_pid)


def cpu_view(cpu: Cpu, events: int) -> dict[str, Any]:
    """CPU of a timed phase: us per event and cores, for the collector, PostgreSQL, this process, others."""
    n = max(events, 1)
    return {
        "collector_us": rnd(cpu.collector / n * 1e6, 1),
        "postgres_us": rnd(cpu.postgres / n * 1e6, 1),
        "self_us": rnd(cpu.client / n * 1e6, 1),
        "collector_cores": rnd(cpu.collector / cpu.wall),
        "postgres_cores": rnd(cpu.postgres / cpu.wall),
        "self_cores": rnd(cpu.client / cpu.wall),
        "other_cores": rnd(cpu.others),
    }


@dataclass
class IngestRun:
    events: int
    seconds: float
    started: float  # perf_counter of the first send
    last_ack: float  # perf_counter of the last acknowledgement
    retries: int
    cpu: Cpu

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def view(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": rnd(self.seconds, 3),
            "events_per_second": rnd(self.rate, 1),
            "retries": self.retries,
            "cpu": cpu_view(self.cpu, self.events),
        }


def ingest(
    collector: CollectorProcess, bodies: list[bytes], warmup: list[bytes], n_clients: int, uri: str, db: str, pm: int
) -> IngestRun:
    """ingest.py's end-to-end run: warm-up requests (untimed), settle, then every client
    at once until the work is done; first send to last acknowledgement."""
    work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for body in bodies:
        work.put(body)
    barrier = threading.Barrier(n_clients + 1)
    abort = threading.Event()
    per = len(warmup) // n_clients
    clients = [Client(i, collector.target, work, barrier, warmup[i * per : (i + 1) * per], abort) for i in range(n_clients)]
    for c in clients:
        c.start()
    while barrier.n_waiting < n_clients and not abort.is_set() and collector.proc.poll() is None:
        time.sleep(0.01)
    if abort.is_set() or barrier.n_waiting < n_clients:
        barrier.abort()
        raise BenchmarkError("; ".join(e for c in clients for e in c.result.errors) or "the collector exited during the warm-up")
    settle(uri, db)
    with window_of(collector, pm) as w:
        t0 = time.perf_counter()
        barrier.wait()
        for c in clients:
            c.join()
    errors = [e for c in clients for e in c.result.errors]
    rejected = sum(c.result.rejected + c.warm.rejected for c in clients)
    if errors or rejected or any(not c.result.finished_at for c in clients):
        raise BenchmarkError(f"ingest failed ({rejected} rejected): " + "; ".join(errors[:3]))
    acked = sum(c.result.records for c in clients)
    if acked != len(bodies) * BATCH:
        raise BenchmarkError(f"{acked} records acknowledged of {len(bodies) * BATCH}")
    t1 = max(c.result.finished_at for c in clients)
    run = IngestRun(acked, t1 - t0, t0, t1, sum(c.result.retries + c.warm.retries for c in clients), w.cpu)
    say(f"   {run.events:,} events in {run.seconds:.2f} s: {run.rate:,.0f} events/s")
    return run


class PacedClient(Client):
    """A client sending requests at their due times (offsets from ``start[0]``, taken from a
    shared queue in order) and noting when each was acknowledged."""

    def __init__(self, n: int, target: str, plan: queue.SimpleQueue[tuple[int, float]], bodies: list[bytes], start: list[float],
                 acks: dict[int, float], barrier: threading.Barrier, abort: threading.Event) -> None:  # fmt: skip
        super().__init__(n, target, queue.SimpleQueue(), barrier, [], abort)
        self.plan, self.bodies, self.t0, self.acks = plan, bodies, start, acks
        self.late = 0.0  # the most a send started after its due time

    def run(self) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=30)
            self.barrier.wait(timeout=300)
            while not self.abort.is_set():
                try:
                    i, offset = self.plan.get_nowait()
                except queue.Empty:
                    break
                wait = self.t0[0] + offset - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    self.late = max(self.late, -wait)
                self.send(self.bodies[i], self.result)
                self.acks[i] = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.result.errors.append(f"{self.name}: {exc}")
            self.abort.set()
        finally:
            self.result.finished_at = time.perf_counter()
            self.channel.close()


@dataclass
class Drain:
    events: int  # seq range the cursor crossed while timed
    seconds: float
    cpu: Cpu
    how: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def view(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": rnd(self.seconds, 3),
            "events_per_second": rnd(self.rate, 1),
            "timed": self.how,
            "cpu": cpu_view(self.cpu, self.events),
        }


def drain_declared(
    env: Env, db: str, folder: Path, config: dict[str, Any], watcher: Watcher, stream_id: str
) -> tuple[Collector, Drain]:
    """A declared stream (made, at cursor 0, by a collector not delivering streams) drained by a
    collector that does: its lease held while that collector starts, then given back; timed from
    the release to the cursor reaching the tenant's last seq."""
    hold_lease(db, stream_id)
    collector = Collector(db, folder, config)
    try:
        time.sleep(1.0)  # past its start-up work
        start = watcher.latest()
        if start.cursor != 0:
            raise BenchmarkError(f"the stream's cursor is {start.cursor} before its drain, not 0")
        with window_of(collector, env.pm) as w:
            t0 = time.perf_counter()
            target = last_seq(db)
            release_lease(db, stream_id)
            done = watcher.wait_cursor(target, collector)
    except BaseException:
        collector.stop()
        raise
    return collector, Drain(target, done.at - t0, w.cpu, "from the lease's release, another replica's, at the next claim")


@dataclass
class Concurrent:
    ingest: IngestRun
    max_lag: int
    catch_up_seconds: float
    head: int

    def view(self) -> dict[str, Any]:
        return {
            **self.ingest.view(),
            "max_lag_events": self.max_lag,
            "caught_up_seconds_after_last_ack": rnd(self.catch_up_seconds, 3),
            "last_seq": self.head,
        }


def concurrent_run(collector: CollectorProcess, watcher: Watcher, bodies: list[bytes], warmup: list[bytes], args: argparse.Namespace,
                   uri: str, db: str, pm: int, receiver: Receiver | None = None) -> Concurrent:  # fmt: skip
    run = ingest(collector, bodies, warmup, args.clients, uri, db, pm)
    head = last_seq(db)
    done = watcher.wait_cursor(head, collector)
    if receiver is not None:
        with receiver.lock:
            top = max((s for s, _ in receiver.records), default=0)
        if top < head:
            raise BenchmarkError(f"the cursor reached {head} but the receiver's highest seq is {top}")
    result = Concurrent(run, watcher.max_lag(run.started, done.at), max(0.0, done.at - run.last_ack), head)
    say(f"   largest lag {result.max_lag:,} events; caught up {result.catch_up_seconds:.2f} s after the last acknowledgement")
    return result


# ---------------------------------------------------------------------------------------
# Checks: what arrived against what is stored
# ---------------------------------------------------------------------------------------


def stored_ids(conninfo: str, upto: int) -> list[str | None]:
    """ids[seq] of the tenant's events 1..upto (None where there is no event)."""
    ids: list[str | None] = [None] * (upto + 1)
    with psycopg.connect(conninfo) as conn, conn.cursor(name="ids") as cur:
        cur.itersize = 50_000
        cur.execute("SELECT seq, id FROM events WHERE tenant = %s AND seq <= %s", (TENANT, upto))
        for seq, eid in cur:
            ids[int(seq)] = str(eid)
    return ids


def check_delivery(delivered: list[tuple[int, str]] | Any, conninfo: str, stream: dict[str, Any], what: str) -> dict[str, Any]:
    """Every stored event 1..cursor delivered once, in order, with its id; repeats counted."""
    upto = stream["cursor"]
    ids = stored_ids(conninfo, upto)
    seen = bytearray(upto + 1)
    count = repeats = out_of_order = wrong_id = beyond = 0
    top = 0
    for seq, eid in delivered:
        count += 1
        if seq > upto or seq < 1:
            beyond += 1
            continue
        if seen[seq]:
            repeats += 1
            continue
        if seq < top:
            out_of_order += 1
        seen[seq] = 1
        top = max(top, seq)
        if ids[seq] != eid:
            wrong_id += 1
    stored = sum(1 for x in ids[1:] if x is not None)
    missing = sum(1 for seq in range(1, upto + 1) if ids[seq] is not None and not seen[seq])
    not_stored = sum(1 for seq in range(1, upto + 1) if ids[seq] is None and seen[seq])
    problems = []
    if missing:
        problems.append(f"{missing} stored event(s) of seq 1..{upto} not delivered")
    if out_of_order:
        problems.append(f"{out_of_order} record(s) out of seq order")
    if wrong_id or not_stored:
        problems.append(f"{wrong_id + not_stored} record(s) whose id is not the stored event's")
    if repeats and not stream["failed"]:
        problems.append(f"{repeats} repeated record(s) while the stream reports no failed attempt")
    result = {
        "records": count,
        "stored_events": stored,
        "cursor": upto,
        "delivered_counter": stream["delivered"],
        "repeats": repeats,
        "beyond_cursor": beyond,  # sent but not yet counted in the cursor when the collector stopped: repeats to come
        "failed_attempts": stream["failed"],
        "last_error": stream["last_error"],
        "problems": problems,
    }
    say(f"   check ({what}): {count:,} records for {stored:,} stored events; {repeats} repeats; " + ("; ".join(problems) or "OK"))
    return result


def read_files(folder: Path, stream_id: str, problems: list[str]) -> Any:
    """(seq, id) of every record of the stream's files, finished ones in name order (their
    first seq), then the open one; checks each finished file's name against its records."""
    finished = sorted(folder.glob(f"{TENANT}-{stream_id}-*.ndjson.gz"))
    dot = folder / f".{TENANT}-{stream_id}.open.ndjson.gz"
    for path in [*finished, *([dot] if dot.exists() else [])]:
        first = last = None
        with gzip.open(path, "rb") as f:
            for line in f:
                m = _HEAD.match(line)
                if m is None:
                    doc = json.loads(line)
                    seq, eid = int(doc["seq"]), str(doc["id"])
                else:
                    seq, eid = int(m[2]), m[1].decode()
                first = seq if first is None else first
                last = seq
                yield seq, eid
        if path != dot:
            name = path.name.removesuffix(".ndjson.gz").rsplit("-", 2)
            if (int(name[1]), int(name[2])) != (first, last):
                problems.append(f"{path.name} holds seq {first}-{last}")


def files_summary(folder: Path) -> dict[str, Any]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


# ---------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------


@dataclass
class Env:
    args: argparse.Namespace
    workdir: Path
    uri: str
    pm: int  # the postmaster's pid
    work: Requests
    checks: dict[str, Any] = field(default_factory=dict)

    def database(self, name: str) -> tuple[str, str]:
        """A fresh, migrated database with TENANT on the enterprise plan; (conninfo, admin token)."""
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        db = make_conninfo(self.uri, dbname=name)
        apply_migrations(db)
        ensure_partitions(db, 2)
        with psycopg.connect(db) as conn:
            set_plan(conn, TENANT, "enterprise")
            conn.commit()
            token = create_token(conn, tenant=TENANT, role="admin", name="stream benchmark", pepper=PEPPER)[1]
            conn.commit()
        return db, token

    def batch(self) -> tuple[list[bytes], list[bytes]]:
        """The requests of one ingest run and its warm-up."""
        n = max(1, -(-self.args.records // BATCH))
        return self.work.make(n), self.work.make(self.args.clients * self.args.warmup)


def phase_file(env: Env) -> dict[str, Any]:
    args = env.args
    db, _token = env.database("otaudit_bench_stream_file")
    folder = env.workdir / "files-ingest"
    folder.mkdir()
    declared = [file_stream(folder)]
    bodies, warm = env.batch()
    say(f"1a. file stream: {len(bodies) * BATCH:,} events stored, the stream made but not delivered (streams.enabled false) ...")
    first = Collector(db, env.workdir / "file-1", collector_config(args, deliver=False, integrity=True, declared=declared))
    try:
        run = ingest(first, bodies, warm, args.clients, env.uri, db, env.pm)
    finally:
        first.stop()
    settle(env.uri, db)
    stream_id = "cfg_" + STREAM
    watcher = Watcher(db, stream_id)
    watcher.start()
    collector: Collector | None = None
    try:
        say("   the stream drains that backlog from seq 1 on a collector delivering streams ...")
        config = collector_config(args, deliver=True, integrity=True, declared=declared)
        collector, drain = drain_declared(env, db, env.workdir / "file-2", config, watcher, stream_id)
        say(
            f"   {drain.events:,} events in {drain.seconds:.2f} s: {drain.rate:,.0f} events/s ({drain.rate / run.rate:.2f}x ingest)"
        )
        bodies, warm = env.batch()
        say(f"   with the stream active: {len(bodies) * BATCH:,} more events ...")
        together = concurrent_run(collector, watcher, bodies, warm, args, env.uri, db, env.pm)
    finally:
        if collector is not None:
            collector.stop()
        watcher.stop()
    problems: list[str] = []
    stream = stream_row(db, stream_id)
    env.checks["file stream (ingest)"] = check_delivery(read_files(folder, stream_id, problems), db, stream, "file stream")
    env.checks["file stream (ingest)"]["problems"] += problems
    env.checks["file stream (ingest)"].update(files_summary(folder))
    return {"ingest": run.view(), "drain": drain.view(), "ratio": rnd(drain.rate / run.rate, 3), "concurrent": together.view()}


def phase_otlp(env: Env, receiver: Receiver) -> dict[str, Any]:
    args = env.args
    db, token = env.database("otaudit_bench_stream_otlp")
    bodies, warm = env.batch()
    collector = Collector(db, env.workdir / "otlp", collector_config(args, deliver=True, integrity=True, declared=[]))
    watcher: Watcher | None = None
    try:
        say(f"1b. OTLP/gRPC stream: {len(bodies) * BATCH:,} events stored before the stream is made ...")
        run = ingest(collector, bodies, warm, args.clients, env.uri, db, env.pm)
        settle(env.uri, db)
        say("   POST /v1/streams (otlp, grpc, start seq 1): the stream drains the backlog ...")
        body = {
            "name": STREAM,
            "kind": "otlp",
            "endpoint": f"http://127.0.0.1:{receiver.port}",
            "protocol": "grpc",
            "start": {"seq": 1},
        }
        with window_of(collector, env.pm) as w:
            t0 = time.perf_counter()
            made = api(collector.api_port, token, "POST", "/v1/streams", body)
            watcher = Watcher(db, made["id"])
            watcher.start()
            target = watcher.latest().head
            done = watcher.wait_cursor(target, collector)
        drain = Drain(target, done.at - t0, w.cpu, "from POST /v1/streams")
        say(
            f"   {drain.events:,} events in {drain.seconds:.2f} s: {drain.rate:,.0f} events/s ({drain.rate / run.rate:.2f}x ingest)"
        )
        bodies, warm = env.batch()
        say(f"   with the stream active: {len(bodies) * BATCH:,} more events ...")
        together = concurrent_run(collector, watcher, bodies, warm, args, env.uri, db, env.pm, receiver)

        latency = latency_run(env, collector, watcher, receiver, run.rate, db)
        shown = api(collector.api_port, token, "GET", f"/v1/streams/{made['id']}")
    finally:
        collector.stop()
        if watcher is not None:
            watcher.stop()
    stream = stream_row(db, made["id"])
    with receiver.lock:
        records = list(receiver.records)
    env.checks["OTLP stream"] = check_delivery(records, db, stream, "OTLP stream")
    env.checks["OTLP stream"]["receiver_requests"] = receiver.requests
    env.checks["OTLP stream"]["regrouped_in_request"] = receiver.regrouped
    if receiver.regrouped:
        env.checks["OTLP stream"]["problems"].append(f"{receiver.regrouped} record(s) after a higher seq of their request")
    env.checks["OTLP stream"]["api_view"] = {
        k: shown.get(k) for k in ("state", "cursor", "lag_events", "delivered", "failed", "last_error")
    }
    latency_problems = latency.pop("problems")
    env.checks["latency"] = {"problems": latency_problems}
    return {
        "ingest": run.view(),
        "drain": drain.view(),
        "ratio": rnd(drain.rate / run.rate, 3),
        "concurrent": together.view(),
        "latency": latency,
    }


def latency_run(env: Env, collector: Collector, watcher: Watcher, receiver: Receiver, capacity: float, db: str) -> dict[str, Any]:
    args = env.args
    rate = LATENCY_LOAD * capacity
    n = max(args.clients, round(rate * args.latency_seconds / BATCH))
    bodies = env.work.make(n)
    ids = [record_ids(b) for b in bodies]
    interval = BATCH / rate
    say(
        f"2. latency: {n * BATCH:,} events paced at {rate:,.0f} events/s ({LATENCY_LOAD}x the ingest rate) for {n * interval:.0f} s ..."
    )
    plan: queue.SimpleQueue[tuple[int, float]] = queue.SimpleQueue()
    for i in range(n):
        plan.put((i, i * interval))
    barrier = threading.Barrier(args.clients + 1)
    abort = threading.Event()
    start = [0.0]
    acks: dict[int, float] = {}
    clients = [PacedClient(i, collector.target, plan, bodies, start, acks, barrier, abort) for i in range(args.clients)]
    for c in clients:
        c.start()
    with window_of(collector, env.pm) as w:
        start[0] = time.perf_counter() + 0.05
        barrier.wait(timeout=60)
        for c in clients:
            c.join()
        errors = [e for c in clients for e in c.result.errors]
        if errors or len(acks) != n:
            raise BenchmarkError("paced ingest failed: " + "; ".join(errors[:3]))
        head = last_seq(db)
        watcher.wait_cursor(head, collector)
    sent_seconds = max(acks.values()) - start[0]
    waits = []
    missing = 0
    with receiver.lock:
        arrival = dict(receiver.arrival)
    for i, uids in enumerate(ids):
        for uid in uids:
            at = arrival.get(uid)
            if at is None:
                missing += 1
            else:
                waits.append(at - acks[i])
    problems = [f"{missing} event(s) of the latency run never reached the receiver"] if missing else []
    events = n * BATCH
    out = {
        "target_events_per_second": rnd(rate, 1),
        "achieved_events_per_second": rnd(events / sent_seconds, 1),
        "events": events,
        "seconds": rnd(sent_seconds, 2),
        "latest_send_seconds": rnd(max(c.late for c in clients), 3),
        "before_ack": sum(1 for x in waits if x < 0),
        "seconds_p50": rnd(percentile(waits, 50), 3),
        "seconds_p95": rnd(percentile(waits, 95), 3),
        "seconds_p99": rnd(percentile(waits, 99), 3),
        "seconds_max": rnd(max(waits, default=float("nan")), 3),
        "request_latency_p50": rnd(percentile([x for c in clients for x in c.result.latencies], 50), 3),
        "cpu": cpu_view(w.cpu, events),
        "problems": problems,
    }
    say(f"   commit -> receiver p50 {out['seconds_p50']} s, p99 {out['seconds_p99']} s, max {out['seconds_max']} s")
    return out


def phase_backfill(env: Env) -> dict[str, Any]:
    args = env.args
    # query.py's loader: tenant acme gets 6 of every 10 events (g % 10 < 6): enough for --backfill-events.
    total = -(-args.backfill_events // 6) * 10
    say(f"3. backfill: {total:,} events loaded with query.py's loader (acme {total // 10 * 6:,}) ...")
    db = make_conninfo(env.uri, dbname=query.DB_NAME)
    data = query.load(env.uri, db, total, args.seed, min(2, os.cpu_count() or 1))
    problems = query.check_dataset(db, data)
    if problems:
        raise BenchmarkError("the loaded data is not what the collector would store:\n  " + "\n  ".join(problems))
    with psycopg.connect(db) as conn:
        token = create_token(conn, tenant=TENANT, role="admin", name="stream benchmark", pepper=PEPPER)[1]
        conn.commit()
    folder = env.workdir / "files-backfill"
    folder.mkdir()
    declared = [file_stream(folder)]
    stream_id = "cfg_" + STREAM

    # The export, on a collector that does not deliver streams (the declared one is made, at cursor 0).
    exporting = Collector(
        db, env.workdir / "backfill-1", collector_config(args, deliver=False, integrity=False, declared=declared)
    )
    try:
        settle(env.uri, db)
        say("   GET /v1/export?format=ndjson, read to the end ...")
        with window_of(exporting, env.pm) as w:
            t0 = time.perf_counter()
            rows, nbytes = read_export(exporting.api_port, token)
            seconds = time.perf_counter() - t0
        recorded = query.export_rows_recorded(db, TENANT)
    finally:
        exporting.stop()
    export = {
        "rows": rows,
        "bytes": nbytes,
        "seconds": rnd(seconds, 3),
        "rows_per_second": rnd(rows / seconds, 1),
        "rows_recorded": recorded,
        "cpu": cpu_view(w.cpu, rows),
    }
    say(f"   {rows:,} rows in {seconds:.2f} s: {rows / seconds:,.0f} rows/s")
    env.checks["export"] = {"problems": [] if recorded == rows else [f"the export sent {rows} rows and recorded {recorded}"]}

    settle(env.uri, db)
    watcher = Watcher(db, stream_id)
    watcher.start()
    collector: Collector | None = None
    try:
        say("   the file stream drains the tenant from seq 1 on a collector delivering streams ...")
        config = collector_config(args, deliver=True, integrity=False, declared=declared)
        collector, drain = drain_declared(env, db, env.workdir / "backfill-2", config, watcher, stream_id)
    finally:
        if collector is not None:
            collector.stop()
        watcher.stop()
    say(
        f"   {drain.events:,} events in {drain.seconds:.2f} s: {drain.rate:,.0f} rows/s ({drain.rate / (rows / seconds):.2f}x the export)"
    )
    file_problems: list[str] = []
    stream = stream_row(db, stream_id)
    check = check_delivery(read_files(folder, stream_id, file_problems), db, stream, "backfill file stream")
    check["problems"] += file_problems
    check.update(files_summary(folder))
    env.checks["file stream (backfill)"] = check
    return {
        "loaded": {
            "events": data.events,
            "counts": data.counts,
            "load_seconds": data.load_seconds,
            "start": data.start.isoformat()[:10],
        },
        "export": export,
        "stream": drain.view(),
        "ratio": rnd(drain.rate / (rows / seconds), 3),
    }


def read_export(port: int, token: str) -> tuple[int, int]:
    """GET /v1/export?format=ndjson read to the end: (rows, bytes), rows counted by line feed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("GET", "/v1/export?format=ndjson", headers={"Authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        if answer.status != 200:
            raise BenchmarkError(f"GET /v1/export: {answer.status} {answer.read()[:500]!r}")
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        rows = total = 0
        while n := answer.readinto(view):
            rows += buffer.count(b"\n", 0, n)
            total += n
        return rows, total
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# The run and the report
# ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    os.environ["OTAUDIT_TOKEN_PEPPER"] = PEPPER  # the collectors inherit it: the tokens made here work there
    started = time.monotonic()
    commit = git_commit()  # each collector runs the checkout as it is when it starts: said again at the end
    workdir = Path(tempfile.mkdtemp(prefix="otaudit-stream-bench-"))
    server = None
    receiver = None
    try:
        say(f"starting the embedded PostgreSQL in {workdir} ...")
        (workdir / "pg").mkdir()
        server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
        uri = server.get_uri()
        pm = int((workdir / "pg" / "postmaster.pid").read_text().split()[0])
        with psycopg.connect(uri, autocommit=True) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        env = Env(args, workdir, uri, pm, Requests(args.seed))
        receiver = Receiver()
        result: dict[str, Any] = {"benchmark": "stream"}
        phases = set(args.phases.split(","))
        if "file" in phases:
            result["file"] = phase_file(env)
        if "otlp" in phases:
            result["otlp"] = phase_otlp(env, receiver)
        if "backfill" in phases:
            result["backfill"] = phase_backfill(env)
    finally:
        if receiver is not None:
            receiver.stop()
        if server is not None:
            server.cleanup()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    stats = env.work.stats
    goals: dict[str, Any] = {}
    for kind in ("file", "otlp"):
        if kind in result:
            ratio = result[kind]["ratio"]
            goals[f"{kind}_keeps_up"] = {"goal": f">= {GOAL_KEEP_UP} x ingest", "value": ratio, "met": ratio >= GOAL_KEEP_UP}
    if "otlp" in result:
        p99 = result["otlp"]["latency"]["seconds_p99"]
        goals["latency_p99"] = {
            "goal": f"< {GOAL_P99_SECONDS} s at {LATENCY_LOAD} x ingest",
            "value": p99,
            "met": p99 is not None and p99 < GOAL_P99_SECONDS,
        }
    if "backfill" in result:
        ratio = result["backfill"]["ratio"]
        goals["backfill"] = {"goal": f">= {GOAL_BACKFILL} x export", "value": ratio, "met": ratio >= GOAL_BACKFILL}
    result.update(
        {
            "commit": commit,
            "commit_at_end": git_commit(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "nproc": os.cpu_count(),
                "python": platform.python_version(),
                "postgresql": pg_version,
                "grpcio": grpc.__version__,
            },
            "settings": {
                "batch_records": args.batch_records,
                "poll_seconds": args.poll_seconds,
                "lease_seconds": args.lease_seconds,
                "max_active": args.max_active,
                "clients": args.clients,
                "workers": args.workers,
                "records_per_run": max(1, -(-args.records // BATCH)) * BATCH,
                "latency_seconds": args.latency_seconds,
                "backfill_events": args.backfill_events,
                "seed": args.seed,
            },
            "workload": {
                "generated_records": stats.records,
                "attributes_per_record": rnd(stats.attributes_per_record / max(stats.records, 1)),
                "events": dict(stats.events),
            },
            "goals": goals,
            "checks": env.checks,
            "total_seconds": rnd(time.monotonic() - started, 1),
        }
    )
    return result


def _cpu_line(c: dict[str, Any]) -> str:
    return (
        f"CPU us/event: collector {c['collector_us']:.0f}, PostgreSQL {c['postgres_us']:.0f}, this process {c['self_us']:.0f}"
        f"  (cores {c['collector_cores']:.2f} / {c['postgres_cores']:.2f} / {c['self_cores']:.2f}; others {c['other_cores']:.2f})"
    )


def report(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]

    def verdict(met: bool) -> str:
        return "MET   " if met else "MISSED"

    changed = "" if r["commit_at_end"] == r["commit"] else f" (at the end: {r['commit_at_end']})"
    lines = [
        f"otaudit stream benchmark   commit {r['commit']}{changed}   {r['date']}   {m['nproc']} CPUs   Python {m['python']}"
        f"   PostgreSQL {m['postgresql']}   grpcio {m['grpcio']}",
        f"streams: batch_records {s['batch_records']}, poll_seconds {s['poll_seconds']:g}, lease_seconds {s['lease_seconds']:g},"
        f" max_active {s['max_active']}; {s['workers']} collector process(es) (listen.workers); collector defaults otherwise"
        " (integrity on; off for the backfill), retention off",
        f"workload: ingest.py's generator, every record in tenant {TENANT} (enterprise plan): {s['records_per_run']:,} records"
        f" per ingest run ({s['records_per_run'] // BATCH} requests x {BATCH}, +{s['clients']} warm-up requests), {s['clients']} OTLP/gRPC clients",
    ]
    for kind, title in (
        ("file", "file stream (gzip'd NDJSON, fsynced per batch)"),
        ("otlp", "OTLP/gRPC stream (to this process)"),
    ):
        if kind not in r:
            continue
        p = r[kind]
        i, d, c = p["ingest"], p["drain"], p["concurrent"]
        lines += [
            "",
            f"1{'a' if kind == 'file' else 'b'}. one {title} keeps up with ingest",
            f"   ingest, no stream delivering    {i['events']:>9,} events {i['seconds']:>7.2f} s {i['events_per_second']:>9,.0f} events/s   {_cpu_line(i['cpu'])}",
            f"   drain of that backlog, seq 1..  {d['events']:>9,} events {d['seconds']:>7.2f} s {d['events_per_second']:>9,.0f} events/s   {_cpu_line(d['cpu'])}",
            f"      ({d['timed']}, to the cursor reaching the tenant's last seq)",
            f"   drain / ingest                  {p['ratio']:.2f}   (goal >= {GOAL_KEEP_UP:g})",
            f"   ingest with the stream active   {c['events']:>9,} events {c['seconds']:>7.2f} s {c['events_per_second']:>9,.0f} events/s"
            f" ({c['events_per_second'] / i['events_per_second']:.2f}x without)   {_cpu_line(c['cpu'])}",
            f"      largest lag {c['max_lag_events']:,} events; caught up {c['caught_up_seconds_after_last_ack']:.2f} s after the last acknowledgement",
        ]
    if "otlp" in r:
        lt = r["otlp"]["latency"]
        lines += [
            "",
            f"2. commit (acknowledgement) -> receiver, OTLP/gRPC stream, at {LATENCY_LOAD:g}x the ingest rate",
            f"   {lt['events']:,} events paced at {lt['target_events_per_second']:,.0f} events/s for {lt['seconds']:.1f} s"
            f" (achieved {lt['achieved_events_per_second']:,.0f}; a send started at most {lt['latest_send_seconds']:.3f} s late;"
            f" request p50 {lt['request_latency_p50'] * 1e3:.0f} ms)",
            f"   p50 {lt['seconds_p50']:.3f} s   p95 {lt['seconds_p95']:.3f} s   p99 {lt['seconds_p99']:.3f} s   max {lt['seconds_max']:.3f} s"
            f"   ({lt['before_ack']} arrived before their acknowledgement)   goal p99 < {GOAL_P99_SECONDS:g} s",
            f"   {_cpu_line(lt['cpu'])}",
        ]
    if "backfill" in r:
        b = r["backfill"]
        e, st, ld = b["export"], b["stream"], b["loaded"]
        counts = ", ".join(f"{t} {n:,}" for t, n in sorted(ld["counts"].items()))
        load = f"{ld['load_seconds']:.0f} s" if ld["load_seconds"] else "reused"
        lines += [
            "",
            f"3. backfill of tenant {TENANT}: {ld['events']:,} events loaded with query.py's loader ({counts}; from {ld['start']}; {load})",
            f"   GET /v1/export?format=ndjson    {e['rows']:>9,} rows   {e['seconds']:>7.2f} s {e['rows_per_second']:>9,.0f} rows/s"
            f"   {e['bytes'] / e['rows']:.0f} bytes/row   {_cpu_line(e['cpu'])}",
            f"   file stream from seq 1          {st['events']:>9,} rows   {st['seconds']:>7.2f} s {st['events_per_second']:>9,.0f} rows/s"
            f"   {_cpu_line(st['cpu'])}",
            f"   stream / export                 {b['ratio']:.2f}   (goal >= {GOAL_BACKFILL:g})",
        ]
    lines += ["", "goals"]
    names = {
        "file_keeps_up": "file stream drain >= 1.0x ingest",
        "otlp_keeps_up": "OTLP stream drain >= 1.0x ingest",
        "latency_p99": f"commit -> receiver p99 < {GOAL_P99_SECONDS:g} s",
        "backfill": "backfill file stream >= 0.5x export",
    }
    for key, g in r["goals"].items():
        lines.append(f"   {names[key]:<40} {verdict(g['met'])}  {g['value']}")
    lines += ["", "checks"]
    for name, c in r["checks"].items():
        if "records" in c:
            files = f" in {c['files']} files ({c['bytes'] / 2**20:.1f} MiB)" if "files" in c else ""
            lines.append(
                f"   {name:<24} {c['records']:,} records{files} for {c['stored_events']:,} stored events (seq 1..{c['cursor']:,});"
                f" {c['repeats']} repeats; {c['beyond_cursor']} past the cursor; {c['failed_attempts']} failed attempts: {'; '.join(c['problems']) or 'every one once, in order, ids as stored'}"
            )
            if "receiver_requests" in c:
                lines.append(
                    f"   {'':<24} in {c['receiver_requests']:,} requests, read in the order they came:"
                    f" {c['regrouped_in_request']:,} records came after a higher seq of their request"
                )
        else:
            lines.append(f"   {name:<24} {'; '.join(c['problems']) or 'OK'}")
    others = [
        x["cpu"]["other_cores"] for p in (r.get("file"), r.get("otlp")) if p for x in (p["ingest"], p["drain"], p["concurrent"])
    ]
    if "otlp" in r:
        others.append(r["otlp"]["latency"]["cpu"]["other_cores"])
    if "backfill" in r:
        others += [r["backfill"]["export"]["cpu"]["other_cores"], r["backfill"]["stream"]["cpu"]["other_cores"]]
    lines.append(f"\ntotal run time {r['total_seconds']:.0f} s")
    if others and max(others) > NOISY_CORES:
        lines.append(
            f"WARNING: other processes used up to {max(others):.2f} of {m['nproc']} cores during the timed phases;"
            " the figures are depressed and noisy: run again on a quiet machine"
        )
    return "\n".join(lines)


def failed_checks(result: dict[str, Any]) -> list[str]:
    return [f"{name}: {p}" for name, c in result["checks"].items() for p in c["problems"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=100_000, help="events per ingest run, in 512-record requests (default 100000)"
    )
    parser.add_argument(
        "--backfill-events", type=int, default=1_000_000, help="events of the tenant to backfill (default 1000000)"
    )
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="length of the paced latency run (default 30)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent OTLP/gRPC clients (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="collector processes (listen.workers; default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up requests per client per run (default 1)")
    parser.add_argument("--batch-records", type=int, default=2000, help="streams.batch_records (default 2000)")
    parser.add_argument("--poll-seconds", type=float, default=0.2, help="streams.poll_seconds (default 0.2)")
    parser.add_argument("--lease-seconds", type=float, default=30.0, help="streams.lease_seconds (default 30)")
    parser.add_argument("--max-active", type=int, default=16, help="streams.max_active (default 16)")
    parser.add_argument("--phases", default="file,otlp,backfill", help="which phases to run (default file,otlp,backfill)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated workload and data (default 1)")
    parser.add_argument("--quick", action="store_true", help="50,000 events per ingest run, 100,000 to backfill, 15 s of latency")
    parser.add_argument("--json", action="store_true", help="print one JSON line on stdout (the readable report goes to stderr)")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (PostgreSQL data, collector logs, files)"
    )
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; options given still win
        parser.set_defaults(records=50_000, backfill_events=100_000, latency_seconds=15.0)
    args = parser.parse_args(argv)
    if args.records < 1 or args.clients < 1 or args.backfill_events < 1 or not 1 <= args.batch_records <= 10_000:
        parser.error("--records, --clients and --backfill-events must be positive, --batch-records 1..10000")
    try:
        result = run(args)
    except (BenchmarkError, query.BenchmarkError) as exc:
        say(f"benchmark FAILED: {exc}")
        if args.json:
            print(json.dumps({"benchmark": "stream", "error": str(exc), "commit": git_commit()}), flush=True)
        return 1
    text = report(result)
    if args.json:
        say(text)
        print(json.dumps(result, separators=(",", ":"), default=str), flush=True)
    else:
        print(text, flush=True)
    if failed := failed_checks(result):
        say("CHECKS FAILED:\n  " + "\n  ".join(failed))
        return 1
    if args.strict and not all(g["met"] for g in result["goals"].values()):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
