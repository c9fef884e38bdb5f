#!/usr/bin/env python
"""Integrity benchmark: what the tamper-evident log costs at ingest, and how fast it is checked.

Two subcommands, one per part of the issue's goals:

``ingest``
    ``benchmarks/ingest.py`` end to end, alternately with ``integrity: {enabled: false}``
    and ``{enabled: true}`` (off, on, off, on ...), ``--rounds`` pairs: events/s and
    collector CPU per event with the log on against the same build with it off.
    Goal: the log costs at most 10% of each.

``log``
    A tenant of ``--events`` events (5,000,000) in an embedded PostgreSQL, stored exactly
    as the collector stores them (each sealed with ``prepare.document_row``: the same
    stored JSON, seals and leaf hash), its tiles built with ``tiles.append_leaves`` and a
    signed checkpoint; cached in ``--data-dir``. Then:
    (a) ``otaudit verify`` from the database (``verify_tenant``, 2 worker processes):
        goal at least 50,000 events/s;
    (b) ``GET /v1/events/{id}/proof`` of random events on ``otaudit serve``: goal p95
        under 10 ms, beside the same reads in SQL;
    (c) a bundle of the first ``--bundle-events`` (1,000,000) events verified offline
        (``verify_bundle``): goal under a minute.

    python benchmarks/integrity.py ingest [--records N] [--clients 4] [--rounds 2] [--json] [--strict]
    python benchmarks/integrity.py log [--events N] [--bundle-events N] [--proofs N] [--data-dir DIR] [--quick] [--json] [--strict]

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import io
import json
import multiprocessing
import os
import platform
import pstats
import queue
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _measure import ServedCollector, git_commit, postgres_cpu_seconds, proc_cpu_seconds, say
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The goals of the issue.
GOAL_INGEST_RATE = 0.90  # events/s with the log on at least this x with it off
GOAL_INGEST_CPU = 1.10  # collector CPU per event with the log on at most this x with it off
GOAL_VERIFY_RATE = 50_000  # otaudit verify, events/s, at GOAL_VERIFY_AT events
GOAL_VERIFY_AT = 5_000_000
GOAL_PROOF_P95_MS = 10.0  # GET /v1/events/{id}/proof p95, at GOAL_VERIFY_AT events
GOAL_BUNDLE_SECONDS = 60.0  # verify_bundle of GOAL_BUNDLE_AT events
GOAL_BUNDLE_AT = 1_000_000
NOISY_CORES = 0.25  # other processes' CPU during a timed phase above which the report warns

INGEST_RUN = "_ingest-run"  # internal: one ingest.py run with the log-aware row check (see ingest_run)
EXPECT_LOG_ENV = "OTAUDIT_BENCH_EXPECT_LOG"

DB_NAME = "otaudit_bench_integrity"
GENERATOR = 1  # bump when the generated data changes: a cached database of another version is rebuilt
TENANT = "acme"
SPAN_DAYS = 180  # the events' occurred_at spans this many days up to the load (within every plan's window)
LOAD_CHUNK = 10_000  # events per loader task (one COPY transaction)
PEPPER = "otaudit-benchmark-pepper-not-a-secret"


class BenchmarkError(Exception):
    """The run is invalid (a check failed, the collector failed ...)."""


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# =======================================================================================
# ingest: benchmarks/ingest.py with the log off and on
# =======================================================================================


def ingest_run(argv: list[str]) -> int:
    """One ``ingest.py`` run (in this child process), its row check extended to the log.

    ``ingest.compare_samples`` compares sampled rows with the baseline's, but not their
    seals (random salts). Here the run is also checked to be in the mode it is meant to be
    in (``OTAUDIT_BENCH_EXPECT_LOG``): on, every tenant's log caught up with its events and
    the events sealed; off, no leaves, no tiles, no seals.
    """
    sys.path.insert(0, str(HERE))
    import ingest

    from otaudit_collector.core.prepare import EVENT_COLUMNS

    expect = os.environ.get(EXPECT_LOG_ENV, "")
    columns = [c for c in EVENT_COLUMNS if c not in ("received_at", "seals")]

    def compare_samples(collector_db: str, baseline_db: str, n: int = 200) -> list[str]:
        select = f"SELECT {', '.join(columns)} FROM events WHERE id = ANY(%s) ORDER BY tenant, id"
        with psycopg.connect(collector_db) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM events TABLESAMPLE SYSTEM (5) LIMIT %s", (n,)).fetchall()]
            if not ids:
                ids = [r[0] for r in conn.execute("SELECT id FROM events LIMIT %s", (n,)).fetchall()]
            mine = conn.execute(select, (ids,)).fetchall()
            sealed, rows = conn.execute("SELECT count(seals), count(*) FROM events").fetchone()  # type: ignore[misc]
            leaves, events, behind = conn.execute(
                "SELECT coalesce(sum(log_size), 0), coalesce(sum(last_seq), 0), count(*) FILTER (WHERE log_size <> last_seq)"
                " FROM tenant_seq"
            ).fetchone()  # type: ignore[misc]
            tiles = conn.execute("SELECT count(*) FROM log_tiles").fetchone()[0]  # type: ignore[index]
        with psycopg.connect(baseline_db) as conn:
            theirs = conn.execute(select, (ids,)).fetchall()
        problems = []
        if len(mine) != len(ids) or mine != theirs:
            problems.append(
                f"sampled rows differ between the collector's database and the baseline's ({len(mine)} vs {len(theirs)} of {len(ids)})"
            )
        if expect == "on" and (behind or leaves != events or not sealed or not tiles):
            problems.append(
                f"the log should be on: {leaves} leaves for {events} events ({behind} tenant(s) behind),"
                f" {sealed} of {rows} events sealed, {tiles} tiles"
            )
        if expect == "off" and (leaves or sealed or tiles):
            problems.append(f"the log should be off: {leaves} leaves, {sealed} of {rows} events sealed, {tiles} tiles")
        return problems

    ingest.compare_samples = compare_samples
    return int(ingest.main(argv))


def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="otaudit-integrity-ingest-"))
    configs = {}
    for mode, enabled in (("off", "false"), ("on", "true")):
        configs[mode] = workdir / f"log-{mode}.yaml"
        configs[mode].write_text(f"integrity:\n  enabled: {enabled}\n")
    runs: list[dict[str, Any]] = []
    order = ["off", "on"] * args.rounds
    try:
        for i, mode in enumerate(order):
            say(f"run {i + 1}/{len(order)}: log {mode}: ingest.py --records {args.records} --clients {args.clients} ...")
            log_path = workdir / f"run{i + 1}-{mode}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), INGEST_RUN, "--json", "--records", str(args.records)]
            cmd += ["--clients", str(args.clients), "--seed", str(args.seed), "--warmup", str(args.warmup)]
            cmd += ["--collector-config", str(configs[mode])]
            started = time.perf_counter()
            with open(log_path, "w") as err:
                done = subprocess.run(
                    cmd,
                    check=False,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=REPO,
                    env={**os.environ, EXPECT_LOG_ENV: mode},
                )
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            result = json.loads(lines[-1]) if lines else {"error": f"no JSON line (exit {done.returncode})"}
            if "error" in result:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise BenchmarkError(f"run {i + 1} (log {mode}) failed: {result['error']}\n{tail}")
            e = result["end_to_end"]
            runs.append(
                {
                    "log": mode,
                    "events_per_second": e["events_per_second"],
                    "collector_cpu_us_per_event": e["collector_cpu_us_per_event"],
                    "postgres_cpu_us_per_event": e["postgres_cpu_us_per_event"],
                    "writer_backend_cpu_us_per_event": e["writer_backend_cpu_us_per_event"],
                    "latency_ms": e["latency_ms"],
                    "transactions": e["transactions"],
                    "machine_busy_cores": e["machine_busy_cores"],
                    "other_processes_cpu_cores": e["other_processes_cpu_cores"],
                    "raw_copy_rows_per_second": result["raw_copy"]["rows_per_second"],
                    "seconds": e["seconds"],
                    "run_seconds": round(time.perf_counter() - started, 1),
                }
            )
            say(
                f"  {e['events_per_second']:,.0f} events/s, collector {e['collector_cpu_us_per_event']:.1f} us/event,"
                f" PostgreSQL {e['postgres_cpu_us_per_event']} us/event; other processes {e['other_processes_cpu_cores']:.2f} cores"
            )
    finally:
        if args.keep:
            say(f"kept {workdir} (configs and each run's stderr)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    pairs = []
    for off, on in zip(runs[0::2], runs[1::2], strict=True):
        pairs.append(
            {
                "rate_ratio": on["events_per_second"] / off["events_per_second"],
                "cpu_ratio": on["collector_cpu_us_per_event"] / off["collector_cpu_us_per_event"],
            }
        )
    rate_ratio = statistics.mean(p["rate_ratio"] for p in pairs)
    cpu_ratio = statistics.mean(p["cpu_ratio"] for p in pairs)

    def mean_of(mode: str, key: str) -> float:
        values = [r[key] for r in runs if r["log"] == mode and r[key] is not None]  # None: not measured
        return statistics.mean(values) if values else float("nan")

    means = {
        mode: {
            key: round(mean_of(mode, key), 2)
            for key in ("events_per_second", "collector_cpu_us_per_event", "postgres_cpu_us_per_event")
        }
        for mode in ("off", "on")
    }
    return {
        "benchmark": "integrity",
        "subcommand": "ingest",
        "commit": git_commit(),
        "date": now_iso(),
        "machine": machine(),
        "settings": {"records": args.records, "clients": args.clients, "rounds": args.rounds, "seed": args.seed},
        "runs": runs,
        "pairs": [{k: round(v, 4) for k, v in p.items()} for p in pairs],
        "means": means,
        "goals": {
            "events_per_second_on_over_off": {
                "goal": f">= {GOAL_INGEST_RATE}",
                "value": round(rate_ratio, 4),
                "met": rate_ratio >= GOAL_INGEST_RATE,
            },
            "collector_cpu_per_event_on_over_off": {
                "goal": f"<= {GOAL_INGEST_CPU}",
                "value": round(cpu_ratio, 4),
                "met": cpu_ratio <= GOAL_INGEST_CPU,
            },
        },
    }


def report_ingest(r: dict[str, Any]) -> str:
    s, m = r["settings"], r["machine"]
    lines = [
        f"otaudit integrity benchmark: ingest with the log off and on   commit {r['commit']}   {r['date']}"
        f"   {m['nproc']} CPUs   Python {m['python']}",
        f"benchmarks/ingest.py --records {s['records']} --clients {s['clients']} (seed {s['seed']}), alternately with"
        " integrity.enabled false and true, the rest of the configuration the defaults",
        "",
        f"  {'run':<4} {'log':<4} {'events/s':>10} {'collector us/ev':>16} {'PostgreSQL us/ev':>17} {'writer us/ev':>13}"
        f" {'p50 ms':>7} {'p99 ms':>7} {'commits':>8} {'others':>7}",
    ]
    for i, run in enumerate(r["runs"]):
        pg = run["postgres_cpu_us_per_event"]
        wr = run["writer_backend_cpu_us_per_event"]
        lines.append(
            f"  {i + 1:<4} {run['log']:<4} {run['events_per_second']:>10,.0f} {run['collector_cpu_us_per_event']:>16.1f}"
            f" {'n/a' if pg is None else f'{pg:.1f}':>17} {'n/a' if wr is None else f'{wr:.1f}':>13}"
            f" {run['latency_ms']['p50']:>7.0f} {run['latency_ms']['p99']:>7.0f} {run['transactions']:>8}"
            f" {run['other_processes_cpu_cores']:>7.2f}"
        )
    lines.append("")
    for i, pair in enumerate(r["pairs"]):
        lines.append(
            f"  pair {i + 1} (runs {2 * i + 1}, {2 * i + 2}): on/off events/s {pair['rate_ratio']:.3f},"
            f" collector CPU per event {pair['cpu_ratio']:.3f}"
        )
    off, on = r["means"]["off"], r["means"]["on"]
    lines.append(
        f"  mean: off {off['events_per_second']:,.0f} events/s, {off['collector_cpu_us_per_event']:.1f} us/event;"
        f" on {on['events_per_second']:,.0f} events/s, {on['collector_cpu_us_per_event']:.1f} us/event"
    )
    g = r["goals"]
    rate, cpu = g["events_per_second_on_over_off"], g["collector_cpu_per_event_on_over_off"]
    lines += [
        "",
        "goals (the mean of the pairs' ratios)",
        f"  events/s, log on / off >= {GOAL_INGEST_RATE}            {verdict(rate['met']):<7} {rate['value']:.3f}"
        f" ({rate['value'] - 1:+.1%})",
        f"  collector CPU per event, on / off <= {GOAL_INGEST_CPU}  {verdict(cpu['met']):<7} {cpu['value']:.3f}"
        f" ({cpu['value'] - 1:+.1%})",
    ]
    noise = max(run["other_processes_cpu_cores"] for run in r["runs"])
    if noise > NOISY_CORES:
        lines += [
            "",
            f"WARNING: other processes used up to {noise:.2f} cores during a timed run: the ratios are noisy;"
            " run again on a quiet machine, with more --rounds",
        ]
    return "\n".join(lines)


# =======================================================================================
# log: the data set
# =======================================================================================


@dataclass
class Dataset:
    events: int
    seed: int
    start: str
    end: str
    load_seconds: float
    loaded_at: str
    pieces: dict[str, float]

    def meta(self) -> dict[str, Any]:
        return {"generator": GENERATOR, "tenant": TENANT, **self.__dict__}


def cached_dataset(server_uri: str, events: int, seed: int) -> Dataset | None:
    """The data set a previous run built in DB_NAME, when it is this one (the comment on
    the database is written only once a build has completed)."""
    with psycopg.connect(server_uri, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (DB_NAME,)
        ).fetchone()
    if row is None or not row[0]:
        return None
    try:
        meta = json.loads(row[0])
    except ValueError:
        return None
    if meta.get("generator") != GENERATOR or meta.get("events") != events or meta.get("seed") != seed:
        return None
    return Dataset(**{k: v for k, v in meta.items() if k not in ("generator", "tenant")})


class EventMaker:
    """Realistic events of one tenant, the shapes of query.py's: the bundled catalogs' events
    built from their examples, weighted by category; 1,000 actors with emails, names, a client
    address, user agent and session (so that sealing has personal values to commit); targets,
    outcomes with reasons, a source and a trace where the example has one."""

    def __init__(self, seed: int) -> None:
        import query

        templates = query.catalog_templates()
        by_name = {(t["category"], t["event"]): t for t in templates}
        self.slots = [by_name[(row[1], row[2])] for row in query.slot_rows(templates, seed)]
        self.actors = []
        for tenant, _n, _email, actor, client_head in query.actor_rows(seed):
            if tenant == TENANT:
                self.actors.append((json.loads(actor), json.loads(client_head + "}")))
        self.q = query
        self.seed = seed

    def doc(self, g: int, rng: random.Random, occurred_us: int) -> dict[str, Any]:
        q = self.q
        t = self.slots[rng.randrange(len(self.slots))]
        n = int(len(self.actors) * rng.random() ** 3)  # some actors far busier than others
        actor, client = self.actors[n]
        h = hashlib.md5(f"{self.seed}:{g}".encode()).hexdigest()
        ms = f"{occurred_us // 1000:012x}"
        draw = rng.randrange(100)
        outcome = "success" if draw < 94 else "failure" if draw < 98 else "denied"
        doc: dict[str, Any] = {
            "id": f"{ms[:8]}-{ms[8:12]}-7{h[:3]}-8{h[3:6]}-{h[6:18]}",
            "tenant": TENANT,
            "outcome": outcome,
            "occurred_at": iso_us(occurred_us),
            "actor": dict(actor),
            "client": {**client, "session_id": f"sess-{hashlib.md5(f'{n}:{g // 5000}'.encode()).hexdigest()[:12]}"},
            "source": {"service": t["service"], "instance": f"{t['service']}-{q.PODS[g % 3]}", "sequence": g + 1},
        }
        if t["target_type"] is not None:
            tn = rng.randrange(5000)
            doc["target"] = {
                "type": t["target_type"],
                "id": f"{t['target_prefix']}-{tn}",
                "name": f"{q.REGIONS[tn % 6]} {q.WORDS[tn % 8]} {tn}",
            }
        if outcome == "failure":
            doc["reason"] = q.FAILURES[g % 3]
        elif outcome == "denied":
            doc["reason"] = q.DENIALS[g % 2]
        if t["trace"]:
            doc["trace"] = {
                "trace_id": hashlib.md5(f"{g}t".encode()).hexdigest(),
                "span_id": hashlib.md5(f"{g}s".encode()).hexdigest()[:16],
            }
        doc.update(t["rest"])
        return doc


def iso_us(us: int) -> str:
    """As the collector stores times: RFC 3339 UTC with microseconds."""
    seconds, micro = divmod(us, 1_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micro:06d}Z"


# -- the loader's worker processes ---------------------------------------------------------

_loader: dict[str, Any] = {}


def _loader_init(conninfo: str, seed: int, start_us: int, step_us: int, events: int) -> None:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from otaudit_collector.app import catalog_dirs
    from otaudit_collector.config import load_settings
    from otaudit_collector.core.catalog import load_catalogs
    from otaudit_collector.core.prepare import EVENT_COLUMNS, document_row

    _loader.update(
        conn=psycopg.connect(conninfo),
        maker=EventMaker(seed),
        catalogs=load_catalogs(catalog_dirs(load_settings(None, environ={}, overrides={}))),
        document_row=document_row,
        copy_events=f"COPY events (tenant, seq, {', '.join(EVENT_COLUMNS[1:])}) FROM STDIN",
        seed=seed,
        start_us=start_us,
        step_us=step_us,
        events=events,
    )


def _loader_chunk(chunk: int) -> tuple[int, bytes, float]:
    """Make, check, seal and store events [chunk * LOAD_CHUNK, ...): returns (chunk, their leaf
    hashes in seq order, seconds spent making and sealing them)."""
    s = _loader
    maker, catalogs, document_row = s["maker"], s["catalogs"], s["document_row"]
    rng = random.Random(s["seed"] * 1_000_003 + chunk)
    first, stop = chunk * LOAD_CHUNK, min(s["events"], (chunk + 1) * LOAD_CHUNK)
    rows, ids, leaves = [], [], []
    t0 = time.perf_counter()
    for g in range(first, stop):
        occurred = s["start_us"] + g * s["step_us"]
        received = iso_us(occurred + 30_000 + rng.randrange(900_000))
        doc = maker.doc(g, rng, occurred)
        refusal = catalogs.check(doc)
        if refusal is not None:
            raise BenchmarkError(f"generated event {doc['category']}/{doc['event']} is refused: {'; '.join(refusal.problems)}")
        line, problem, leaf = document_row(doc, received, catalogs)
        if line is None:
            raise BenchmarkError(f"generated event {doc['id']} cannot be stored: {problem}")
        rows.append(f"{TENANT}\t{g + 1}\t{line[len(TENANT) + 1 :]}\n")
        ids.append(f"{TENANT}\t{doc['id']}\t{doc['occurred_at']}\n")
        leaves.append(leaf)
    sealed = time.perf_counter() - t0
    conn = s["conn"]
    with conn.cursor() as cur:
        with cur.copy(s["copy_events"]) as copy:
            copy.write("".join(rows).encode())
        with cur.copy("COPY event_ids (tenant, id, occurred_at) FROM STDIN") as copy:
            copy.write("".join(ids).encode())
    conn.commit()
    return chunk, b"".join(leaves), sealed


class Tiles:
    """The tenant's tiles as the writer would leave them, grown with tiles.append_leaves."""

    def __init__(self) -> None:
        from otaudit_verify import tiles

        self.t = tiles
        self.size = 0
        self.right: dict[int, bytes] = {}
        self.stored: dict[tuple[int, int], bytes] = {}

    def append(self, leaves: list[bytes]) -> None:
        self.stored.update(self.t.append_leaves(self.size, self.right, leaves))
        self.size += len(leaves)
        self.right = {level: self.stored[(level, index)] for level, index, _width in self.t.partial_tiles(self.size)}


def run_statements(conninfo: str, statements: list[str], jobs: int) -> None:
    """Run the statements on ``jobs`` connections at once, each taking the next one in turn."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for item in statements:
        todo.put(item)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SET maintenance_work_mem = '512MB'")
                while not errors:
                    try:
                        statement = todo.get_nowait()
                    except queue.Empty:
                        return
                    conn.execute(statement)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(min(jobs, len(statements)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def build(server_uri: str, conninfo: str, events: int, seed: int, jobs: int) -> Dataset:
    """A fresh DB_NAME, migrated, holding ``events`` sealed events of TENANT, its tiles and a
    signed checkpoint; timed piece by piece."""
    from otaudit_collector.app import ensure_partitions
    from otaudit_collector.config import load_settings
    from otaudit_collector.integrity import Witnesses, load_log_keys, make_checkpoints
    from otaudit_collector.storage.access import set_plan
    from otaudit_collector.storage.migrate import apply_migrations

    pieces: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        pieces[name] = round(now - since, 1)
        say(f"   {name}: {now - since:.1f} s")
        return now

    with psycopg.connect(server_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    apply_migrations(conninfo)
    end = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start = end - dt.timedelta(days=SPAN_DAYS)
    start_us = int(start.timestamp()) * 1_000_000
    step_us = max(1, SPAN_DAYS * 86_400 * 1_000_000 // events)
    rebuild: list[tuple[str, str]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        month = start.replace(day=1, hour=0, minute=0, second=0)
        while month <= end:
            conn.execute("SELECT otaudit_ensure_partition(%s)", (month,))
            month = (month + dt.timedelta(days=32)).replace(day=1)
        ensure_partitions(conninfo, 2)
        # The indexes and keys of events and event_ids as the migrations made them: dropped
        # for the load, built again after it (a sort each, rather than millions of inserts).
        for table in ("events", "event_ids"):
            for name, definition in conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
                " AND contype IN ('p', 'u') ORDER BY conname",
                (table,),
            ).fetchall():
                conn.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
                rebuild.append((table, f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}'))
            for name, definition in conn.execute(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = %s::regclass ORDER BY c.relname",
                (table,),
            ).fetchall():
                conn.execute(f'DROP INDEX "{name}"')
                rebuild.append((table, definition.replace(" ON ONLY ", " ON ")))
        partitions = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'events'::regclass ORDER BY 1"
            ).fetchall()
        ]
    t = lap("database, migrations, partitions", started)

    n_chunks = -(-events // LOAD_CHUNK)
    say(
        f"   making, checking (catalogs.check), sealing (prepare.document_row) and COPYing {events:,} events"
        f" in {n_chunks} chunks on {jobs} process(es) ..."
    )
    tree = Tiles()
    sealing = 0.0
    done = 0
    last_said = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs, initializer=_loader_init, initargs=(conninfo, seed, start_us, step_us, events)) as pool:
        for expected, (chunk, leaves, seconds) in enumerate(pool.imap(_loader_chunk, range(n_chunks))):
            if chunk != expected:
                raise BenchmarkError(f"loader chunk {chunk} came back in place of {expected}")
            tree.append([leaves[i : i + 32] for i in range(0, len(leaves), 32)])
            sealing += seconds
            done += len(leaves) // 32
            now = time.perf_counter()
            if now - last_said > 15 or done == events:
                rate = done / (now - t)
                say(
                    f"     {done:,} / {events:,} events ({done / events:.0%}), {rate:,.0f}/s, about {(events - done) / rate / 60:.1f} min left"
                )
                last_said = now
    pieces["sealing_us_per_event_one_process"] = round(sealing / events * 1e6, 1)
    t = lap("events and event_ids, sealed and stored (without indexes)", t)

    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur, cur.copy("COPY log_tiles (tenant, level, idx, hashes) FROM STDIN") as copy:
            for (level, index), data in sorted(tree.stored.items()):
                copy.write_row((TENANT, level, index, data))
        conn.execute("INSERT INTO tenant_seq (tenant, last_seq, log_size) VALUES (%s, %s, %s)", (TENANT, events, tree.size))
        set_plan(conn, TENANT, "enterprise")  # every category readable: the proofs' events are of any category
    t = lap(f"{len(tree.stored):,} tiles, tenant_seq, the tenant's plan", t)

    on_expressions = [d for table, d in rebuild if table == "events" and "((" in d]
    plain = [d for table, d in rebuild if d not in on_expressions]
    run_statements(conninfo, plain, jobs)
    # Indexes on expressions one at a time: two built at once would give their partitions'
    # indexes the same generated name, and one would fail.
    run_statements(conninfo, on_expressions, 1)
    t = lap(f"the {len(rebuild)} indexes and keys of events and event_ids", t)

    run_statements(conninfo, [f'VACUUM (ANALYZE) "{p}"' for p in partitions] + ["VACUUM (ANALYZE) event_ids, log_tiles"], jobs)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE events")
        conn.execute("VACUUM (ANALYZE) tenant_seq, tenants")
        conn.execute("CHECKPOINT")
    t = lap("VACUUM, ANALYZE, CHECKPOINT", t)

    keys = load_log_keys(load_settings(None, environ=os.environ, overrides={}), conninfo)
    signed = make_checkpoints(conninfo, keys, Witnesses())
    if signed != [TENANT]:
        raise BenchmarkError(f"make_checkpoints signed for {signed}, not for {TENANT}: the tiles do not make a tree")
    t = lap("checkpoint signed (make_checkpoints)", t)

    data = Dataset(
        events,
        seed,
        start.isoformat(),
        end.isoformat(),
        round(time.perf_counter() - started, 1),
        now_iso(),
        pieces,
    )
    with psycopg.connect(server_uri, autocommit=True) as conn:
        conn.execute(f'COMMENT ON DATABASE "{DB_NAME}" IS {pgsql.quote(json.dumps(data.meta()))}')
    return data


# =======================================================================================
# log: CPU of a timed phase
# =======================================================================================


@dataclass
class Cpu:
    wall: float
    client: float  # this process and its reaped children (worker processes)
    collector: float
    postgres: float
    busy: float  # the whole machine

    @property
    def others(self) -> float:
        """Cores used by other processes during the window."""
        known = self.client + self.collector + (self.postgres if self.postgres == self.postgres else 0.0)
        return max(0.0, self.busy - known) / self.wall if self.wall > 0 else 0.0

    def figures(self) -> dict[str, float]:
        return {
            "wall_seconds": round(self.wall, 3),
            "this_process_and_workers_cpu_seconds": round(self.client, 2),
            "collector_cpu_seconds": round(self.collector, 2),
            "postgres_cpu_seconds": round(self.postgres, 2),
            "other_processes_cores": round(self.others, 2),
        }


def cpu_bound(cpu: Cpu, events: int) -> dict[str, float]:
    """CPU per event of this process and its workers and of PostgreSQL, and the rate those
    would allow on every core this process may use, were the machine otherwise idle (an
    estimate for a shared machine: it ignores waits and imperfect parallelism)."""
    pg = cpu.postgres if cpu.postgres == cpu.postgres else 0.0
    per_event = (cpu.client + pg) / events
    return {
        "client_cpu_us_per_event": round(cpu.client / events * 1e6, 1),
        "postgres_cpu_us_per_event": round(pg / events * 1e6, 1),
        "cpu_bound_events_per_second": round(len(os.sched_getaffinity(0)) / per_event, 1) if per_event else float("nan"),
    }


class CpuWindow:
    """CPU over a window: this process with its children once reaped (so a worker pool must
    be shut down inside the window), the collector, all of PostgreSQL, the machine."""

    def __init__(self, postmaster_pid: int | None, collector_pid: int | None = None) -> None:
        self.postmaster_pid = postmaster_pid
        self.collector_pid = collector_pid

    def _snap(self) -> tuple[float, ...]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = psutil.cpu_times()
        busy = sum(m) - m.idle - getattr(m, "iowait", 0.0) - getattr(m, "steal", 0.0)
        collector = proc_cpu_seconds(self.collector_pid) if self.collector_pid else 0.0
        return (
            time.perf_counter(),
            me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            collector,
            postgres_cpu_seconds(self.postmaster_pid),
            busy,
        )

    def _backends(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.postmaster_pid).children()} if self.postmaster_pid else set()
        except psutil.Error:
            return set()

    def __enter__(self) -> CpuWindow:
        self.backends = self._backends()
        self.before = self._snap()
        return self

    def __exit__(self, *exc: object) -> None:
        after = list(self._snap())
        # A backend whose connection closed in the window counts once the postmaster has
        # reaped it (its CPU then moves to the postmaster's children times): wait for that.
        deadline = time.monotonic() + 2
        while self._backends() - self.backends and time.monotonic() < deadline:
            time.sleep(0.01)
        after[3] = postgres_cpu_seconds(self.postmaster_pid)
        self.cpu = Cpu(*(a - b for a, b in zip(after, self.before, strict=True)))


# =======================================================================================
# log: (a) otaudit verify
# =======================================================================================


def measure_verify(conninfo: str, trusted: list[Any], workers: int, postmaster_pid: int | None) -> dict[str, Any]:
    from otaudit_collector.verify_command import verify_tenant

    with CpuWindow(postmaster_pid) as window, ProcessPoolExecutor(workers) if workers > 1 else _NoPool() as pool:
        t0 = time.perf_counter()
        report = verify_tenant(conninfo, TENANT, trusted, pool=pool)
        seconds = time.perf_counter() - t0
    if not report.ok:
        raise BenchmarkError("otaudit verify finds the benchmark's log altered:\n  " + "\n  ".join(report.lines()))
    return {
        "workers": workers,
        "events_checked": report.events_checked,
        "tree_size": report.tree_size,
        "checkpoints_checked": report.checkpoints_checked,
        "seconds": round(seconds, 3),
        "events_per_second": round(report.events_checked / seconds, 1),
        "report": report.lines(),
        "cpu": window.cpu.figures(),
        "cpu_bound": cpu_bound(window.cpu, report.events_checked),
    }


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def profile_verify(conninfo: str, size: int) -> dict[str, Any]:
    """Where one chunk's time goes in ``verify_tenant``: the chunk's SQL alone, a cProfile of the
    worker's ``check_chunk`` run in this process, and the calling process's tree building."""
    from otaudit_collector.verify_command import _LEVEL0_SQL, _ROWS_SQL, CHUNK, _check_chunk
    from otaudit_verify import merkle, tiles

    stop = min(size, CHUNK)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _check_chunk(conn, TENANT, 0, min(stop, 2000))  # warm: the connection, the plans
        t0 = time.perf_counter()
        rows = conn.execute(_ROWS_SQL, (TENANT, 0, stop)).fetchall()
        conn.execute(_LEVEL0_SQL, (TENANT, 0, -(-stop // tiles.TILE_WIDTH))).fetchall()
        sql_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        for row in rows:
            json.loads(row[2])
            if row[3]:
                json.loads(row[3])
        parse_seconds = time.perf_counter() - t0
        del rows
        t0 = time.perf_counter()
        _start, leaves, problems, n, _missing = _check_chunk(conn, TENANT, 0, stop)
        plain_seconds = time.perf_counter() - t0
        profiler = cProfile.Profile()
        profiler.enable()
        _check_chunk(conn, TENANT, 0, stop)
        profiler.disable()
    if problems:
        raise BenchmarkError(f"check_chunk finds problems in the benchmark's data: {problems[:3]}")
    builder = merkle.TreeBuilder()
    t0 = time.perf_counter()
    for offset in range(0, len(leaves), merkle.HASH_SIZE):
        builder.append(leaves[offset : offset + merkle.HASH_SIZE])
    tree_seconds = time.perf_counter() - t0
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(14)
    lines = []
    for line in out.getvalue().splitlines():
        if re.match(r"\s*\d", line) or line.strip().startswith("ncalls"):
            lines.append(re.sub(r"/\S*/(site-packages|main)/", "", line.rstrip()))
    return {
        "events": n,
        "check_chunk_us_per_event": round(plain_seconds / n * 1e6, 1),
        "sql_fetch_us_per_event": round(sql_seconds / n * 1e6, 1),
        "json_loads_us_per_event": round(parse_seconds / n * 1e6, 1),
        "tree_builder_us_per_leaf": round(tree_seconds / n * 1e6, 2),
        "profile_total_seconds": round(stats.total_tt, 3),  # type: ignore[attr-defined]
        "profile_top": lines,
    }


# =======================================================================================
# log: (b) inclusion proofs through the API
# =======================================================================================

def start_collector(conninfo: str, workdir: Path) -> ServedCollector:
    """``otaudit serve`` on the benchmark database (``_measure.ServedCollector``)."""
    return ServedCollector(conninfo, workdir, pepper=PEPPER, error=BenchmarkError, ready_seconds=180)


_EVENT_SQL = (
    "SELECT category, occurred_at, seq, doc, seals, to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    " FROM events WHERE tenant = %(tenant)s AND (id, occurred_at) ="
    " (SELECT id, occurred_at FROM event_ids WHERE tenant = %(tenant)s AND id = %(id)s)"
)


def measure_proofs(
    conninfo: str, workdir: Path, events: int, n: int, warmup: int, seed: int, postmaster_pid: int | None
) -> dict[str, Any]:
    import requests

    from otaudit_collector.storage import log as logdb
    from otaudit_collector.storage.access import create_token
    from otaudit_verify import tiles

    rng = random.Random(seed + 7)
    seqs = rng.sample(range(1, events + 1), min(events, n + warmup))
    with psycopg.connect(conninfo) as conn:
        ids = dict(conn.execute("SELECT seq, id FROM events WHERE tenant = %s AND seq = ANY(%s)", (TENANT, seqs)).fetchall())
        token = create_token(conn, tenant=TENANT, role="admin", name="integrity benchmark", pepper=PEPPER)[1]
    if len(ids) != len(seqs):
        raise BenchmarkError(f"{len(seqs) - len(ids)} of the sampled seqs have no event")
    say("   starting `otaudit serve` ...")
    collector = start_collector(conninfo, workdir)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    base = f"http://{collector.host}:{collector.port}"
    try:
        api_ms: list[float] = []
        tiles_ms: list[float] = []
        route_sql_ms: list[float] = []
        sizes: set[int] = set()
        with psycopg.connect(conninfo, autocommit=True) as sql, CpuWindow(postmaster_pid, collector.pid) as window:

            def api(seq: int) -> float:
                t0 = time.perf_counter()
                answer = session.get(f"{base}/v1/events/{ids[seq]}/proof")
                body = answer.content
                ms = (time.perf_counter() - t0) * 1e3
                if answer.status_code != 200:
                    raise BenchmarkError(f"GET /v1/events/{ids[seq]}/proof: {answer.status_code} {body[:300]!r}")
                proof = json.loads(body)
                if proof.get("leaf_index") != seq - 1 or proof.get("verified") is not True:
                    raise BenchmarkError(f"the proof of seq {seq} is not for leaf {seq - 1}: {str(proof)[:300]}")
                sizes.add(int(proof["tree_size"]))
                return ms

            checkpoint = logdb.latest_checkpoint(sql, TENANT)
            if checkpoint is None:
                raise BenchmarkError("the tenant has no checkpoint")

            def tile_read(seq: int) -> float:
                wanted = tiles.tiles_for_proof(seq - 1, checkpoint.size)
                params = logdb.tiles_params(TENANT, wanted)
                t0 = time.perf_counter()
                sql.execute(logdb.TILES_SQL, params).fetchall()
                return (time.perf_counter() - t0) * 1e3

            def route_sql(seq: int) -> float:
                wanted = tiles.tiles_for_proof(seq - 1, checkpoint.size)
                params = logdb.tiles_params(TENANT, wanted)
                t0 = time.perf_counter()
                sql.execute(_EVENT_SQL, {"tenant": TENANT, "id": ids[seq]}).fetchall()
                sql.execute(logdb.LATEST_CHECKPOINT_SQL, (TENANT,)).fetchall()
                sql.execute(logdb.TILES_SQL, params).fetchall()
                return (time.perf_counter() - t0) * 1e3

            for seq in seqs[:warmup]:
                api(seq)
                tile_read(seq)
                route_sql(seq)
            for i, seq in enumerate(seqs[warmup:]):
                # Interleaved, each side first in turn, so that noise hits all alike.
                sides = [api, tile_read, route_sql]
                shift = i % 3
                results = {f: f(seq) for f in sides[shift:] + sides[:shift]}
                api_ms.append(results[api])
                tiles_ms.append(results[tile_read])
                route_sql_ms.append(results[route_sql])

            # Where the API's time goes, in pieces (not part of the goal).
            def get(path: str) -> float:
                t0 = time.perf_counter()
                answer = session.get(base + path)
                answer.content  # noqa: B018 - read the body
                if answer.status_code != 200:
                    raise BenchmarkError(f"GET {path}: {answer.status_code} {answer.content[:300]!r}")
                return (time.perf_counter() - t0) * 1e3

            pieces_n = min(100, max(10, n))
            healthz_ms = [get("/healthz") for _ in range(pieces_n)]
            checkpoint_ms = [get("/v1/log/checkpoint") for _ in range(pieces_n)]
            compute_ms = route_compute(sql, seqs[warmup:], checkpoint)
    finally:
        session.close()
        collector.stop()

    def figures(values: list[float]) -> dict[str, float]:
        return {f"p{p}_ms": round(percentile(values, p), 3) for p in (50, 95, 99)} | {"max_ms": round(max(values), 3)}

    return {
        "proofs": len(api_ms),
        "warmup": warmup,
        "tree_sizes": sorted(sizes),
        "api": figures(api_ms),
        "sql_tile_read": figures(tiles_ms),
        "sql_route_queries": figures(route_sql_ms),
        "pieces": {
            "healthz": figures(healthz_ms),
            "log_checkpoint": figures(checkpoint_ms),
            "route_compute": figures(compute_ms),
        },
        "cpu": window.cpu.figures(),
    }


def route_compute(conn: psycopg.Connection[Any], seqs: list[int], checkpoint: Any) -> list[float]:
    """ms of the proof route's own computing per event, in this process, its inputs read
    beforehand: the leaf entry and hash, which tiles, the proof, its check, the tlog-proof text."""
    from otaudit_collector.storage import log as logdb
    from otaudit_verify import merkle, tiles
    from otaudit_verify.checkpoint import TlogProof
    from otaudit_verify.entry import leaf_entry

    rows = conn.execute(
        "SELECT seq, doc, seals, to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        " FROM events WHERE tenant = %s AND seq = ANY(%s)",
        (TENANT, seqs),
    ).fetchall()
    size = checkpoint.size
    out = []
    for seq, doc, seals, received in rows:
        index = seq - 1
        stored = logdb.read_tiles(conn, TENANT, list(tiles.tiles_for_proof(index, size)))
        t0 = time.perf_counter()
        entry = leaf_entry(doc, received, seals or {})
        leaf = merkle.leaf_hash(entry)
        tiles.tiles_for_proof(index, size)
        proof = merkle.inclusion_proof(index, size, logdb.hash_reader_for(stored, size))
        merkle.verify_inclusion(leaf, index, size, proof, checkpoint.root)
        TlogProof(index, tuple(proof), checkpoint.note, extra=entry).text()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# =======================================================================================
# log: (c) a bundle verified offline
# =======================================================================================


def measure_bundle(conninfo: str, workdir: Path, n: int, vkey: str, postmaster_pid: int | None) -> dict[str, Any]:
    from otaudit_collector.core.query import parse_filters, where_sql
    from otaudit_collector.storage.bundles import write_tenant_bundle
    from otaudit_verify.bundle import _default_workers, verify_bundle

    where, params = where_sql(TENANT, None, parse_filters({}))
    where += " AND seq <= %s"
    params = [*params, n]
    path = workdir / "bundle.zip"
    say(f"   writing the bundle of seq 1..{n:,} (write_tenant_bundle) ...")
    with CpuWindow(postmaster_pid) as writing, open(path, "wb") as out:
        t0 = time.perf_counter()
        written = write_tenant_bundle(conninfo, TENANT, where, params, out, {})
        write_seconds = time.perf_counter() - t0
    size = path.stat().st_size
    say(f"     {written:,} events in {write_seconds:.1f} s, {size / 1e6:.1f} MB; verify_bundle ...")
    with CpuWindow(postmaster_pid) as verifying:
        t0 = time.perf_counter()
        report = verify_bundle(path, trusted_keys=[vkey])
        seconds = time.perf_counter() - t0
    path.unlink()
    if report.events != written or written != n or not report.key_pinned:
        raise BenchmarkError(
            f"the bundle verified {report.events} events of {written} written ({n} asked), pinned {report.key_pinned}"
        )
    return {
        "events": written,
        "bytes": size,
        "write_seconds": round(write_seconds, 2),
        "write_cpu": writing.cpu.figures(),
        "verify_seconds": round(seconds, 3),
        "verify_events_per_second": round(written / seconds, 1),
        "verify_workers": _default_workers() if written >= 20_000 else 1,
        "verify_cpu": verifying.cpu.figures(),
        "verify_cpu_bound": cpu_bound(verifying.cpu, written),
        "summary": report.summary().splitlines(),
    }


# =======================================================================================
# log: the run
# =======================================================================================


def run_log(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    from otaudit_collector.config import load_settings
    from otaudit_collector.integrity import load_log_keys
    from otaudit_collector.storage import log as logdb
    from otaudit_collector.storage.migrate import apply_migrations

    if args.bundle_events > args.events:
        raise BenchmarkError(f"--bundle-events {args.bundle_events:,} is more than --events {args.events:,}")
    workdir = Path(tempfile.mkdtemp(prefix="otaudit-integrity-log-"))
    server = None
    result: dict[str, Any] = {
        "benchmark": "integrity",
        "subcommand": "log",
        "commit": git_commit(),
        "date": now_iso(),
        "machine": machine(),
        "settings": {
            k: getattr(args, k)
            for k in ("events", "bundle_events", "proofs", "proof_warmup", "verify_workers", "seed", "quick", "data_dir")
        },
    }
    try:
        pgdata = Path(args.data_dir).resolve() / "postgres" if args.data_dir else workdir / "pg"
        pgdata.mkdir(parents=True, exist_ok=True)
        say(f"starting the embedded PostgreSQL in {pgdata} ...")
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        server_uri = server.get_uri()
        postmaster_pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        conninfo = make_conninfo(server_uri, dbname=DB_NAME)
        with psycopg.connect(server_uri, autocommit=True) as conn:
            result["machine"]["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            result["machine"]["postgres_settings"] = dict(
                conn.execute(
                    "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', 'jit')"
                ).fetchall()
            )

        data = None if args.reload else cached_dataset(server_uri, args.events, args.seed)
        if data is not None:
            say(f"reusing the {data.events:,} events built on {data.loaded_at} (--reload to build again)")
            apply_migrations(conninfo)  # as `otaudit serve` would: a migration added since applies to the cached data
            reused = True
        else:
            say(f"building {args.events:,} sealed events of tenant {TENANT} in {DB_NAME} ...")
            data = build(server_uri, conninfo, args.events, args.seed, args.load_jobs)
            say(f"   built in {data.load_seconds:.0f} s")
            reused = False
        with psycopg.connect(conninfo) as conn:
            state = logdb.log_state(conn, TENANT)
            checkpoint = logdb.latest_checkpoint(conn, TENANT)
            db_bytes = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
            tiles_count = int(conn.execute("SELECT count(*) FROM log_tiles WHERE tenant = %s", (TENANT,)).fetchone()[0])  # type: ignore[index]
        if checkpoint is None or state.size < args.events or state.size != state.last_seq:
            raise BenchmarkError(
                f"the data set is not a caught-up log of {args.events:,} events: {state}, checkpoint {checkpoint}"
            )
        keys = load_log_keys(load_settings(None, environ=os.environ, overrides={}), conninfo)
        result["data"] = {
            **data.meta(),
            "reused": reused,
            "tree_size": state.size,
            "tiles": tiles_count,
            "checkpoint_size": checkpoint.size,
            "database_bytes": db_bytes,
            "key": checkpoint.key,
        }

        say(f"(a) otaudit verify from the database: verify_tenant with {args.verify_workers} worker process(es) ...")
        result["verify"] = measure_verify(conninfo, keys.verifiers(TENANT), args.verify_workers, postmaster_pid)
        v = result["verify"]
        say(f"     {v['events_checked']:,} events in {v['seconds']:.1f} s: {v['events_per_second']:,.0f} events/s")
        if args.profile:
            say("    profiling one chunk of check_chunk in this process (cProfile) ...")
            result["verify"]["profile"] = profile_verify(conninfo, state.size)

        say(f"(c) a bundle of the first {args.bundle_events:,} events, verified offline ...")
        result["bundle"] = measure_bundle(conninfo, workdir, args.bundle_events, checkpoint.key, postmaster_pid)
        b = result["bundle"]
        say(f"     verified in {b['verify_seconds']:.1f} s ({b['verify_events_per_second']:,.0f} events/s)")

        # Last: the collector's own audit events (an API session) add leaves to the tenant's log.
        say(f"(b) GET /v1/events/{{id}}/proof: {args.proofs} random events (+{args.proof_warmup} warm-up) ...")
        result["proofs"] = measure_proofs(
            conninfo, workdir, args.events, args.proofs, args.proof_warmup, args.seed, postmaster_pid
        )
        p = result["proofs"]["api"]
        say(f"     p50 {p['p50_ms']:.2f} ms, p95 {p['p95_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms")
    finally:
        if server is not None:
            server.cleanup()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    v, p, b = result["verify"], result["proofs"], result["bundle"]
    at_scale_verify = v["events_checked"] >= GOAL_VERIFY_AT
    at_scale_bundle = b["events"] >= GOAL_BUNDLE_AT
    result["goals"] = {
        "verify_events_per_second": {
            "goal": f">= {GOAL_VERIFY_RATE} at {GOAL_VERIFY_AT} events",
            "value": v["events_per_second"],
            "met": v["events_per_second"] >= GOAL_VERIFY_RATE,
            "at_goal_scale": at_scale_verify,
        },
        "proof_p95_ms": {
            "goal": f"< {GOAL_PROOF_P95_MS} at {GOAL_VERIFY_AT} events",
            "value": p["api"]["p95_ms"],
            "met": p["api"]["p95_ms"] < GOAL_PROOF_P95_MS,
            "at_goal_scale": at_scale_verify,
        },
        "bundle_verify_seconds": {
            "goal": f"< {GOAL_BUNDLE_SECONDS} for {GOAL_BUNDLE_AT} events",
            "value": b["verify_seconds"],
            "projected_at_goal_scale": round(GOAL_BUNDLE_AT / b["verify_events_per_second"], 1),
            "met": (b["verify_seconds"] if at_scale_bundle else GOAL_BUNDLE_AT / b["verify_events_per_second"])
            < GOAL_BUNDLE_SECONDS,
            "at_goal_scale": at_scale_bundle,
        },
    }
    return result


def report_log(r: dict[str, Any]) -> str:
    m, d, v, p, b, g = r["machine"], r["data"], r["verify"], r["proofs"], r["bundle"], r["goals"]
    built = (
        f"reused (built {d['loaded_at']} in {d['load_seconds']:.0f} s)" if d["reused"] else f"built in {d['load_seconds']:.0f} s"
    )
    lines = [
        f"otaudit integrity benchmark: the log at scale   commit {r['commit']}   {r['date']}   {m['nproc']} CPUs"
        f"   Python {m['python']}   PostgreSQL {m.get('postgresql')} (shared_buffers {m['postgres_settings'].get('shared_buffers')})",
        f"data: {d['events']:,} events of tenant {d['tenant']} ({d['start'][:10]} .. {d['end'][:10]}), each sealed as the"
        f" collector seals it (prepare.document_row); tree of {d['tree_size']:,} leaves in {d['tiles']:,} tiles, checkpoint at"
        f" {d['checkpoint_size']:,}; database {d['database_bytes'] / 2**30:.2f} GiB; {built}",
    ]
    if not d["reused"]:
        lines.append("build: " + "; ".join(f"{k} {v_}" for k, v_ in d["pieces"].items()))

    def cpu_text(c: dict[str, float]) -> str:
        return (
            f"CPU s: this process + its workers {c['this_process_and_workers_cpu_seconds']:.1f},"
            f" collector {c['collector_cpu_seconds']:.1f}, PostgreSQL {c['postgres_cpu_seconds']:.1f};"
            f" other processes {c['other_processes_cores']:.2f} cores"
        )

    def bound_text(c: dict[str, float]) -> str:
        return (
            f"CPU per event: {c['client_cpu_us_per_event']:.1f} us (this process + workers) + {c['postgres_cpu_us_per_event']:.1f} us"
            f" (PostgreSQL); with all {m['affinity']} cores to itself, at most ~{c['cpu_bound_events_per_second']:,.0f} events/s"
        )

    def scale(goal: dict[str, Any], n: int) -> str:
        return "" if goal["at_goal_scale"] else f"  (at {n:,} events, not the goal's scale)"

    gv = g["verify_events_per_second"]
    lines += [
        "",
        f"(a) otaudit verify from the database (verify_command.verify_tenant, ProcessPoolExecutor of {v['workers']})",
        f"    {v['events_checked']:,} events recomputed, {v['checkpoints_checked']} checkpoint(s) checked in {v['seconds']:.1f} s:"
        f" {v['events_per_second']:,.0f} events/s",
        f"    goal >= {GOAL_VERIFY_RATE:,}/s: {verdict(gv['met'])} ({v['events_per_second'] / GOAL_VERIFY_RATE:.2f}x the goal)"
        + scale(gv, v["events_checked"]),
        f"    {cpu_text(v['cpu'])}",
        f"    {bound_text(v['cpu_bound'])}",
    ]
    prof = v.get("profile")
    if prof:
        lines += [
            f"    one chunk of {prof['events']:,} events in this process: check_chunk {prof['check_chunk_us_per_event']:.1f} us/event"
            f" (its SQL fetch alone {prof['sql_fetch_us_per_event']:.1f}, json.loads of doc and seals"
            f" {prof['json_loads_us_per_event']:.1f}); the caller's TreeBuilder {prof['tree_builder_us_per_leaf']:.2f} us/leaf",
            f"    cProfile of check_chunk ({prof['profile_total_seconds']:.2f} s under the profiler), by own time:",
            *("      " + line for line in prof["profile_top"]),
        ]
    gp = g["proof_p95_ms"]
    a, t, s = p["api"], p["sql_tile_read"], p["sql_route_queries"]
    tiles_label, route_label = "SQL: the proof's tiles (TILES_SQL)", "SQL: the route's 3 queries (event, ckpt, tiles)"
    lines += [
        "",
        f"(b) GET /v1/events/{{id}}/proof: {p['proofs']} random events (+{p['warmup']} warm-up), one keep-alive requests.Session;"
        f" tree size(s) {', '.join(f'{x:,}' for x in p['tree_sizes'])}",
        f"    {'':<46} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}",
        f"    {'API':<46} {a['p50_ms']:>6.2f}ms {a['p95_ms']:>6.2f}ms {a['p99_ms']:>6.2f}ms {a['max_ms']:>6.1f}ms",
        f"    {tiles_label:<46} {t['p50_ms']:>6.2f}ms {t['p95_ms']:>6.2f}ms {t['p99_ms']:>6.2f}ms {t['max_ms']:>6.1f}ms",
        f"    {route_label:<46} {s['p50_ms']:>6.2f}ms {s['p95_ms']:>6.2f}ms {s['p99_ms']:>6.2f}ms {s['max_ms']:>6.1f}ms",
        *(
            f"    {label:<46} {x['p50_ms']:>6.2f}ms {x['p95_ms']:>6.2f}ms {x['p99_ms']:>6.2f}ms {x['max_ms']:>6.1f}ms"
            for label, x in (
                ("pieces: API GET /healthz (HTTP floor)", p["pieces"]["healthz"]),
                ("  API GET /v1/log/checkpoint (auth, 1 query)", p["pieces"]["log_checkpoint"]),
                ("  the route's computing, in-process", p["pieces"]["route_compute"]),
            )
        ),
        f"    goal p95 < {GOAL_PROOF_P95_MS:g} ms: {verdict(gp['met'])}" + scale(gp, d["tree_size"]),
        f"    {cpu_text(p['cpu'])}",
    ]
    gb = g["bundle_verify_seconds"]
    lines += [
        "",
        f"(c) bundle of seq 1..{b['events']:,} (storage.bundles.write_tenant_bundle): {b['bytes'] / 1e6:.1f} MB,"
        f" written in {b['write_seconds']:.1f} s",
        f"    verify_bundle offline, key pinned, {b['verify_workers']} worker(s): {b['verify_seconds']:.1f} s,"
        f" {b['verify_events_per_second']:,.0f} events/s",
        f"    goal < {GOAL_BUNDLE_SECONDS:g} s for {GOAL_BUNDLE_AT:,} events: {verdict(gb['met'])}"
        + ("" if gb["at_goal_scale"] else f" (projected {gb['projected_at_goal_scale']:.1f} s at {GOAL_BUNDLE_AT:,}, linearly)"),
        f"    writing: {cpu_text(b['write_cpu'])}",
        f"    verifying: {cpu_text(b['verify_cpu'])}",
        f"    {bound_text(b['verify_cpu_bound'])}"
        f" = {GOAL_BUNDLE_AT / b['verify_cpu_bound']['cpu_bound_events_per_second']:.0f} s for {GOAL_BUNDLE_AT:,}",
        "",
        "summary",
        f"    otaudit verify >= {GOAL_VERIFY_RATE:,} events/s          {verdict(gv['met']):<7} {v['events_per_second']:,.0f}/s"
        + scale(gv, v["events_checked"]),
        f"    inclusion proof p95 < {GOAL_PROOF_P95_MS:g} ms             {verdict(gp['met']):<7} {a['p95_ms']:.2f} ms"
        + scale(gp, d["tree_size"]),
        f"    bundle of {GOAL_BUNDLE_AT:,} verifies < {GOAL_BUNDLE_SECONDS:g} s     {verdict(gb['met']):<7} {b['verify_seconds']:.1f} s"
        + ("" if gb["at_goal_scale"] else f" for {b['events']:,} (projected {gb['projected_at_goal_scale']:.1f} s)"),
    ]
    noise = max(v["cpu"]["other_processes_cores"], p["cpu"]["other_processes_cores"], b["verify_cpu"]["other_processes_cores"])
    if noise > NOISY_CORES:
        lines += ["", f"WARNING: other processes used up to {noise:.2f} cores during a timed phase: the figures are depressed"]
    return "\n".join(lines)


# =======================================================================================


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [INGEST_RUN]:
        return ingest_run(argv[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ing = commands.add_parser("ingest", help="ingest.py with the log off and on, alternately")
    ing.add_argument("--records", type=int, default=200_000, help="records per run (default 200,000)")
    ing.add_argument("--clients", type=int, default=4, help="OTLP/gRPC clients (default 4)")
    ing.add_argument("--rounds", type=int, default=2, help="pairs of runs, off then on (default 2)")
    ing.add_argument("--warmup", type=int, default=1, help="untimed warm-up requests per client (default 1)")
    ing.add_argument("--seed", type=int, default=1, help="seed of the workload (default 1)")
    ing.add_argument("--keep", action="store_true", help="keep the configs and each run's stderr")

    lg = commands.add_parser("log", help="verify, inclusion proofs and a bundle on a large sealed data set")
    lg.add_argument("--events", type=int, default=5_000_000, help="events of the tenant (default 5,000,000)")
    lg.add_argument("--bundle-events", type=int, default=1_000_000, help="events in the bundle (default 1,000,000)")
    lg.add_argument("--proofs", type=int, default=300, help="timed inclusion proofs (default 300)")
    lg.add_argument("--proof-warmup", type=int, default=30, help="untimed proofs first (default 30)")
    lg.add_argument("--verify-workers", type=int, default=2, help="verify_tenant's worker processes (default 2)")
    lg.add_argument("--seed", type=int, default=1, help="seed of the generated data (default 1)")
    lg.add_argument("--data-dir", help="keep the embedded PostgreSQL here and reuse a build with the same --events and --seed")
    lg.add_argument("--reload", action="store_true", help="build the data again even when a matching build is cached")
    lg.add_argument(
        "--load-jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes sealing and storing (default 2)"
    )
    lg.add_argument("--profile", action="store_true", help="also profile one chunk of verify's check_chunk (cProfile)")
    lg.add_argument("--quick", action="store_true", help="smaller defaults: 100,000 events, a bundle of 100,000")
    lg.add_argument("--keep", action="store_true", help="keep the temporary directory (collector.log)")
    for sub in (ing, lg):
        sub.add_argument("--json", action="store_true", help="print one JSON line on stdout (the readable report goes to stderr)")
        sub.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    if argv[:1] == ["log"] and "--quick" in argv:  # smaller defaults; options given still win
        lg.set_defaults(events=100_000, bundle_events=100_000)
    args = parser.parse_args(argv)
    if args.command == "ingest" and (args.records < 1 or args.clients < 1 or args.rounds < 1):
        parser.error("--records, --clients and --rounds must be positive")
    try:
        result = run_ingest(args) if args.command == "ingest" else run_log(args)
    except BenchmarkError as exc:
        say(f"benchmark FAILED: {exc}")
        if args.json:
            print(json.dumps({"benchmark": "integrity", "subcommand": args.command, "error": str(exc), "commit": git_commit()}))
        return 1
    text = report_ingest(result) if args.command == "ingest" else report_log(result)
    if args.json:
        say(text)
        print(json.dumps(result, separators=(",", ":"), default=str), flush=True)
    else:
        print(text, flush=True)
    if args.strict and not all(goal["met"] for goal in result["goals"].values()):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
