"""Storage: migrations, partitions, and the per-tenant commit sequence across processes."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from support import CollectorProcess, RunningCollector, good_attributes, record, request, rows
from test_faults import RetryingClient, assert_exactly_once, batches
from test_ingest_clients import grpc_export

from otaudit_collector.app import ensure_partitions
from otaudit_collector.storage.migrate import apply_migrations, available_migrations


def test_migrations_apply_once_and_are_recorded(db: str) -> None:
    assert apply_migrations(db) == []  # the template already has them
    versions = [r["version"] for r in rows(db, "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in available_migrations()]


def test_partitions_exist_ahead_and_are_created_for_late_events(collector: RunningCollector) -> None:
    def partitions() -> set[str]:
        return {
            r["relname"]
            for r in rows(collector.conninfo, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
        }

    now = datetime.now(UTC)
    ahead = (now.replace(day=1) + timedelta(days=40)).strftime("events_%Y_%m")
    assert ahead in partitions()
    ensure_partitions(collector.conninfo, 2)  # idempotent
    old = now - timedelta(days=300)
    response = grpc_export(collector.grpc_target, request([record(time_ns=int(old.timestamp() * 1e9))]))
    assert response.partial_success.rejected_log_records == 0
    assert old.strftime("events_%Y_%m") in partitions()
    stored = rows(collector.conninfo)
    assert stored[0]["occurred_at"].strftime("%Y-%m") == old.strftime("%Y-%m") and stored[0]["flags"] == []


def test_same_id_in_one_request_and_across_tenants(collector: RunningCollector) -> None:
    uid = "0193b3c4-aaaa-7000-8000-000000000001"
    same = [record(attrs=good_attributes(**{"log.record.uid": uid})) for _ in range(3)]
    other_tenant = record(attrs=good_attributes(**{"log.record.uid": uid, "audit.tenant.id": "globex"}))
    grpc_export(collector.grpc_target, request([*same, other_tenant]))
    stored = rows(collector.conninfo)
    # Dedup is per tenant: one tenant cannot suppress another's event by reusing its id.
    assert [(r["tenant"], r["id"], r["seq"]) for r in stored] == [("acme", uid, 1), ("globex", uid, 1)]


@pytest.mark.slow
def test_sequence_is_gap_free_in_commit_order_across_processes(db: str, tmp_path: Path) -> None:
    """Two collector processes, three tenants, concurrent clients; a reader checks every snapshot."""
    procs = [
        CollectorProcess(
            ["serve", "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"], cwd=tmp_path
        ).start()
        for _ in range(2)
    ]
    tenants = ["acme", "globex", "initech"]
    clients = [RetryingClient(procs[n % 2].grpc_target, batches(40, 25, tenant=tenants[n % 3])) for n in range(6)]
    violations: list[str] = []
    snapshots = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal snapshots
        with psycopg.connect(db, autocommit=True) as conn:
            while not stop.is_set():
                # In any snapshot, a tenant's visible events are exactly seq 1..max: a gap would
                # mean a later seq committed before an earlier one (a feed reader would skip it).
                for tenant, n, top in conn.execute("SELECT tenant, count(*), max(seq) FROM events GROUP BY tenant"):
                    if n != top:
                        violations.append(f"{tenant}: {n} events visible but max seq {top}")
                snapshots += 1
                time.sleep(0.005)

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join()
    finally:
        stop.set()
        watcher.join()
        for proc in procs:
            proc.terminate()
    assert not violations, violations[:5]
    assert snapshots > 20
    assert_exactly_once(db, 6 * 40 * 25, tenants=3)


def test_same_request_to_two_collectors_at_once_is_stored_once(db: str) -> None:
    """A client that retried against another replica: both commit the same events concurrently."""
    from support import settings_for

    first, second = RunningCollector(settings_for(db)), RunningCollector(settings_for(db))
    try:
        bodies = batches(30, 40)
        clients = [RetryingClient(c.grpc_target, bodies).start() for c in (first, second) for _ in range(2)]
        for client in clients:
            client.join()
        assert all(c.acknowledged == len(bodies) for c in clients)
        assert_exactly_once(db, 30 * 40)
        writers = (first.collector.writer.stats, second.collector.writer.stats)
        assert sum(w.events_written for w in writers) == 30 * 40
        assert sum(w.duplicates for w in writers) == 3 * 30 * 40  # every copy beyond the first was recognized
    finally:
        first.stop()
        second.stop()


def test_otaudit_migrate_on_an_empty_database(pg_server: str) -> None:
    from psycopg.conninfo import make_conninfo
    from support import otaudit

    name = f"otaudit_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(pg_server, dbname=name)
    try:
        first = otaudit("migrate", "--database-url", url)
        assert first.returncode == 0, first.stderr
        assert "applied 0001_events" in first.stdout
        again = otaudit("migrate", "--database-url", url)
        assert again.returncode == 0 and "database schema is up to date" in again.stdout
        tables = {r["tablename"] for r in rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"events", "event_ids", "tenant_seq", "rejects", "schema_migrations"} <= tables
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
