#!/usr/bin/env python
"""SDK benchmark: what ``otaudit_sdk.record()`` costs, next to a plain OTel ``Logger.emit()``.

The stock pipeline is opentelemetry-sdk's ``LoggerProvider`` + ``BatchLogRecordProcessor``
(``OTLPLogExporter``, gRPC) emitting the record the SDK sends: same body, event name,
severity and attributes (checked first). Both send to one sink, a minimal OTLP/gRPC server
in a separate process (its CPU is not counted) that parses each request with the official
``ExportLogsServiceRequest`` and counts records and requests.

1. Caller side: us per ``record()`` (durability ``memory``, ``file`` (the default),
   ``fsync``) and per ``emit()`` (building its attribute dict included), background threads
   running. Rounds of N calls per pipeline in rotating order, each pipeline flushed
   (untimed) after its round; median of the round means, wall clock and the calling
   thread's CPU. Rounds of more than 512 calls let the stock worker export during the
   round, as under sustained load.
2. CPU per event, caller and background threads together: ``time.process_time()`` from the
   first call until the sink has every record (``flush()`` / ``force_flush()`` returned).
3. Sustained delivery: ``otaudit serve`` on an embedded PostgreSQL (pgserver), N
   ``updateRole`` events recorded in ``file`` mode; events/s from the first ``record()``
   until ``flush()`` returned True; ``events`` must then hold every one.

Goals (the issue): record() (``file``) <= 2 x stock emit(), wall clock; SDK CPU per event
<= 0.5 x the stock pipeline's.

    python benchmarks/sdk.py [--quick] [--skip-collector] [--rounds 5] [--records 2000] [--strict]

About 30 s on 2 cores (``--quick``: 10 s). Exit status 0 when every check passed
(whatever the figures), 1 when one failed (records lost or rejected), 3 with ``--strict``
when a goal is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf.internal import api_implementation
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

import otaudit_sdk
from otaudit_sdk import _event
from otaudit_sdk._config import settings_from
from otaudit_sdk.testing import Captured, decode_record

REPO = Path(__file__).resolve().parents[1]
GOAL_CALL = 2.0  # record() (file) / stock emit(), wall clock per call
GOAL_CPU = 0.5  # SDK CPU per event / the stock pipeline's
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
SERVICE, TENANT, EVENT, CATEGORY, BODY = "accounts-api", "acme", "updateRole", "accounts_configuration", "Role updated"
IDENTITY: dict[str, Any] = {"service_name": SERVICE, "tenant": TENANT, "environ": {}}
ACTOR = otaudit_sdk.Actor.user(
    "u-17", email="ann@acme.test", name="Ann", roles=["admin"], address="203.0.113.9", user_agent="Mozilla/5.0", session_id="s-1"
)
TARGET = otaudit_sdk.Target("role", "r-3", "Auditors")
CHANGES = otaudit_sdk.changes({"permissions": ["read"]}, {"permissions": ["read", "export"]})
STOCK_CHANGES = [c.as_map() for c in CHANGES]
DETAILS = {"permissions": ["read", "export"]}
WARM = 200  # untimed calls per pipeline before anything is measured


class BenchmarkError(Exception):
    """A self-check failed: records lost or rejected, or the pipelines send different records."""


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- the sink: a separate process counting what it receives ------------------------------


def _sink_main(shared: Any, stop: Any) -> None:
    """shared: [port, records received, requests received]."""
    from concurrent import futures

    empty = ExportLogsServiceResponse().SerializeToString()

    def export(body: bytes, context: Any) -> bytes:
        request = ExportLogsServiceRequest.FromString(body)
        n = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
        with shared.get_lock():
            shared[1] += n
            shared[2] += 1
        return empty

    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 << 20)])
    handler = grpc.unary_unary_rpc_method_handler(export)  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": handler})])
    shared[0] = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop.wait()
    server.stop(1).wait()


class Sink:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # not a fork of this process and its threads
        self._shared, self._stop = ctx.Array("q", 3), ctx.Event()
        self.proc = ctx.Process(target=_sink_main, args=(self._shared, self._stop), daemon=True)
        self.proc.start()
        deadline = time.monotonic() + 60
        while not self._shared[0]:
            if time.monotonic() > deadline or not self.proc.is_alive():
                raise BenchmarkError("the sink did not start")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{self._shared[0]}"

    def counts(self) -> tuple[int, int]:
        """(records, requests) received so far."""
        with self._shared.get_lock():
            return int(self._shared[1]), int(self._shared[2])

    def stop(self) -> None:
        self._stop.set()
        self.proc.join(10)


# -- the two pipelines --------------------------------------------------------------------


def sdk_client(durability: str, endpoint: str, folder: Path) -> otaudit_sdk.AuditClient:
    s = settings_from(endpoint=endpoint, protocol="grpc", buffer_dir=folder, durability=durability, **IDENTITY)
    return otaudit_sdk.AuditClient(s)


def sdk_call(client: otaudit_sdk.AuditClient) -> Callable[[], object]:
    def call() -> object:
        return client.record(EVENT, category=CATEGORY, actor=ACTOR, target=TARGET, changes=CHANGES, details=DETAILS, message=BODY)

    return call


def stock_provider(processor: Any) -> LoggerProvider:
    provider = LoggerProvider(resource=Resource.create({"service.name": SERVICE}), shutdown_on_exit=False)
    provider.add_log_record_processor(processor)
    return provider


def stock_call(provider: LoggerProvider) -> Callable[[], None]:
    """emit() of the record the SDK sends; the attributes are built per call, as a caller would."""
    logger = provider.get_logger("otaudit_sdk", "0.2.0")
    sequence = 0

    def call() -> None:
        nonlocal sequence
        sequence += 1
        now = time.time_ns()
        attributes = {
            "log.record.uid": _event.uuid7(now // 1_000_000),
            "audit.category": CATEGORY,
            "audit.tenant.id": TENANT,
            "audit.outcome": "success",
            "audit.actor.type": ACTOR.type,
            "user.id": ACTOR.id,
            "user.email": ACTOR.email,
            "user.name": ACTOR.name,
            "user.roles": list(ACTOR.roles),
            "client.address": ACTOR.address,
            "user_agent.original": ACTOR.user_agent,
            "session.id": ACTOR.session_id,
            "audit.target.type": TARGET.type,
            "audit.target.id": TARGET.id,
            "audit.target.name": TARGET.name,
            "audit.changes": STOCK_CHANGES,
            "audit.details": DETAILS,
            "audit.sequence": sequence,
        }
        logger.emit(timestamp=now, severity_number=SeverityNumber.INFO, body=BODY, attributes=attributes, event_name=EVENT)

    return call


def check_same_record() -> None:
    """Both pipelines put the same record on the wire, apart from its id and sequence."""
    captured = Captured()
    sdk_call(otaudit_sdk.AuditClient(settings_from(durability="memory", **IDENTITY), buffer=captured))()
    exporter = InMemoryLogRecordExporter()
    stock_call(stock_provider(SimpleLogRecordProcessor(exporter)))()
    stock = encode_logs(exporter.get_finished_logs()).resource_logs[0].scope_logs[0].log_records[0]
    ours, theirs = captured.events[0], decode_record(stock.SerializeToString())
    if (ours.event, ours.message, stock.severity_number) != (theirs.event, theirs.message, SeverityNumber.INFO.value):
        raise BenchmarkError(f"event/body/severity differ: {ours} vs {theirs}")
    a, b = ours.attributes, theirs.attributes
    if a.keys() != b.keys() or any(a[k] != b[k] for k in a if k not in ("log.record.uid", "audit.sequence")):
        raise BenchmarkError(f"the records differ:\n  SDK   {a}\n  stock {b}")


# -- 1. caller side, 2. CPU per event ----------------------------------------------------

Pipeline = tuple[Callable[[], object], Callable[[], None], int]  # call, flush, calls per round


def caller_cost(pipelines: dict[str, Pipeline], rounds: int) -> dict[str, tuple[float, float]]:
    """name -> (wall us, calling thread's CPU us) per call: medians of the round means."""
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call, flush, n = pipelines[name]
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(n):
                call()
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            flush()
            wall[name].append((t1 - t0) / n / 1e3)
            cpu[name].append((c1 - c0) / n / 1e3)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in names}


def cpu_per_event(pipeline: Pipeline, n: int, sink: Sink) -> tuple[float, float, float]:
    """(process CPU us per event, events/s, records per request) until the sink has all n."""
    call, flush, _ = pipeline
    records, requests = sink.counts()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        call()
    flush()
    c1, t1 = time.process_time(), time.perf_counter()
    got, sent = (a - b for a, b in zip(sink.counts(), (records, requests), strict=True))
    if got != n:
        raise BenchmarkError(f"the sink received {got} records, {n} were sent")
    return (c1 - c0) / n * 1e6, n / (t1 - t0), n / max(sent, 1)


# -- 3. the real collector ------------------------------------------------------------------

_GRPC_LINE = re.compile(r"^\s+OTLP/gRPC\s+(\S+):(\d+)", re.M)  # the banner line, as tests/support.py reads it


def collector_rate(n: int, workdir: Path) -> dict[str, Any]:
    import pgserver

    say("3. starting the embedded PostgreSQL and `otaudit serve` ...")
    (workdir / "pg").mkdir(parents=True)
    server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
    conninfo, log = server.get_uri(), workdir / "collector.log"
    ports = ["--grpc-port", "0", "--http-port", "0", "--api-port", "0"]
    with open(log, "wb") as out:
        cmd = [sys.executable, "-m", "otaudit_collector", "serve", "--database-url", conninfo, *ports]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = None
    try:
        deadline = time.monotonic() + 120
        while "Send events" not in (banner := log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the collector did not start:\n{banner[-2000:]}")
            time.sleep(0.1)
        match = _GRPC_LINE.search(banner)
        assert match is not None, banner
        client = sdk_client("file", f"http://{match[1]}:{match[2]}", workdir / "buffer")
        record = sdk_call(client)
        for _ in range(WARM):  # untimed: connection set-up, the collector's first transactions
            record()
        if not client.flush(60):
            raise BenchmarkError(f"warm-up not delivered: {client.status()}")
        say(f"   recording {n} events ...")
        t0 = time.perf_counter()
        for _ in range(n):
            record()
        t1 = time.perf_counter()
        delivered = client.flush(max(120.0, n / 100))
        t2 = time.perf_counter()
        status = client.status()
        with psycopg.connect(conninfo) as conn:
            stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
        if not delivered or status.rejected or status.expired or stored != n + WARM:
            raise BenchmarkError(f"{stored} events stored, {n + WARM} recorded; {status}")
        return {"n": n, "record_s": t1 - t0, "total_s": t2 - t0, "stored": stored, "retries": status.retries}
    finally:
        if client is not None:
            client.shutdown(5)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.cleanup()


# -- report -----------------------------------------------------------------------------------


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if dirty else "")


def fs_type(path: Path) -> str:
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    return max((m for m in mounts if str(path).startswith(m[0])), key=lambda m: len(m[0]), default=["", "?"])[1]


def report(args: argparse.Namespace, calls: dict[str, Any], cpu: dict[str, Any], coll: dict[str, Any] | None, extra: str) -> bool:
    print(
        f"otaudit SDK benchmark   commit {git_commit()}   {os.cpu_count()} CPUs   Python {platform.python_version()}"
        f"   opentelemetry-sdk {version('opentelemetry-sdk')}   grpcio {grpc.__version__}   protobuf {api_implementation.Type()}"
    )
    print(f"record: {EVENT}, 18 attributes (a roles list, a changes list of maps, a details map) and a body; {extra}")
    print(f"\n1. caller side, per call ({args.rounds} rounds, median of the round means; background threads running)")
    print(f"   {'':<18} {'calls/round':>11} {'wall us':>9} {'x emit':>7} {'thread CPU us':>14} {'x emit':>7}")
    stock_wall, stock_cpu = calls["stock emit()"]
    for name, (wall, thread) in calls.items():
        n = args.fsync_records if "fsync" in name else args.records
        print(f"   {name:<18} {n:>11,} {wall:>9.1f} {wall / stock_wall:>6.2f}x {thread:>14.1f} {thread / stock_cpu:>6.2f}x")
    print(f"\n2. process CPU per event, caller + background, until the sink has all {args.cpu_records:,} (median of 3 runs)")
    print(f"   {'':<18} {'CPU us/event':>12} {'x stock':>8} {'events/s':>9} {'records/request':>16}")
    med = {name: [statistics.median(run[i] for run in runs) for i in range(3)] for name, runs in cpu.items()}
    for name, (us, rate, batch) in med.items():
        print(f"   {name:<18} {us:>12.1f} {us / med['stock emit()'][0]:>7.2f}x {rate:>9,.0f} {batch:>16,.1f}")
    if coll:
        print("\n3. delivery to the real collector (otaudit serve, embedded PostgreSQL), durability file")
        print(
            f"   {coll['n']:,} events recorded in {coll['record_s']:.2f} s, all committed {coll['total_s']:.2f} s after the first"
        )
        rate = coll["n"] / coll["total_s"]
        print(f"   sustained rate {rate:,.0f} events/s; {coll['stored']:,} rows in events ({WARM} warm-up included), 0 rejected")
    call_ratio = calls["record() file"][0] / stock_wall
    cpu_ratio = med["record() file"][0] / med["stock emit()"][0]
    call_cpu_ratio = calls["record() file"][1] / stock_cpu
    goals = [
        (
            f"record() file <= {GOAL_CALL:g} x stock emit()",
            call_ratio <= GOAL_CALL,
            f"{call_ratio:.2f}x (thread CPU {call_cpu_ratio:.2f}x)",
        ),
        (f"SDK CPU/event <= {GOAL_CPU:g} x stock pipeline", cpu_ratio <= GOAL_CPU, f"{cpu_ratio:.2f}x"),
    ]
    print("\nsummary")
    for text, met, value in goals:
        print(f"   {text:<38} {'PASS' if met else 'MISS'}   {value}")
    print(
        "checks: the same record on both pipelines; the sink received every record sent;",
        "every event stored" if coll else "collector skipped",
    )
    return all(met for _t, met, _v in goals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the caller-side measurement (default 5)")
    parser.add_argument("--records", type=int, default=2000, help="calls per pipeline and round (default 2000)")
    parser.add_argument("--fsync-records", type=int, default=100, help="record() calls per round in fsync mode (default 100)")
    parser.add_argument("--cpu-records", type=int, default=10000, help="events per CPU measurement (default 10000)")
    parser.add_argument("--collector-records", type=int, default=20000, help="events sent to the collector (default 20000)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run (seconds)")
    parser.add_argument("--skip-collector", action="store_true", help="leave out the collector and PostgreSQL")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.records, args.fsync_records, args.cpu_records, args.collector_records = 3, 1000, 20, 2000, 2000
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    workdir = Path(tempfile.mkdtemp(prefix="otaudit-sdk-bench-"))
    sink = None
    try:
        check_same_record()
        sink = Sink()
        queue_size = max(2048, 2 * max(args.records, args.cpu_records))  # the default (2048) drops records once full
        exporter = OTLPLogExporter(endpoint=sink.endpoint, insecure=True)
        provider = stock_provider(BatchLogRecordProcessor(exporter, max_queue_size=queue_size))
        clients = {mode: sdk_client(mode, sink.endpoint, workdir / mode) for mode in ("memory", "file", "fsync")}

        def flusher(client: otaudit_sdk.AuditClient | None) -> Callable[[], None]:
            def flush() -> None:  # raises unless everything was delivered
                if not (client.flush(120) if client else provider.force_flush()):
                    raise BenchmarkError(f"flush failed: {client.status() if client else 'stock pipeline'}")

            return flush

        pipelines: dict[str, Pipeline] = {"stock emit()": (stock_call(provider), flusher(None), args.records)}
        for mode, client in clients.items():
            pipelines[f"record() {mode}"] = (
                sdk_call(client),
                flusher(client),
                args.fsync_records if mode == "fsync" else args.records,
            )
        say("warming up ...")
        for call, flush, _n in pipelines.values():
            for _ in range(WARM):
                call()
            flush()
        say(f"1. caller side: {args.rounds} rounds ...")
        calls = caller_cost(pipelines, args.rounds)
        say(f"2. CPU per event: {args.cpu_records} events per pipeline, 3 times ...")
        cpu: dict[str, list[tuple[float, float, float]]] = {"stock emit()": [], "record() file": [], "record() memory": []}
        for _ in range(3):
            for name, runs in cpu.items():
                runs.append(cpu_per_event(pipelines[name], args.cpu_records, sink))
        sent = sum(WARM + args.rounds * n for _c, _f, n in pipelines.values()) + 3 * len(cpu) * args.cpu_records
        if sink.counts()[0] != sent:
            raise BenchmarkError(f"the sink received {sink.counts()[0]} records in all, {sent} were sent")
        for client in clients.values():
            client.shutdown(5)
        provider.shutdown()
        coll = None if args.skip_collector else collector_rate(args.collector_records, workdir / "collector")
    except BenchmarkError as exc:
        say(f"benchmark FAILED: {exc}")
        return 1
    finally:
        if sink is not None:
            sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    extra = f"buffers on {fs_type(workdir)}; the sink received {sent:,} records; stock max_queue_size {queue_size}"
    met = report(args, calls, cpu, coll, extra)
    return 3 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
