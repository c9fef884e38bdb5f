#!/usr/bin/env python
"""Workers benchmark (issue 16): do events/s grow with ``otaudit serve --workers N``, and where
does the growth stop on this machine?

For each worker count (``--workers-list``, default 1,2,3), one full ``ingest.py`` run: the same
generated workload (same seed), a fresh database on a fresh embedded PostgreSQL, the raw COPY
baseline before and after, ``--clients`` OTLP/gRPC clients (default 8: with fewer connections
than workers, the kernel has nothing to spread), every check of ingest.py (rows stored = rows
sent, gap-free seq, sampled rows identical to the baseline's). The first count is the baseline
of the ratios: events/s of N workers over events/s of the first, measured in the same run.

What it prints per count: events/s, the ratio to the first count and to the raw COPY,
collector CPU (all workers) and PostgreSQL CPU in cores and per event, and the machine's busy
cores: when the machine is saturated (busy cores = its cores) more workers cannot add events/s,
and the split says who has the cores.

    python benchmarks/workers.py [--workers-list 1,2,3] [--records N] [--clients N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import ingest
from _measure import git_commit, say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers-list", default="1,2,3", help="worker counts to compare, the first is the baseline")
    parser.add_argument("--records", type=int, default=100_000, help="records per run (default 100000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent OTLP/gRPC clients (default 8)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line on stdout")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers_list.split(",")]
    runs: list[dict[str, Any]] = []
    for workers in counts:
        say(f"== {workers} worker(s) ==")
        ns = argparse.Namespace(
            records=args.records,
            clients=args.clients,
            warmup=1,
            seed=args.seed,
            collector_config=None,
            json=False,
            py_spy=None,
            strict=False,
            keep=False,
            workers=workers,
        )
        try:
            result = ingest.run(ns)
        except ingest.BenchmarkError as exc:
            say(f"benchmark FAILED with {workers} worker(s): {exc}")
            return 1
        e = result["end_to_end"]
        runs.append(
            {
                "workers": workers,
                "events_per_second": e["events_per_second"],
                "ratio_to_copy": result["ratio"],
                "copy_rows_per_second": result["raw_copy"]["rows_per_second"],
                "collector_cpu_cores": e["collector_cpu_cores"],
                "collector_cpu_us_per_event": e["collector_cpu_us_per_event"],
                "postgres_cpu_us_per_event": e["postgres_cpu_us_per_event"],
                "postgres_cpu_cores": round(e["postgres_cpu_us_per_event"] * e["events_per_second"] / 1e6, 2),
                "client_cpu_cores": round(e["client_cpu_us_per_event"] * e["events_per_second"] / 1e6, 2),
                "machine_busy_cores": e["machine_busy_cores"],
                "latency_ms_p99": e["latency_ms"]["p99"],
            }
        )
    first = runs[0]["events_per_second"]
    for run in runs:
        run["ratio_to_first"] = round(run["events_per_second"] / first, 3)
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"workers benchmark: {args.records} records per run, {args.clients} clients, {cores} cores, commit {git_commit()}",
        "  workers  events/s  x first  x COPY  collector cores (us/event)  postgres cores (us/event)  clients  busy cores",
    ]
    for run in runs:
        lines.append(
            f"  {run['workers']:>7}  {run['events_per_second']:>8,.0f}  {run['ratio_to_first']:>7.2f}  {run['ratio_to_copy']:>6.2f}"
            f"  {run['collector_cpu_cores']:>15.2f} ({run['collector_cpu_us_per_event']:>5.1f})"
            f"  {run['postgres_cpu_cores']:>14.2f} ({run['postgres_cpu_us_per_event']:>5.1f})"
            f"  {run['client_cpu_cores']:>7.2f}  {run['machine_busy_cores']:>10.2f}"
        )
    text = "\n".join(lines)
    if args.json:
        say(text)
        print(json.dumps({"benchmark": "workers", "commit": git_commit(), "cores": cores, "runs": runs}), flush=True)
    else:
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
