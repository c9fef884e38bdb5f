#!/usr/bin/env python
"""Ingest into a store that already holds millions of events, against an empty one (issue 16).

The goal: ingest with 20M events stored runs at least 0.9x the rate on an empty store. The
indexes of the current month's partition and ``event_ids`` (every event's id, for
"nothing twice") grow with the store; this shows what that costs and where.

In one run, on one embedded PostgreSQL: ``query.py``'s data set (``--events``, cached in
``--data-dir``; its tenants are ingest.py's) copied into a scratch database (``CREATE DATABASE
... TEMPLATE``, file copy), and an empty database, both migrated. Then ``--rounds`` pairs of
end-to-end runs, alternating which goes first: ``otaudit serve`` on that database, ``--clients``
OTLP/gRPC clients sending ``--records`` records of ``ingest.py``'s workload (a fresh seed per
run: no run's ids are another's), first send to last acknowledgement (the collector answers
after the commit). The log is off in both (``integrity.enabled: false``): query.py's rows are
not in the log, and a collector with the log on would first append millions of them. Reported
per run: events/s, collector and PostgreSQL CPU per event; per pair the ratio grown/empty; and
the sizes of the indexes that grew. The scratch databases are dropped at the end.

    python benchmarks/ingest_grown.py --data-dir /tmp/qb5m [--events 5000000] [--records 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from _measure import git_commit, say
from ingest import BATCH, BenchmarkError, CollectorProcess, generate, verify_stored
from psycopg.conninfo import make_conninfo
from query import DB_NAME, cached_dataset, load
from stream import ingest

from otaudit_collector.app import ensure_partitions
from otaudit_collector.storage.migrate import apply_migrations

GOAL = 0.9
GROWN, EMPTY = "otaudit_bench_grown", "otaudit_bench_empty"
CONFIG = "integrity:\n  enabled: false\n"


def end_to_end(uri: str, db: str, postmaster_pid: int, workdir: Path, records: int, clients: int, seed: int) -> dict[str, Any]:
    """One collector on ``db``, ``clients`` clients, ``records`` records: rate and CPU per event."""
    n_requests = max(1, -(-records // BATCH))
    workload = generate(n_requests + clients, seed)
    warmup, bodies = workload.requests[:clients], workload.requests[clients:]
    config = workdir / "collector.yaml"
    config.write_text(CONFIG)
    with psycopg.connect(db) as conn:
        (before_rows,) = conn.execute("SELECT count(*) FROM event_ids").fetchone()  # type: ignore[misc]
    collector = CollectorProcess(db, workdir, str(config))
    try:
        run = ingest(collector, bodies, warmup, clients, uri, db, postmaster_pid)  # stream.py's end-to-end run
    finally:
        collector.stop()
    with psycopg.connect(db) as conn:
        (after_rows,) = conn.execute("SELECT count(*) FROM event_ids").fetchone()  # type: ignore[misc]
    if after_rows - before_rows != (len(bodies) + len(warmup)) * BATCH:
        raise BenchmarkError(f"{after_rows - before_rows} events stored, {(len(bodies) + len(warmup)) * BATCH} sent")
    cpu = run.cpu
    return {
        "events_per_second": round(run.rate, 1),
        "collector_cpu_us_per_event": round(cpu.collector / run.events * 1e6, 1),
        "postgres_cpu_us_per_event": round(cpu.postgres / run.events * 1e6, 1),
        "other_cores": round(cpu.others, 2),
        "stored_before": int(before_rows),
    }


def index_sizes(db: str) -> dict[str, int]:
    """Bytes of event_ids and of the current month's partition with its indexes."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
            " WHERE c.relname = 'event_ids' OR c.relname = 'events_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')"
        ).fetchall()
    return {str(name): int(size) for name, size in rows}


def main(argv: list[str] | None = None) -> int:
    import pgserver

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="query.py's --data-dir (its cached data set)")
    parser.add_argument("--events", type=int, default=5_000_000, help="events in the grown store (default 5000000)")
    parser.add_argument("--records", type=int, default=100_000, help="records per end-to-end run (default 100000)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    pgdata = Path(args.data_dir).resolve() / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    postmaster_pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    workdir = Path(tempfile.mkdtemp(prefix="otaudit-bench-grown-"))
    try:
        if cached_dataset(uri, args.events, 1) is None:
            say(f"loading {args.events:,} events (query.py's loader) ...")
            load(uri, make_conninfo(uri, dbname=DB_NAME), args.events, 1, 2)
        say(f"copying the {args.events:,}-event store and making an empty one ...")
        t = time.perf_counter()
        with psycopg.connect(uri, autocommit=True) as conn:
            for name in (GROWN, EMPTY):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{GROWN}" TEMPLATE "{DB_NAME}" STRATEGY FILE_COPY')
            conn.execute(f'CREATE DATABASE "{EMPTY}"')
        dbs = {name: make_conninfo(uri, dbname=name) for name in (GROWN, EMPTY)}
        for db in dbs.values():
            apply_migrations(db)
            ensure_partitions(db, 2)
        say(f"  {time.perf_counter() - t:.0f} s; the grown store's index sizes: {index_sizes(dbs[GROWN])}")
        runs: list[dict[str, Any]] = []
        seed = 100
        for round_ in range(args.rounds):
            order = (EMPTY, GROWN) if round_ % 2 == 0 else (GROWN, EMPTY)
            for name in order:
                seed += 1
                say(f"round {round_ + 1}: {name} ...")
                result = end_to_end(uri, dbs[name], postmaster_pid, workdir, args.records, args.clients, seed)
                result.update(round=round_ + 1, store=name)
                say(f"  {json.dumps(result)}")
                runs.append(result)
        sent_to_empty = sum((max(1, -(-args.records // BATCH)) + args.clients) * BATCH for r in runs if r["store"] == EMPTY)
        problems = verify_stored(dbs[EMPTY], sent_to_empty)["problems"]  # every run's events, seq gap-free
        if problems:
            raise BenchmarkError("; ".join(problems))
        sizes = index_sizes(dbs[GROWN])
    except BenchmarkError as exc:
        say(f"benchmark FAILED: {exc}")
        return 1
    finally:
        with psycopg.connect(uri, autocommit=True) as conn:
            for name in (GROWN, EMPTY):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.cleanup()
    ratios = []
    for round_ in range(1, args.rounds + 1):
        pair = {r["store"]: r for r in runs if r["round"] == round_}
        ratios.append(pair[GROWN]["events_per_second"] / pair[EMPTY]["events_per_second"])
    ratio = statistics.mean(ratios)
    lines = [
        f"ingest into a grown store: {args.events:,} events stored, {args.records} records per run, {args.clients} clients,"
        f" commit {git_commit()}",
        "  round  store   stored before  events/s  collector us/event  postgres us/event  other cores",
    ]
    for r in runs:
        lines.append(
            f"  {r['round']:>5}  {'grown' if r['store'] == GROWN else 'empty':<6}  {r['stored_before']:>13,}"
            f"  {r['events_per_second']:>8,.0f}  {r['collector_cpu_us_per_event']:>18.1f}"
            f"  {r['postgres_cpu_us_per_event']:>17.1f}  {r['other_cores']:>11.2f}"
        )
    lines.append(
        f"  grown/empty events/s: {', '.join(f'{x:.3f}' for x in ratios)} (mean {ratio:.3f}); goal >= {GOAL}:"
        f" {'met' if ratio >= GOAL else 'MISSED'}"
    )
    lines.append(f"  the grown store's sizes after the runs: {sizes}")
    text = "\n".join(lines)
    if args.json:
        say(text)
        print(json.dumps({"benchmark": "ingest_grown", "commit": git_commit(), "runs": runs, "ratio": ratio}))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
