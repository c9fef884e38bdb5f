#!/usr/bin/env python
"""Read-path benchmark: the admin API's event pages and CSV export against the same SQL.

Loads realistic audit events straight into storage with SQL (generate_series; 3 tenants on
three plans, 13 months, 1,000 actors, the events of the bundled catalogs built from their
examples), starts ``otaudit serve`` on that database and measures, beside the identical SQL
run directly on PostgreSQL in the same run:

1. the p50/p95 latency of ``GET /v1/events`` with tenant + category + time filters, for
   the first page and for a deep page reached by following the cursor (goal: within 1.5x
   of the direct SQL, ``core.query.page_sql`` through psycopg), and the first pages of
   the filters admins use (a target name, equal and as a prefix, a details key, an object's
   history matching its target or related objects) on values the data holds;
2. the rows per second of ``GET /v1/export?format=csv`` read to the end by a client,
   against the export's own ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` read
   through psycopg (goal: at least 0.7 of it), and the same COPY of the raw columns;
3. the collector's peak RSS while exporting a small and a large result.

    python benchmarks/query.py [--events N] [--quick] [--data-dir DIR] [--json] [--strict]

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import itertools
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _measure import ServedCollector, git_commit, postgres_cpu_seconds, say, self_cpu_seconds, tree_cpu_seconds
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from otaudit_collector.app import catalog_dirs, ensure_partitions
from otaudit_collector.config import load_settings
from otaudit_collector.core.catalog import load_catalogs
from otaudit_collector.core.export import FORMATS, copy_sql, csv_header
from otaudit_collector.core.query import page_sql as core_page_sql
from otaudit_collector.core.query import parse_filters, where_sql
from otaudit_collector.storage.access import authenticate_async, create_token, set_plan
from otaudit_collector.storage.exports import stream_export
from otaudit_collector.storage.migrate import apply_migrations

REPO = Path(__file__).resolve().parents[1]
DB_NAME = "otaudit_bench_query"
GENERATOR = 1  # bump when the generated data changes: a cached database of another version is reloaded
PEPPER = "otaudit-benchmark-pepper-not-a-secret"
GOAL_LATENCY = 1.5  # API p50 and p95 at most this x the direct SQL's
GOAL_VIEWER = 1.05  # a page through a viewer token against the same page through an admin token (issue 15)
GOAL_EXPORT = 0.7  # API export rows/s at least this x the COPY's
NOISY_CORES = 0.25  # other processes' CPU during a timed phase above which the report warns

# (tenant, plan, share of the events out of 10): one big tenant, one medium, one small.
TENANTS = (("acme", "enterprise", 6), ("globex", "pro", 3), ("initech", "basic", 1))
MONTHS = 13
ACTORS = 1000
LATENCY_CATEGORY = "accounts_configuration"
CATEGORY_WEIGHTS = {
    "site_access": 30,
    "accounts_configuration": 20,
    "inventory_configuration": 25,
    "discovery_configuration": 20,
    "data_extraction": 5,
}
SLOTS = 4096  # the weighted draw of (category, event): one slot per 1/4096 of the events

FIRST = ["Ann", "Bob", "Chen", "Dana", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jules", "Kofi", "Lena", "Mateo"]
FIRST += ["Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomoko", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
LAST = ["Example", "Schmidt", "Okafor", "Nguyen", "Kowalski", "Garcia", "Haddad", "Ivanova", "Johansson", "Kim"]
LAST += ["Larsen", "Moreau", "Novak", "O'Brien", "Patel", "Rossi", "Santos", "Tanaka", "Weber", "Zhang"]
ROLES = ["admin", "auditor", "operator", "viewer", "asset-manager", "security-analyst", "helpdesk", "billing"]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "otaudit-cli/1.4.2 (linux; amd64)",
    "python-requests/2.32.3",
]
REGIONS = ["EMEA", "APAC", "AMER", "LATAM", "Nordics", "DACH"]
WORDS = ["servers", "laptops", "databases", "printers", "routers", "kiosks", "build agents", "VPN gateways"]
PODS = ["7d9f8-x2k4q", "7d9f8-m3n8z", "5c6b4-p9q2w"]
FAILURES = ["validation failed: name already in use", "upstream timeout", "conflict: object was modified"]
DENIALS = ["missing permission users:write", "outside the actor's scope"]


class BenchmarkError(Exception):
    """The run is invalid (a check failed, the collector failed ...)."""


# ---------------------------------------------------------------------------------------
# The data: realistic events, generated inside PostgreSQL
# ---------------------------------------------------------------------------------------


def catalog_templates() -> list[dict[str, Any]]:
    """One template per event of the bundled catalogs, from the event's first example: the
    parts that are kept (category, event, changes, details, message ...) and what the
    generator varies per row (the target's type and id prefix, the source service, a trace)."""
    settings = load_settings(None, environ={}, overrides={})
    out = []
    for folder in catalog_dirs(settings):
        for path in sorted(folder.glob("*.json")):
            catalog = json.loads(path.read_text())
            if "events" not in catalog or "category" not in catalog:
                continue
            for name, spec in catalog["events"].items():
                example = (spec.get("examples") or [None])[0]
                if example is None:
                    continue
                target = example.get("target") or {}
                tid = str(target.get("id", ""))
                rest = {
                    k: v
                    for k, v in example.items()
                    if k
                    not in ("id", "tenant", "occurred_at", "outcome", "reason", "actor", "client", "target", "source", "trace")
                }
                out.append(
                    {
                        "category": catalog["category"],
                        "event": name,
                        "target_type": target.get("type"),
                        "target_prefix": tid.rsplit("-", 1)[0] if "-" in tid else (target.get("type") or "x")[:2],
                        "service": (example.get("source") or {}).get("service") or f"{catalog['category'].split('_')[0]}-api",
                        "trace": "trace" in example,
                        "rest": rest,
                    }
                )
    return out


def event_weight(name: str) -> int:
    if name.startswith("update"):
        return 4
    if name.startswith(("create", "add", "trigger", "scan")):
        return 2
    return 1


def slot_rows(templates: list[dict[str, Any]], seed: int) -> list[tuple[Any, ...]]:
    """SLOTS rows drawn by weight: the categories by CATEGORY_WEIGHTS, their events by event_weight."""
    rng = random.Random(seed)
    per_category: dict[str, int] = {}
    for t in templates:
        per_category[t["category"]] = per_category.get(t["category"], 0) + event_weight(t["event"])
    weights = [CATEGORY_WEIGHTS.get(t["category"], 5) * event_weight(t["event"]) / per_category[t["category"]] for t in templates]
    drawn = rng.choices(templates, weights=weights, k=SLOTS)
    return [
        (
            i,
            t["category"],
            t["event"],
            t["target_type"],
            t["target_prefix"],
            t["service"],
            t["trace"],
            "," + json.dumps(t["rest"])[1:-1],
        )
        for i, t in enumerate(drawn)
    ]


def actor_rows(seed: int) -> list[tuple[Any, ...]]:
    """u-0 .. u-999 in each tenant: actor document, email, and where they work from."""
    rng = random.Random(seed + 1)
    rows = []
    for tenant, _plan, _share in TENANTS:
        for n in range(ACTORS):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            email = f"{first.lower()}.{last.lower().replace(chr(39), '')}{n}@{tenant}.example"
            actor = {
                "type": "user",
                "id": f"u-{n}",
                "email": email,
                "name": f"{first} {last}",
                "roles": rng.sample(ROLES, rng.randint(1, 3)),
            }
            if rng.random() < 0.1:
                address = f"2001:db8:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
            else:
                address = f"{rng.choice(['203.0.113', '198.51.100', '192.0.2', '10.20.30'])}.{rng.randint(1, 254)}"
            client = {"address": address, "user_agent": rng.choice(USER_AGENTS)}
            rows.append((tenant, n, email, json.dumps(actor), json.dumps(client)[:-1]))  # the client without its closing brace
    return rows


# Every row's values come from hashes of its number g, so a load is reproducible and can
# be split in ranges over several connections. The tenant follows g % 10 (6:3:1), which
# makes each tenant's seq a closed form: gap-free and in time order, as commits give it.
LOAD_SQL = """
INSERT INTO events (tenant, seq, id, occurred_at, received_at, category, event, outcome,
                    actor_type, actor_id, actor_email, target_type, target_id, doc)
SELECT r.tenant, r.seq, r.id, r.t, r.t + r.delay, s.category, s.event, r.outcome,
       'user', 'u-' || r.actor_n, a.email, s.target_type,
       CASE WHEN s.target_type IS NOT NULL THEN s.target_prefix || '-' || r.target_n END,
       -- The document as JSON text, parsed once: a third of the cost of jsonb_build_object and ||.
       ('{"id":"' || r.id || '","tenant":"' || r.tenant || '","outcome":"' || r.outcome
        || '","occurred_at":"' || to_char(r.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '","actor":' || a.actor
        || ',"client":' || a.client_head || ',"session_id":"sess-'
        || substr(md5(r.tenant || ':' || r.actor_n || ':' || (r.g / 5000)), 1, 12) || '"}'
        || ',"source":{"service":"' || s.service || '","instance":"' || s.service || '-'
        || (%(pods)s::text[])[1 + mod(r.h5, 3)] || '","sequence":' || (r.g + 1) || '}'
        || CASE WHEN s.target_type IS NULL THEN '' ELSE ',"target":{"type":"' || s.target_type
               || '","id":"' || s.target_prefix || '-' || r.target_n || '","name":"'
               || (%(regions)s::text[])[1 + mod(r.target_n, 6)] || ' ' || (%(words)s::text[])[1 + mod(r.target_n, 8)]
               || ' ' || r.target_n || '"}' END
        || CASE r.outcome WHEN 'failure' THEN ',"reason":"' || (%(failures)s::text[])[1 + mod(r.h4, 3)] || '"'
                          WHEN 'denied' THEN ',"reason":"' || (%(denials)s::text[])[1 + mod(r.h4, 2)] || '"'
                          ELSE '' END
        || CASE WHEN s.trace THEN ',"trace":{"trace_id":"' || md5(r.g || 't') || '","span_id":"'
                                   || substr(md5(r.g || 's'), 1, 16) || '"}' ELSE '' END
        || s.rest || '}')::jsonb
FROM (
    SELECT g, tenant, seq, t, outcome, actor_n, target_n, h1, h4, h5,
           make_interval(secs => (30 + mod(h4, 900)) / 1000.0) AS delay,
           substr(hx, 1, 8) || '-' || substr(hx, 9, 4) || '-7' || substr(m, 1, 3) || '-8' || substr(m, 4, 3)
               || '-' || substr(m, 7, 12) AS id
    FROM (
        SELECT g, h1, h4, h5, md5(g::text) AS m,
               CASE WHEN mod(g, 10) < 6 THEN 'acme' WHEN mod(g, 10) < 9 THEN 'globex' ELSE 'initech' END AS tenant,
               CASE WHEN mod(g, 10) < 6 THEN (g / 10) * 6 + mod(g, 10) + 1
                    WHEN mod(g, 10) < 9 THEN (g / 10) * 3 + mod(g, 10) - 5
                    ELSE g / 10 + 1 END AS seq,
               t, lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') AS hx,
               CASE WHEN mod(h4, 100) < 94 THEN 'success' WHEN mod(h4, 100) < 98 THEN 'failure' ELSE 'denied' END AS outcome,
               floor(%(actors)s * power(mod(h2, 1000003) / 1000003.0, 2))::int AS actor_n,
               mod(h3, 400) AS target_n
        FROM (
            SELECT g,
                   hashint8extended(g, 1) & 9223372036854775807 AS h1,
                   hashint8extended(g, 2) & 9223372036854775807 AS h2,
                   hashint8extended(g, 3) & 9223372036854775807 AS h3,
                   hashint8extended(g, 4) & 9223372036854775807 AS h4,
                   hashint8extended(g, 5) & 9223372036854775807 AS h5,
                   %(start)s::timestamptz + (g * %(step)s + mod(hashint8extended(g, 6) & 9223372036854775807, %(step)s))
                       * interval '1 microsecond' AS t
            FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g
        ) h
    ) x
) r
JOIN otaudit_bench_slots s ON s.slot = mod(r.h1, %(slots)s)
JOIN otaudit_bench_actors a ON a.tenant = r.tenant AND a.n = r.actor_n
"""


@dataclass
class Dataset:
    events: int
    seed: int
    start: dt.datetime
    end: dt.datetime
    counts: dict[str, int]
    templates: int
    categories: int
    load_seconds: float | None = None  # None: reused from an earlier run
    loaded_at: str = ""
    pieces: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0

    def meta(self) -> dict[str, Any]:
        return {
            "generator": GENERATOR,
            "events": self.events,
            "seed": self.seed,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "counts": self.counts,
            "templates": self.templates,
            "categories": self.categories,
            "load_seconds": self.load_seconds,
            "pieces": self.pieces,
            "loaded_at": self.loaded_at,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Dataset:
        return cls(
            meta["events"],
            meta["seed"],
            dt.datetime.fromisoformat(meta["start"]),
            dt.datetime.fromisoformat(meta["end"]),
            meta["counts"],
            meta["templates"],
            meta["categories"],
            None,
            meta.get("loaded_at", ""),
            {
                "first load, s": meta.get("load_seconds") or 0.0,
                **{f"first load: {k}": v for k, v in meta.get("pieces", {}).items()},
            },
        )


def cached_dataset(server_uri: str, events: int, seed: int) -> Dataset | None:
    """The dataset a previous run loaded into DB_NAME, when it is this one (the comment on
    the database is written only once a load has completed)."""
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
    return Dataset.from_meta(meta)


def load(server_uri: str, conninfo: str, events: int, seed: int, jobs: int) -> Dataset:
    """A fresh DB_NAME, migrated, holding ``events`` generated events; timed piece by piece."""
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
    month = end.month - 1 - (MONTHS - 1)  # MONTHS - 1 whole months before this one, and this one so far
    start = end.replace(year=end.year + month // 12, month=month % 12 + 1, day=1, hour=0, minute=0, second=0)
    step = int((end - start).total_seconds() * 1e6) // events
    templates = catalog_templates()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        month = start
        while month <= end:
            conn.execute("SELECT otaudit_ensure_partition(%s)", (month,))
            month = (month + dt.timedelta(days=32)).replace(day=1)
        ensure_partitions(conninfo, 2)
        conn.execute(
            "CREATE TABLE otaudit_bench_slots (slot int PRIMARY KEY, category text, event text, target_type text,"
            " target_prefix text, service text, trace boolean, rest text)"
        )
        conn.execute(
            "CREATE TABLE otaudit_bench_actors (tenant text, n int, email text, actor text, client_head text, PRIMARY KEY (tenant, n))"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO otaudit_bench_slots VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", slot_rows(templates, seed))
            cur.executemany("INSERT INTO otaudit_bench_actors VALUES (%s, %s, %s, %s, %s)", actor_rows(seed))
        conn.execute("ANALYZE otaudit_bench_slots")
        conn.execute("ANALYZE otaudit_bench_actors")
        # The indexes and keys of events and event_ids as the migrations made them: dropped
        # for the load, built again after it (a sort each, rather than 5 million inserts).
        rebuild = []
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
    t = lap("migrations, partitions, lookup tables", started)

    params = {
        "start": start,
        "step": step,
        "actors": ACTORS,
        "slots": SLOTS,
        "pods": PODS,
        "regions": REGIONS,
        "words": WORDS,
        "failures": FAILURES,
        "denials": DENIALS,
    }
    bounds = [events * i // jobs for i in range(jobs + 1)]
    say(f"   inserting {events:,} events on {jobs} connection(s) ...")
    run_statements(
        conninfo, [(LOAD_SQL, {**params, "lo": lo, "hi": hi}) for lo, hi in itertools.pairwise(bounds) if hi > lo], jobs
    )
    t = lap("events (generate_series, without indexes)", t)

    ids = "INSERT INTO event_ids (tenant, id, occurred_at) SELECT tenant, id, occurred_at FROM events"
    # Indexes on expressions one at a time: built at once, two of them would give their
    # partitions' indexes the same generated name (events_2025_12_expr_idx) and one would fail.
    on_expressions = [d for table, d in rebuild if table == "events" and "((" in d]
    plain = [d for table, d in rebuild if table == "events" and d not in on_expressions]
    run_statements(conninfo, [(ids, None)] + [(d, None) for d in plain], jobs)
    run_statements(conninfo, [(d, None) for d in on_expressions], 1)
    run_statements(conninfo, [(d, None) for table, d in rebuild if table == "event_ids"], jobs)
    t = lap(f"event_ids; the {len(rebuild)} indexes and keys of events and event_ids, built", t)

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant_seq (tenant, last_seq) SELECT tenant, max(seq) FROM events GROUP BY tenant")
        with conn.transaction():
            for tenant, plan, _share in TENANTS:
                set_plan(conn, tenant, plan)
        conn.execute("DROP TABLE otaudit_bench_slots, otaudit_bench_actors")
    # As autovacuum leaves older partitions: hint bits set, visibility map, statistics.
    vacuum = [(f'VACUUM "{name}"', None) for name in partitions] + [
        ("VACUUM (ANALYZE) event_ids", None),
        ("ANALYZE events", None),
    ]
    run_statements(conninfo, vacuum, jobs)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) tenant_seq, tenants")
        conn.execute("CHECKPOINT")
        counts = dict(conn.execute("SELECT tenant, count(*) FROM events GROUP BY tenant ORDER BY tenant").fetchall())
    t = lap("tenant_seq, tenants; VACUUM, ANALYZE, CHECKPOINT", t)
    total = round(time.perf_counter() - started, 1)
    n_categories = len({t["category"] for t in templates})
    data = Dataset(
        events,
        seed,
        start,
        end,
        counts,
        len(templates),
        n_categories,
        total,
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        pieces,
    )
    with psycopg.connect(server_uri, autocommit=True) as conn:
        conn.execute(f'COMMENT ON DATABASE "{DB_NAME}" IS {pgsql.quote(json.dumps(data.meta()))}')
    return data


def run_statements(conninfo: str, statements: list[tuple[str, dict[str, Any] | None]], jobs: int) -> None:
    """Run the statements on ``jobs`` connections at once, each taking the next one in turn."""
    todo: queue.SimpleQueue[tuple[str, dict[str, Any] | None]] = queue.SimpleQueue()
    for item in statements:
        todo.put(item)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SET maintenance_work_mem = '512MB'")
                while not errors:
                    try:
                        sql, params = todo.get_nowait()
                    except queue.Empty:
                        return
                    conn.execute(sql, params)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(min(jobs, len(statements)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def check_dataset(conninfo: str, data: Dataset, sample: int = 2000) -> list[str]:
    """Each tenant's seq 1..n, one event_ids row per event, and a sample of documents valid
    against their catalogs and agreeing with their columns."""
    catalogs = load_catalogs(catalog_dirs(load_settings(None, environ={}, overrides={})))
    problems = []
    with psycopg.connect(conninfo) as conn:
        for tenant, n in data.counts.items():
            row = conn.execute(
                "SELECT count(*), min(seq), max(seq) FROM events WHERE tenant = %s AND seq <= %s", (tenant, n)
            ).fetchone()
            if row != (n, 1, n):
                problems.append(f"tenant {tenant}: (count, min seq, max seq) = {row}, expected ({n}, 1, {n})")
        ids = conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]  # type: ignore[index]
        if ids < data.events:
            problems.append(f"{ids} event_ids rows for {data.events} events")
        rows = conn.execute(
            "SELECT tenant, id, category, event, outcome, actor_id, actor_email, target_type, target_id, occurred_at, doc"
            " FROM events TABLESAMPLE SYSTEM (%s) REPEATABLE (1) LIMIT %s",
            (min(100.0, 100.0 * sample / data.events * 2), sample),
        ).fetchall()
    for tenant, eid, category, event, outcome, actor_id, email, ttype, tid, occurred, doc in rows:
        refusal = catalogs.check(dict(doc))
        if refusal is not None:
            problems.append(f"{category}/{event} {eid}: {'; '.join(refusal.problems)}")
        columns = (tenant, eid, category, event, outcome, actor_id, email, ttype, tid)
        from_doc = (
            doc["tenant"],
            doc["id"],
            doc["category"],
            doc["event"],
            doc["outcome"],
            doc["actor"].get("id"),
            doc["actor"].get("email"),
            (doc.get("target") or {}).get("type"),
            (doc.get("target") or {}).get("id"),
        )
        if columns != from_doc or occurred.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") != doc["occurred_at"]:
            problems.append(f"{eid}: the columns {columns} disagree with the document {from_doc}")
    if not rows:
        problems.append("no documents sampled")
    return problems[:10]


# ---------------------------------------------------------------------------------------
# CPU and memory accounting
# ---------------------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds over a window: the client (this process), the collector, PostgreSQL, and the machine."""

    client: float
    collector: float
    postgres: float
    busy: float
    wall: float

    @property
    def others(self) -> float:
        """Cores used by other processes during the window."""
        known = self.client + self.collector + (self.postgres if self.postgres == self.postgres else 0.0)
        return max(0.0, self.busy - known) / self.wall if self.wall > 0 else 0.0


class CpuWindow:
    def __init__(self, collector_pid: int | None, postmaster_pid: int | None) -> None:
        self.collector_pid = collector_pid
        self.postmaster_pid = postmaster_pid

    def _snap(self) -> tuple[float, ...]:
        m = psutil.cpu_times()
        busy = sum(m) - m.idle - getattr(m, "iowait", 0.0) - getattr(m, "steal", 0.0)
        coll = tree_cpu_seconds(self.collector_pid) if self.collector_pid else 0.0  # with its --workers
        return (self_cpu_seconds(), coll, postgres_cpu_seconds(self.postmaster_pid), busy, time.perf_counter())

    def _children(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.postmaster_pid).children()} if self.postmaster_pid else set()
        except psutil.Error:
            return set()

    def __enter__(self) -> CpuWindow:
        self.children = self._children()
        self.before = self._snap()
        return self

    def __exit__(self, *exc: object) -> None:
        after = list(self._snap())
        # A backend that served a connection closed in the window counts once the postmaster
        # has reaped it (its CPU then moves to the postmaster's children times): wait for that.
        deadline = time.monotonic() + 2
        while self._children() - self.children and time.monotonic() < deadline:
            time.sleep(0.01)
        after[2] = postgres_cpu_seconds(self.postmaster_pid)
        self.cpu = Cpu(*(a - b for a, b in zip(after, self.before, strict=True)))


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The peak resident memory of a process over a window: the kernel's high-water mark
    (VmHWM, reset through /proc/PID/clear_refs), checked by sampling VmRSS every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.start_kib = vm_kib(self.pid, "VmRSS")
        self.sampled_kib = self.start_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.sampled_kib = max(self.sampled_kib, vm_kib(self.pid, "VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end_kib = vm_kib(self.pid, "VmRSS")
        self.peak_kib = max(self.sampled_kib, vm_kib(self.pid, "VmHWM") if self.hwm_reset else 0)


# ---------------------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------------------


def start_collector(conninfo: str, workdir: Path, prefix_keys: list[str]) -> ServedCollector:
    """``otaudit serve`` on the benchmark database (``_measure.ServedCollector``), the details
    keys ``prefix_keys`` indexed for prefix search (built at its start, before it is ready)."""
    # The data is loaded with SQL, so no event of it is in the tamper-evident log yet: with the
    # log on, the collector would spend the whole run sealing it into the tree (catch-up).
    # Reads do not touch the log; a collector whose log is caught up does none of that work.
    return ServedCollector(
        conninfo,
        workdir,
        pepper=PEPPER,
        error=BenchmarkError,
        ready_seconds=1800,
        config=f"integrity:\n  enabled: false\nsearch:\n  details_prefix_keys: {json.dumps(prefix_keys)}\n",
    )


class Http:
    """One keep-alive HTTP/1.1 connection to the API, as lean as a client gets in Python."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=600)
        self.first_block_at = 0.0
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    def _send(self, url: str) -> http.client.HTTPResponse:
        """Send a GET; once again on a fresh connection when the collector closed an idle one
        (listen.idle_timeout_seconds, 75 s: the export phase leaves this one idle longer)."""
        try:
            self.conn.request("GET", url, headers=self.headers)
            return self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            self.conn.request("GET", url, headers=self.headers)
            return self.conn.getresponse()

    def get(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        url = path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        response = self._send(url)
        body = response.read()
        if response.status != 200:
            raise BenchmarkError(f"GET {url}: {response.status} {body[:500]!r}")
        return body

    def stream(self, path: str, params: dict[str, Any], block: int = 1 << 20) -> tuple[int, bytes]:
        """GET and read to the end without keeping it: (bytes read, the first block); the time
        the first block arrived is left in ``first_block_at``."""
        url = path + "?" + urllib.parse.urlencode(params, doseq=True)
        response = self._send(url)
        if response.status != 200:
            raise BenchmarkError(f"GET {url}: {response.status} {response.read()[:500]!r}")
        buffer = bytearray(block)
        view = memoryview(buffer)
        total = 0
        head = b""
        while n := response.readinto(view):
            if not head:
                head = bytes(view[:n])
                self.first_block_at = time.perf_counter()
            total += n
        return total, head

    def post(self, path: str, body: dict[str, Any]) -> bytes:
        self.conn.request("POST", path, body=json.dumps(body), headers={**self.headers, "Content-Type": "application/json"})
        response = self.conn.getresponse()
        answer = response.read()
        if response.status >= 300:
            raise BenchmarkError(f"POST {path}: {response.status} {answer[:500]!r}")
        return answer

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------
# 1. Latency of the event pages
# ---------------------------------------------------------------------------------------


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class LatencyCase:
    name: str
    params: dict[str, Any]  # the query parameters of the API request
    sql: str
    sql_params: list[Any]
    prepare: bool | None = None  # as the API runs it (core.query.Filters.custom_plan)
    api_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, float]:
        out = {}
        for side, values in (("api", self.api_ms), ("sql", self.sql_ms)):
            out[f"{side}_p50_ms"] = percentile(values, 50)
            out[f"{side}_p95_ms"] = percentile(values, 95)
        for p in ("p50", "p95"):
            out[f"ratio_{p}"] = out[f"api_{p}_ms"] / out[f"sql_{p}_ms"]
        return out


def page_sql(tenant: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """The SQL of GET /v1/events with these parameters, as api/reads.py builds it
    (``core.query.page_sql``: the page as one row; the category named is the one the plan
    check lets through; since is inside the window)."""
    filters = parse_filters({k: v if isinstance(v, list) else [str(v)] for k, v in params.items()})
    return core_page_sql(tenant, filters.categories, filters)


def measure_latency(
    http_api: Http,
    conninfo: str,
    tenant: str,
    base: dict[str, Any],
    deep_pages: int,
    reps: int,
    warmup: int,
    filtered: dict[str, dict[str, Any]] | None = None,
    indexed_details: list[str] | None = None,
    collector_pid: int | None = None,
) -> tuple[list[LatencyCase], dict[str, Any]]:
    """``indexed_details``: the collector's search.details_prefix_keys (they decide which pages
    it plans for their values, and the SQL beside it does the same). ``collector_pid``: whose
    CPU per page to report (the collector is idle while the SQL side runs)."""
    with psycopg.connect(conninfo, autocommit=True) as sql_conn:
        return _measure_latency(
            http_api,
            conninfo,
            sql_conn,
            tenant,
            base,
            deep_pages,
            reps,
            warmup,
            filtered or {},
            indexed_details or [],
            collector_pid,
        )


NO_MATCH = {"details prefix, none"}  # cases whose filter matches no event on purpose


def filter_cases(conninfo: str, tenant: str, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """First pages of the filters the reference admins use (issue 12), on values the data holds: a
    target name (equal, and a prefix), a details key, and an object's history (target or related)."""
    with psycopg.connect(conninfo) as conn:
        name_row = conn.execute(
            "SELECT doc#>>'{target,name}' AS n, count(*) FROM events WHERE tenant = %s AND category = %s"
            " AND doc#>>'{target,name}' IS NOT NULL GROUP BY n ORDER BY count(*) DESC LIMIT 1",
            (tenant, base["category"]),
        ).fetchone()
        detail_row = conn.execute(
            "SELECT d.key, d.value, e.category FROM (SELECT category, doc FROM events WHERE tenant = %s AND category <> %s"
            " AND doc ? 'details' LIMIT 5000) e,"
            " jsonb_each_text(e.doc->'details') d WHERE jsonb_typeof(e.doc->'details'->d.key) = 'string'"
            " GROUP BY d.key, d.value, e.category ORDER BY count(*) DESC LIMIT 1",
            (tenant, base["category"]),
        ).fetchone()
        object_row = conn.execute(
            "SELECT target_type, target_id FROM events WHERE tenant = %s AND category = %s AND target_id IS NOT NULL"
            " GROUP BY target_type, target_id ORDER BY count(*) DESC LIMIT 1",
            (tenant, base["category"]),
        ).fetchone()
    window = {"category": base["category"], "since": base["since"], "until": base["until"], "limit": base["limit"]}
    cases: dict[str, dict[str, Any]] = {}
    if name_row:
        name = str(name_row[0]).replace('"', "")
        cases["target name ="] = {**window, "q": f'target_name:"{name}"'}
        cases["target name prefix"] = {**window, "q": f"target_name:{name.split()[0][:4].replace('*', '')}*"}
    if detail_row:  # the benchmark's events of the base category carry no details: another category's
        value = str(detail_row[1]).replace(chr(34), "")
        cases["details key ="] = {**window, "category": detail_row[2], "q": f'details.{detail_row[0]}:"{value}"'}
        cases["details key prefix"] = {**window, "category": detail_row[2], "q": f"details.{detail_row[0]}:{value[:3]}*"}
        # a prefix no event has (a typo): without an index this reads the whole window
        cases[next(iter(NO_MATCH))] = {**window, "category": detail_row[2], "q": f"details.{detail_row[0]}:{value[:3]}~~*"}
    if object_row:
        cases["object history"] = {**window, "target_type": object_row[0], "target_id": object_row[1]}
    return cases


def _measure_latency(
    http_api: Http,
    conninfo: str,
    sql_conn: psycopg.Connection[Any],
    tenant: str,
    base: dict[str, Any],
    deep_pages: int,
    reps: int,
    warmup: int,
    filtered: dict[str, dict[str, Any]],
    indexed_details: list[str],
    collector_pid: int | None = None,
) -> tuple[list[LatencyCase], dict[str, Any]]:
    first_sql, first_params = page_sql(tenant, base)
    cases = [LatencyCase("first page", dict(base), first_sql, first_params)]
    # Follow the cursor deep_pages pages in: the page after that is the deep page.
    cursor = None
    params = dict(base)
    for _ in range(deep_pages):
        page = json.loads(http_api.get("/v1/events", params))
        cursor = page["next_cursor"]
        if cursor is None:
            raise BenchmarkError(f"only {deep_pages} pages match; use a smaller --deep-pages")
        params = {**base, "cursor": cursor}
    deep_sql, deep_params = page_sql(tenant, params)
    cases.append(LatencyCase(f"deep page (page {deep_pages + 1})", params, deep_sql, deep_params))

    for name, params in filtered.items():
        filtered_sql, filtered_params = page_sql(tenant, params)
        given = {k: v if isinstance(v, list) else [str(v)] for k, v in params.items()}
        custom = parse_filters(given, indexed_details=indexed_details).custom_plan
        cases.append(LatencyCase(name, dict(params), filtered_sql, filtered_params, False if custom else None))

    # The API and the SQL return the same events (a full page, for the unfiltered two).
    for case in cases:
        api_ids = [e["id"] for e in json.loads(http_api.get("/v1/events", case.params))["events"]]
        page = sql_conn.execute(case.sql, case.sql_params).fetchone()
        sql_ids = [e["id"] for e in json.loads("[" + page[3] + "]")] if page else []
        full = case.name in filtered or len(api_ids) == int(base["limit"])
        if api_ids != sql_ids or not full or (not api_ids and case.name not in NO_MATCH):
            raise BenchmarkError(f"{case.name}: the API returned {len(api_ids)} events, the SQL {len(sql_ids)}, or others")

    def api(case: LatencyCase) -> float:
        t0 = time.perf_counter()
        http_api.get("/v1/events", case.params)
        return (time.perf_counter() - t0) * 1e3

    def sql(case: LatencyCase) -> float:
        t0 = time.perf_counter()
        sql_conn.execute(case.sql, case.sql_params, prepare=case.prepare).fetchall()
        return (time.perf_counter() - t0) * 1e3

    sides = [api, sql]
    cpu_at_start = 0.0
    for i in range(warmup + reps):
        if i == warmup and collector_pid:
            cpu_at_start = tree_cpu_seconds(collector_pid)
        for case in cases:
            # Interleaved, each going first in turn, so that noise hits both alike.
            results = {f: f(case) for f in sides[i % 2 :] + sides[: i % 2]}
            if i >= warmup:
                case.api_ms.append(results[api])
                case.sql_ms.append(results[sql])

    collector_cpu = tree_cpu_seconds(collector_pid) - cpu_at_start if collector_pid else None
    # Where the API's time goes, in pieces (not part of the goal), each a p50 of 100 runs.
    pieces: dict[str, Any] = {"viewer": _viewer_pages(http_api, cases[0], reps, warmup)}
    if collector_cpu is not None:  # every timed API request of every case (the token comes from the cache)
        pieces["collector_cpu_ms_per_page"] = collector_cpu / (reps * len(cases)) * 1e3
    pieces["healthz_ms"] = statistics.median(timed(lambda: http_api.get("/healthz"), 100))
    pieces["auth_route_ms"] = statistics.median(timed(lambda: http_api.get(f"/v1/tenants/{tenant}/plan"), 100))
    auth_ms, page_ms = asyncio.run(api_queries(conninfo, http_api.token, first_sql, first_params, 100))
    pieces["api_auth_query_ms"], pieces["api_page_query_ms"] = auth_ms, page_ms
    with sql_conn.cursor() as cur:
        plan = cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + first_sql, first_params).fetchone()[0]  # type: ignore[index]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        pieces["server_execution_ms"] = plan[0]["Execution Time"]
        pieces["first_page_plan"] = summarize_plan(plan)
    return cases, pieces


def _viewer_pages(http_api: Http, first: LatencyCase, reps: int, warmup: int) -> dict[str, float]:
    """The first page through a viewer token (issue 15: within 1.05x of the same page through
    the admin token), interleaved with the admin token's; and minting one, beside the admin
    token's cheapest authenticated route."""
    mint = {"for": "query benchmark", "minutes": 60}
    token = json.loads(http_api.post("/v1/viewer-tokens", mint))["token"]
    viewer = Http(http_api.conn.host, http_api.conn.port, token)
    try:
        if (
            json.loads(viewer.get("/v1/events", first.params))["events"]
            != json.loads(http_api.get("/v1/events", first.params))["events"]
        ):
            raise BenchmarkError("the viewer token's first page differs from the admin token's")
        admin_ms: list[float] = []
        viewer_ms: list[float] = []
        clients = [(http_api, admin_ms), (viewer, viewer_ms)]
        for i in range(warmup + reps):
            for client, into in clients[i % 2 :] + clients[: i % 2]:
                t0 = time.perf_counter()
                client.get("/v1/events", first.params)
                if i >= warmup:
                    into.append((time.perf_counter() - t0) * 1e3)
        mint_ms = timed(lambda: http_api.post("/v1/viewer-tokens", mint), 100)
        plan_ms = timed(lambda: http_api.get(f"/v1/tenants/{json.loads(http_api.get('/v1/whoami'))['tenant']}/plan"), 100)
    finally:
        viewer.close()
    return {
        "admin_p50_ms": percentile(admin_ms, 50),
        "admin_p95_ms": percentile(admin_ms, 95),
        "viewer_p50_ms": percentile(viewer_ms, 50),
        "viewer_p95_ms": percentile(viewer_ms, 95),
        "ratio_p50": percentile(viewer_ms, 50) / percentile(admin_ms, 50),
        "ratio_p95": percentile(viewer_ms, 95) / percentile(admin_ms, 95),
        "mint_p50_ms": statistics.median(mint_ms),
        "admin_route_p50_ms": statistics.median(plan_ms),
    }


async def api_queries(conninfo: str, token: str, sql: str, params: list[Any], n: int) -> tuple[float, float]:
    """p50 ms of the API's two queries as its pool runs them (async psycopg, autocommit):
    the token lookup, then the page."""
    auth, page = [], []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            if await authenticate_async(conn, token, PEPPER) is None:
                raise BenchmarkError("the benchmark's token does not authenticate")
            t1 = time.perf_counter()
            await (await conn.execute(sql, params)).fetchall()
            t2 = time.perf_counter()
            auth.append((t1 - t0) * 1e3)
            page.append((t2 - t1) * 1e3)
    return statistics.median(auth), statistics.median(page)


def summarize_plan(plan: list[dict[str, Any]]) -> str:
    """The plan's nodes on one line: node type (index) for each, depth first."""
    out = []

    def walk(node: dict[str, Any]) -> None:
        label = node["Node Type"]
        if "Sort Key" in node:
            label += f" ({', '.join(node['Sort Key'])})"
        if "Index Name" in node:
            label += f" {node['Index Name']}"
        if "Relation Name" in node and "Index Name" not in node:
            label += f" {node['Relation Name']}"
        out.append(label)
        for child in node.get("Plans", [])[:3]:
            walk(child)

    walk(plan[0]["Plan"])
    return " > ".join(out[:8])


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def profile_pages(http_api: Http, pid: int, params: dict[str, Any], out: Path, seconds: float = 10.0) -> list[str]:
    """py-spy on the collector while one client asks for the same page for ``seconds``:
    the collector's Python time per request, by function (inclusive and self). Not part of
    the measurements: the profiler slows the collector down."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise BenchmarkError("--py-spy needs py-spy (pip install py-spy)")
    spy = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "1000", "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # let it attach
    if spy.poll() is not None:
        raise BenchmarkError(f"py-spy failed: {spy.stderr.read().decode(errors='replace') if spy.stderr else ''}")
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        http_api.get("/v1/events", params)
        n += 1
    elapsed = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [re.sub(r" \((?:[^()]*/)?([^/()]+?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        frames = [f for f in frames if f and not f.startswith(("process ", "thread "))]
        if frames:
            selfs[frames[-1]] = selfs.get(frames[-1], 0) + int(count)
        for f in set(frames):
            incl[f] = incl.get(f, 0) + int(count)
    lines = [f"py-spy at 1 kHz ({out}): {n} requests in {elapsed:.1f} s ({elapsed / n * 1e3:.2f} ms each under the profiler);"]
    lines.append("  the collector's Python time per request, inclusive (ms), under the request handler:")
    top = sorted(incl.items(), key=lambda kv: -kv[1])
    handler = next((c for f, c in top if f.startswith("RequestHandler._handle_request")), None)
    lines += [f"    {c / n:6.2f}  {f}" for f, c in top if handler and c <= handler][:28]
    lines.append("  self time (ms per request):")
    lines += [f"    {c / n:6.2f}  {f}" for f, c in sorted(selfs.items(), key=lambda kv: -kv[1])[:14]]
    return lines


# ---------------------------------------------------------------------------------------
# 2. Export throughput
# ---------------------------------------------------------------------------------------

RAW_COLUMNS = "tenant, seq, id, occurred_at, received_at, category, event, outcome, actor_type, actor_id, actor_email, target_type, target_id, flags, doc"


def raw_copy_sql(where: str) -> str:
    return f"COPY (SELECT {RAW_COLUMNS} FROM events WHERE {where} ORDER BY occurred_at, seq) TO STDOUT WITH (FORMAT csv)"


@dataclass
class Transfer:
    kind: str
    rows: int
    nbytes: int
    seconds: float
    first_seconds: float  # until the first row (COPY) or the first block of the body (HTTP)
    cpu: Cpu
    peak_rss_kib: int = 0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def copy_out(conninfo: str, sql: str, params: list[Any]) -> tuple[int, int, float]:
    """Run a COPY TO STDOUT and read it to the end through psycopg: (rows, bytes, when the first row came)."""
    rows = nbytes = 0
    first = 0.0
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur, cur.copy(sql, params) as copy:
        for data in copy:  # one COPY message per row
            if not rows:
                first = time.perf_counter()
            rows += 1
            nbytes += len(data)
    return rows, nbytes, first


def stream_in_process(conninfo: str, where: str, params: list[Any]) -> tuple[int, int, float]:
    """storage.exports.stream_export in this process, into a sink that drops the blocks."""
    nbytes = 0
    first = 0.0

    async def sink(block: bytes) -> None:
        nonlocal nbytes, first
        if not nbytes:
            first = time.perf_counter()
        nbytes += len(block)

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            return await stream_export(conn, FORMATS["csv"], False, where, params, sink)

    rows = asyncio.run(run())
    return rows, nbytes - len(csv_header(False)), first


def export_rows_recorded(conninfo: str, tenant: str) -> int:
    """The row count the collector recorded in its exportView audit event for the last export."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT (doc->'details'->>'row_count')::bigint FROM events WHERE tenant = %s AND event = 'exportView'"
            " ORDER BY occurred_at DESC, seq DESC LIMIT 1",
            (tenant,),
        ).fetchone()
    return int(row[0]) if row else -1


def measure_export(
    http_api: Http,
    conninfo: str,
    tenant: str,
    params: dict[str, Any],
    rounds: int,
    window: Callable[[], CpuWindow],
    collector_pid: int,
    diagnostics: bool,
    export_plan: list[str],
) -> list[Transfer]:
    filters = parse_filters({k: [str(v)] for k, v in params.items() if k != "format"})
    where, where_params = where_sql(tenant, None, filters)  # the enterprise plan reads every category
    header = len(csv_header(False))

    def api() -> tuple[int, int, float]:
        nbytes, head = http_api.stream("/v1/export", params)
        if not head.startswith(csv_header(False)):
            raise BenchmarkError(f"the export does not start with the CSV header: {head[:200]!r}")
        return export_rows_recorded(conninfo, tenant), nbytes - header, http_api.first_block_at

    statement = copy_sql(FORMATS["csv"], where)
    kinds: dict[str, Callable[[], tuple[int, int, float]]] = {
        "COPY raw columns": lambda: copy_out(conninfo, raw_copy_sql(where), where_params),
        "COPY export SELECT": lambda: copy_out(conninfo, statement, where_params),
        "GET /v1/export": api,
    }
    diagnostic: dict[str, Callable[[], tuple[int, int, float]]] = {}
    if diagnostics:
        diagnostic["stream_export in-process"] = lambda: stream_in_process(conninfo, where, where_params)
    names = list(kinds)
    out = []
    for r in range(rounds):
        for name in [*names[r % len(names) :], *names[: r % len(names)], *(diagnostic if r == 0 else [])]:
            say(f"   round {r + 1}/{rounds}: {name} ...")
            with window() as w, PeakRss(collector_pid) as rss:
                t0 = time.perf_counter()
                rows, nbytes, first = {**kinds, **diagnostic}[name]()
                seconds = time.perf_counter() - t0
            out.append(Transfer(name, rows, nbytes, seconds, first - t0, w.cpu, rss.peak_kib))
    with psycopg.connect(conninfo) as conn:
        select = statement[len("COPY (") : statement.rindex(") TO STDOUT")]
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + select, where_params).fetchone()[0]  # type: ignore[index]
        export_plan.append(summarize_plan(json.loads(plan) if isinstance(plan, str) else plan))
    by_kind: dict[str, set[tuple[int, int]]] = {}
    for t in out:
        by_kind.setdefault(t.kind, set()).add((t.rows, t.nbytes))
    if len({v for k, vs in by_kind.items() if k != "COPY raw columns" for v in vs}) != 1:
        raise BenchmarkError(f"the exports differ in rows or bytes: {by_kind}")
    return out


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def newest(conninfo: str, tenant: str, offset: int) -> dt.datetime:
    """occurred_at of the tenant's event ``offset`` places from the newest (the index's order)."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT occurred_at FROM events WHERE tenant = %s ORDER BY occurred_at DESC, seq DESC OFFSET %s LIMIT 1",
            (tenant, offset),
        ).fetchone()
    if row is None:
        raise BenchmarkError(f"tenant {tenant} has fewer than {offset + 1} events")
    return row[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    external = os.environ.get("OTAUDIT_BENCH_DATABASE_URL")
    workdir = Path(tempfile.mkdtemp(prefix="otaudit-query-bench-"))
    server = None
    collector: ServedCollector | None = None
    clients: list[Http] = []
    result: dict[str, Any] = {"args": vars(args)}
    try:
        postmaster_pid: int | None = None
        if external:
            server_uri = external
            where_db = "OTAUDIT_BENCH_DATABASE_URL"
        else:
            import pgserver

            pgdata = Path(args.data_dir).resolve() / "postgres" if args.data_dir else workdir / "pg"
            pgdata.mkdir(parents=True, exist_ok=True)
            say(f"starting the embedded PostgreSQL in {pgdata} ...")
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
            server_uri = server.get_uri()
            postmaster_pid = int((pgdata / "postmaster.pid").read_text().split()[0])
            where_db = f"embedded (pgserver) in {pgdata}" + ("" if args.data_dir else ", removed afterwards")
        conninfo = make_conninfo(server_uri, dbname=DB_NAME)
        with psycopg.connect(server_uri, autocommit=True) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            settings = dict(
                conn.execute(
                    "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN"
                    " ('shared_buffers', 'work_mem', 'effective_cache_size', 'jit', 'max_parallel_workers_per_gather')"
                ).fetchall()
            )

        data = None if args.reload else cached_dataset(server_uri, args.events, args.seed)
        if data is not None:
            say(f"reusing the {data.events:,} events loaded on {data.loaded_at} (--reload to load again)")
        else:
            say(f"loading {args.events:,} events into {DB_NAME} ...")
            data = load(server_uri, conninfo, args.events, args.seed, args.load_jobs)
            say(f"   loaded in {data.load_seconds:.1f} s")
        problems = check_dataset(conninfo, data)
        if problems:
            raise BenchmarkError("the generated data is not what the collector would store:\n  " + "\n  ".join(problems))
        with psycopg.connect(conninfo) as conn:
            data.size_bytes = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
            tokens = {}
            for tenant, _plan, _share in TENANTS:
                tokens[tenant] = create_token(conn, tenant=tenant, role="admin", name="query benchmark", pepper=PEPPER)[1]
        result["data"] = {**data.meta(), "load_seconds": data.load_seconds, "size_bytes": data.size_bytes, "where": where_db}
        result["postgres"] = {"version": pg_version, **settings}

        tenant = TENANTS[0][0]
        since, until = data.end - dt.timedelta(days=180), data.end - dt.timedelta(days=30)
        base = {"category": LATENCY_CATEGORY, "since": iso(since), "until": iso(until), "limit": args.limit}
        filtered = filter_cases(conninfo, tenant, base)
        # the details keys the cases search by prefix get their own index (search.details_prefix_keys)
        prefix_keys = sorted(
            {
                q.split(":")[0].removeprefix("details.")
                for c in filtered.values()
                if (q := c.get("q", "")).startswith("details.") and q.endswith("*")
            }
        )
        if args.no_prefix_index:  # the comparison: those prefixes read the time window
            prefix_keys = []
        say(f"starting `otaudit serve` (details prefix keys {prefix_keys}: their indexes are built first) ...")
        collector = start_collector(conninfo, workdir, prefix_keys)
        api = Http(collector.host, collector.port, tokens[tenant])
        clients.append(api)
        api.get("/readyz")

        def window() -> CpuWindow:
            return CpuWindow(collector.pid if collector else None, postmaster_pid)

        # -- 1. latency ---------------------------------------------------------------------
        with psycopg.connect(conninfo) as conn:
            matching = int(
                conn.execute(
                    "SELECT count(*) FROM events WHERE tenant = %s AND category = %s AND occurred_at >= %s AND occurred_at < %s",
                    (tenant, LATENCY_CATEGORY, since, until),
                ).fetchone()[0]  # type: ignore[index]
            )
        deep = min(args.deep_pages, max(1, matching // args.limit - 1))
        say(f"1. latency: {args.reps} interleaved repetitions (+{args.warmup} warm-up) of 2 pages, API and SQL ...")
        with window() as w:
            cases, pieces = measure_latency(
                api, conninfo, tenant, base, deep, args.reps, args.warmup, filtered, prefix_keys, collector.pid
            )
        if args.py_spy:
            say(f"   profiling the collector with py-spy for 10 s ({args.py_spy}) ...")
            pieces["profile"] = profile_pages(api, collector.pid, base, Path(args.py_spy).resolve())
        result["latency"] = {
            "tenant": tenant,
            "filters": base,
            "matching": matching,
            "deep_pages": deep,
            "reps": args.reps,
            "cases": {c.name: c.figures() for c in cases},
            "case_filters": {c.name: c.params for c in cases[2:]},
            "sql": cases[1].sql,
            "pieces": pieces,
            "other_cores": w.cpu.others,
        }

        # -- 2. export ----------------------------------------------------------------------
        big_since = data.end - dt.timedelta(days=args.export_days)
        until_export = data.end + dt.timedelta(seconds=1)  # not the API's own audit events of this run
        big = {"format": "csv", "since": iso(big_since), "until": iso(until_export)}
        with psycopg.connect(conninfo) as conn:
            big_rows = int(
                conn.execute(
                    "SELECT count(*) FROM events WHERE tenant = %s AND occurred_at >= %s AND occurred_at < %s",
                    (tenant, big_since, until_export),
                ).fetchone()[0]  # type: ignore[index]
            )
        small_rows = min(100_000, max(1000, big_rows // 10))
        small = {"format": "csv", "since": iso(newest(conninfo, tenant, small_rows - 1)), "until": iso(until_export)}
        say(f"2. export: {big_rows:,} rows, {args.rounds} round(s) of each ...")
        export_plan: list[str] = []
        transfers = measure_export(
            api, conninfo, tenant, big, args.rounds, window, collector.pid, not args.no_diagnostics, export_plan
        )
        say(f"3. peak RSS of the collector: exports of ~{small_rows:,} and {big_rows:,} rows ...")
        idle_kib = vm_kib(collector.pid, "VmRSS")
        memory = []
        for label, params in (("small", small), ("large", big)):
            with PeakRss(collector.pid) as rss:
                nbytes, _head = api.stream("/v1/export", params)
            memory.append(
                {
                    "export": label,
                    "rows": export_rows_recorded(conninfo, tenant),
                    "bytes": nbytes,
                    "peak_rss_kib": rss.peak_kib,
                    "hwm_reset": rss.hwm_reset,
                }
            )
        result["export"] = {
            "tenant": tenant,
            "filters": big,
            "rows": big_rows,
            "plan": export_plan[0],
            "transfers": [
                {
                    "kind": t.kind,
                    "rows": t.rows,
                    "bytes": t.nbytes,
                    "seconds": t.seconds,
                    "first_seconds": t.first_seconds,
                    "rows_per_s": t.rate,
                    "cpu_us_per_row": {
                        "client": t.cpu.client / t.rows * 1e6,
                        "collector": t.cpu.collector / t.rows * 1e6,
                        "postgres": t.cpu.postgres / t.rows * 1e6,
                    },
                    "other_cores": t.cpu.others,
                    "collector_peak_rss_kib": t.peak_rss_kib,
                }
                for t in transfers
            ],
            "export_sql": copy_sql(
                FORMATS["csv"], where_sql(tenant, None, parse_filters({"since": [big["since"]], "until": [big["until"]]}))[0]
            ),
        }
        result["memory"] = {"idle_kib": idle_kib, "exports": memory}
        return result
    finally:
        for client in clients:
            client.close()
        if collector is not None:
            collector.stop()
            if args.keep:
                say(f"collector log: {collector.log_path}")
        if server is not None:
            server.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    data, lat, exp, mem = result["data"], result["latency"], result["export"], result["memory"]
    pg = result["postgres"]
    print(
        f"otaudit query benchmark   commit {git_commit()}   {os.cpu_count()} CPUs   Python {platform.python_version()}"
        f"   PostgreSQL {pg['version']} (shared_buffers {pg.get('shared_buffers')}, jit {pg.get('jit')})"
    )
    counts = ", ".join(f"{t} ({plan}) {data['counts'].get(t, 0):,}" for t, plan, _s in TENANTS)
    loaded = f"loaded in {data['load_seconds']:.0f} s" if data["load_seconds"] else f"reused (loaded {data['loaded_at']})"
    print(
        f"data: {data['events']:,} events: {counts}; {data['start'][:10]} .. {data['end'][:10]} ({MONTHS} monthly partitions);"
        f" {ACTORS:,} actors per tenant; {data['templates']} events of {data['categories']} catalogs;"
        f" {data['size_bytes'] / 2**30:.2f} GiB; {loaded}"
    )
    if data["load_seconds"]:
        print("load: " + "; ".join(f"{name} {seconds:.0f} s" for name, seconds in data["pieces"].items()))
    goals: list[tuple[str, bool, str]] = []

    f = lat["filters"]
    print(
        f"\n1. GET /v1/events  tenant {lat['tenant']}, category={f['category']}, since={f['since'][:10]}, until={f['until'][:10]}"
        f" ({lat['matching']:,} matching), limit {f['limit']}; {lat['reps']} interleaved repetitions, keep-alive"
    )
    print(
        f"   {'':<22} {'API p50':>8} {'p95':>8}   {'SQL p50':>8} {'p95':>8} {'x p50':>6} {'x p95':>6}   goal <= {GOAL_LATENCY:g}x"
    )
    for name, c in lat["cases"].items():
        met = c["ratio_p50"] <= GOAL_LATENCY and c["ratio_p95"] <= GOAL_LATENCY
        goals.append((f"{name}: API <= {GOAL_LATENCY:g}x SQL", met, f"{c['ratio_p50']:.2f}x p50, {c['ratio_p95']:.2f}x p95"))
        print(
            f"   {name:<22} {c['api_p50_ms']:>6.2f}ms {c['api_p95_ms']:>6.2f}ms   {c['sql_p50_ms']:>6.2f}ms {c['sql_p95_ms']:>6.2f}ms"
            f" {c['ratio_p50']:>5.2f}x {c['ratio_p95']:>5.2f}x   {'met' if met else 'MISSED':<11}"
        )
    for name, params in lat.get("case_filters", {}).items():
        shown = params.get("q") or f"target_type={params.get('target_type')} target_id={params.get('target_id')}"
        print(f"   {name}: {shown} (category {params['category']}, the same since and until)")
    p = lat["pieces"]
    print(f"   SQL: {lat['sql']}")
    print(
        "        run with psycopg on an autocommit connection, rows fetched (the API's own query, its JSON text made by PostgreSQL)"
    )
    print(
        f"   pieces of the first page (p50): GET /healthz {p['healthz_ms']:.2f} ms; GET /v1/tenants/{lat['tenant']}/plan"
        f" (+ token lookup) {p['auth_route_ms']:.2f} ms; the API's two queries as its pool runs them (async, autocommit):"
        f" token {p['api_auth_query_ms']:.2f} ms + page {p['api_page_query_ms']:.2f} ms; server execution"
        f" {p['server_execution_ms']:.2f} ms"
    )
    if "collector_cpu_ms_per_page" in p:
        print(f"   the collector's CPU per page, over every timed API request above: {p['collector_cpu_ms_per_page']:.2f} ms")
    print(f"   plan: {p['first_page_plan']}")
    v = p.get("viewer")
    if v:
        met = v["ratio_p50"] <= GOAL_VIEWER and v["ratio_p95"] <= GOAL_VIEWER
        goals.append(
            (
                f"first page, viewer token <= {GOAL_VIEWER:g}x admin token",
                met,
                f"{v['ratio_p50']:.3f}x p50, {v['ratio_p95']:.3f}x p95",
            )
        )
        print(
            f"   first page through a viewer token: {v['viewer_p50_ms']:.2f} / {v['viewer_p95_ms']:.2f} ms against"
            f" {v['admin_p50_ms']:.2f} / {v['admin_p95_ms']:.2f} ms through the admin token (p50 / p95, interleaved):"
            f" {v['ratio_p50']:.3f}x / {v['ratio_p95']:.3f}x, goal <= {GOAL_VIEWER:g}x: {'met' if met else 'MISSED'};"
            f" minting one {v['mint_p50_ms']:.2f} ms p50 (GET .../plan with the admin token: {v['admin_route_p50_ms']:.2f} ms)"
        )
    for line in p.get("profile", []):
        print("   " + line)
    if lat["other_cores"] > NOISY_CORES:
        print(f"   WARNING: other processes used {lat['other_cores']:.2f} cores during these measurements")

    print(
        f"\n2. GET /v1/export?format=csv  tenant {exp['tenant']}, since={exp['filters']['since'][:10]}: {exp['rows']:,} rows,"
        f" read to the end by one client"
    )
    print(
        f"   {'':<26} {'rows/s':>9} {'MB/s':>6} {'x COPY':>7} {'1st row':>8}   {'CPU us/row: client':>18} {'collector':>9}"
        f" {'PostgreSQL':>10}  {'others':>6}"
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for t in exp["transfers"]:
        by_kind.setdefault(t["kind"], []).append(t)

    def median_of(kind: str, key: str) -> float:
        return statistics.median(t[key] for t in by_kind[kind])

    baseline = median_of("COPY export SELECT", "rows_per_s")
    for kind, runs in by_kind.items():
        rate = median_of(kind, "rows_per_s")
        mbs = statistics.median(t["bytes"] / t["seconds"] / 1e6 for t in runs)
        cpu = {k: statistics.median(t["cpu_us_per_row"][k] for t in runs) for k in ("client", "collector", "postgres")}
        others = max(t["other_cores"] for t in runs)
        first = statistics.median(t["first_seconds"] for t in runs)
        each = ", ".join(f"{t['rows_per_s'] / 1e3:.0f}k" for t in runs)
        spread = f"  (runs: {each})" if len(runs) > 1 else ""
        print(
            f"   {kind:<26} {rate:>9,.0f} {mbs:>6.0f} {rate / baseline:>6.2f}x {first:>7.2f}s   {cpu['client']:>18.2f}"
            f" {cpu['collector']:>9.2f}"
            f" {cpu['postgres']:>10.2f}  {others:>6.2f}{spread}"
        )
    ratio = median_of("GET /v1/export", "rows_per_s") / baseline
    goals.append((f"export >= {GOAL_EXPORT:g}x COPY", ratio >= GOAL_EXPORT, f"{ratio:.2f}x"))
    print("   COPY export SELECT = the export's own statement (core/export.py copy_sql), read through psycopg:")
    print(f"     {exp['export_sql']}")
    print(f"     its plan: {exp['plan']}")
    if "stream_export in-process" in by_kind:
        print("   (stream_export in-process is a diagnostic, first round only: the collector's streaming function without HTTP)")
    print(
        f"   COPY raw columns = COPY (SELECT {RAW_COLUMNS} FROM events WHERE <the same> ORDER BY occurred_at, seq) TO STDOUT WITH (FORMAT csv)"
    )
    if any(t["other_cores"] > NOISY_CORES for t in exp["transfers"]):
        print(f"   WARNING: other processes used more than {NOISY_CORES} cores during some of these runs (column 'others')")

    idle = mem["idle_kib"] / 1024
    parts = [f"{m['rows']:,} rows: {m['peak_rss_kib'] / 1024:.0f} MiB" for m in mem["exports"]]
    how = (
        "VmHWM reset before each, and VmRSS sampled every 20 ms"
        if all(m["hwm_reset"] for m in mem["exports"])
        else "VmRSS sampled every 20 ms"
    )
    print(f"\n3. collector peak RSS during a GET /v1/export ({how}): idle {idle:.0f} MiB; {'; '.join(parts)}")
    growth = (mem["exports"][1]["peak_rss_kib"] - mem["exports"][0]["peak_rss_kib"]) / 1024
    goals.append(("constant memory (large - small export peak RSS < 16 MiB)", growth < 16, f"{growth:+.1f} MiB"))

    print("\nsummary")
    for text, met, value in goals:
        print(f"   {text:<58} {'met' if met else 'MISSED'}   {value}")
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="events to load (default 5,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data (default 1)")
    parser.add_argument("--data-dir", help="keep the embedded PostgreSQL here and reuse its data when --events and --seed match")
    parser.add_argument("--reload", action="store_true", help="load the data again even when a matching load is cached")
    parser.add_argument("--load-jobs", type=int, default=min(2, os.cpu_count() or 1), help="connections inserting at once")
    parser.add_argument("--reps", type=int, default=200, help="timed repetitions per latency case (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed repetitions first (default 20)")
    parser.add_argument("--limit", type=int, default=100, help="page size (default 100, the API's default)")
    parser.add_argument("--deep-pages", type=int, default=50, help="pages followed by cursor before the deep page (default 50)")
    parser.add_argument(
        "--export-days", type=int, default=150, help="the large export: the big tenant's last N days (default 150)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each export, interleaved (default 3)")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the two diagnostic exports")
    parser.add_argument(
        "--py-spy", metavar="FILE", help="after the latency runs, profile the collector serving pages (raw stacks to FILE)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="defaults for a smoke run: 100,000 events, 50 repetitions, 20 pages deep, 1 round"
    )
    parser.add_argument(
        "--no-prefix-index", action="store_true", help="name no key in search.details_prefix_keys (their indexes are dropped)"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object on the last line")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (collector.log)")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; options given still win
        parser.set_defaults(events=100_000, reps=50, warmup=10, rounds=1, deep_pages=20)
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except BenchmarkError as exc:
        say(f"benchmark FAILED: {exc}")
        return 1
    goals = report(result)
    if args.json:
        print(json.dumps(result, default=str))
    return 3 if args.strict and not all(met for _t, met, _v in goals) else 0


if __name__ == "__main__":
    sys.exit(main())
