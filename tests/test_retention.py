"""Retention: partitions dropped past the longest retention, batched deletes for shorter plans.

Real PostgreSQL throughout. Most tests fix ``now`` at 2021-03-15 12:00 UTC with events from
April 2019 on, so that every count is exact and the partitions the collector made around
today's date stay out of the way.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import RunningCollector, good_attributes, otaudit, record, request, rows, settings_for, wait_until
from test_ingest_clients import grpc_export

from otaudit_collector.config import Settings
from otaudit_collector.core.plans import Plan
from otaudit_collector.storage.retention import Partition, plan_retention, run_retention

NOW = datetime(2021, 3, 15, 12, tzinfo=UTC)
PLANS = {
    "short": {"categories": ["*"], "retention_days": 30},
    "mid": {"categories": ["*"], "retention_days": 90},
    "long": {"categories": ["*"], "retention_days": 365},
}
# Every 5 days from April 2019 to March 2021: six events a month, 141 in all, the last
# on 2021-03-11 (before NOW).
TIMES = [datetime(y, m, d, tzinfo=UTC) for y in (2019, 2020, 2021) for m in range(1, 13) for d in (1, 6, 11, 16, 21, 26)]
TIMES = [t for t in TIMES if datetime(2019, 4, 1, tzinfo=UTC) <= t < NOW]


def month(year: int, mon: int) -> datetime:
    return datetime(year, mon, 1, tzinfo=UTC)


def settings(db: str, plans: Mapping[str, Any] = PLANS, **extra: Any) -> Settings:
    overrides: dict[tuple[str, ...], Any] = {
        ("plans",): dict(plans),
        ("default_plan",): "mid" if "mid" in plans else next(iter(plans)),
        ("retention", "batch_size"): 4,
        ("ingest", "clock_skew", "max_past_days"): 100,
    }
    overrides.update({tuple(k.split("__")): v for k, v in extra.items()})
    return settings_for(db, overrides)


def store(db: str, tenant: str, times: Iterable[datetime], *, plan: str | None = None) -> list[str]:
    """Store events straight into events and event_ids, as the writer does; returns their ids."""
    times = list(times)
    ids = [f"{tenant}-{t:%Y%m%d}-{n}" for n, t in enumerate(times)]
    with psycopg.connect(db) as conn:
        for start in sorted({month(t.year, t.month) for t in times}):
            conn.execute("SELECT otaudit_ensure_partition(%s)", (start,))
        row = conn.execute(
            "INSERT INTO tenant_seq AS s (tenant, last_seq) VALUES (%s, %s)"
            " ON CONFLICT (tenant) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq RETURNING last_seq",
            (tenant, len(times)),
        ).fetchone()
        assert row is not None
        first = row[0] - len(times)
        with conn.cursor() as cur:
            columns = "tenant, seq, id, occurred_at, received_at, category, event, outcome, doc"
            with cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
                for n, (uid, at) in enumerate(zip(ids, times, strict=True)):
                    doc = json.dumps({"id": uid, "tenant": tenant})
                    copy.write_row((tenant, first + n + 1, uid, at, at, "accounts_configuration", "updateRole", "success", doc))
            with cur.copy("COPY event_ids (tenant, id, occurred_at) FROM STDIN") as copy:
                for uid, at in zip(ids, times, strict=True):
                    copy.write_row((tenant, uid, at))
        if plan is not None:
            conn.execute("INSERT INTO tenants (tenant, plan) VALUES (%s, %s)", (tenant, plan))
    return ids


def kept(db: str) -> dict[str, int]:
    return {r["tenant"]: r["n"] for r in rows(db, "SELECT tenant, count(*) AS n FROM events GROUP BY tenant")}


def partitions(db: str) -> set[str]:
    found = rows(
        db, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
    )
    return {r["relname"] for r in found}


def tables(db: str) -> set[str]:
    return {r["relname"] for r in rows(db, "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname LIKE 'events%'")}


def keys_match_events(db: str) -> bool:
    events = rows(db, "SELECT tenant, id, occurred_at FROM events ORDER BY 1, 2")
    keys = rows(db, "SELECT tenant, id, occurred_at FROM event_ids ORDER BY 1, 2")
    return events == keys


def snapshot(db: str) -> tuple[Any, ...]:
    return (
        rows(db, "SELECT tenant, id FROM events ORDER BY 1, 2"),
        rows(db, "SELECT tenant, id FROM event_ids ORDER BY 1, 2"),
        tables(db),
        rows(db, "SELECT * FROM retention_runs"),
    )


@pytest.fixture
def trail(db: str) -> str:
    """Four tenants: acme on short (30 days), globex on long (365), initech on the default
    (mid, 90 days, no tenants row), and umbrella on 'gold', a plan the configuration lacks,
    with two events in June 2019 only."""
    store(db, "acme", TIMES, plan="short")
    store(db, "globex", TIMES, plan="long")
    store(db, "initech", TIMES)
    store(db, "umbrella", [datetime(2019, 6, 3, tzinfo=UTC), datetime(2019, 6, 20, tzinfo=UTC)], plan="gold")
    return db


# -- the plan, pure ------------------------------------------------------------------


def plans_of(**days: int | None) -> dict[str, Plan]:
    return {name: Plan(name, ("*",), d, None) for name, d in days.items()}


def monthly(first: datetime, count: int) -> list[Partition]:
    out = []
    for n in range(count):
        y, m = divmod(first.month - 1 + n, 12)
        lower = month(first.year + y, m + 1)
        y, m = divmod(first.month + n, 12)
        out.append(Partition(f"p{n}", lower, month(first.year + y, m + 1)))
    return out


def test_the_plan_drops_months_past_the_longest_retention_and_deletes_shorter_plans_in_batches() -> None:
    parts = monthly(month(2019, 4), 24)
    plan = plan_retention(plans_of(short=30, long=365), {"a": "short", "b": "long", "c": None}, parts, NOW, default_plan="short")
    assert plan.drop_before == NOW - timedelta(days=365)
    assert [p.lower for p in plan.drop] == [month(2019, 4 + n) if n < 9 else month(2020, n - 8) for n in range(11)]
    assert plan.drop[-1].upper == month(2020, 3)  # March 2020 ends after the cutoff (2020-03-15): kept
    # The long plan's events go with their partitions; the short plan's (c: the default) in batches.
    assert [(d.tenant, d.cutoff) for d in plan.deletions] == [("a", NOW - timedelta(days=30)), ("c", NOW - timedelta(days=30))]
    assert [p.lower for p in plan.deletions[0].partitions] == [
        month(2020, 3 + n) if n < 10 else month(2021, n - 9) for n in range(12)
    ]

    # No partition is dropped while an event may still be filed in it (ingest.clock_skew.max_past_days).
    later = plan_retention(plans_of(short=30, long=365), {}, parts, NOW, default_plan="short", min_age_days=400)
    assert later.drop_before == NOW - timedelta(days=400) and later.drop[-1].upper == month(2020, 2)


def test_the_plan_never_drops_for_a_forever_plan_and_never_guesses_an_unknown_plan() -> None:
    parts = monthly(month(2019, 4), 24)
    tenants = {"a": "short", "b": "long", "x": "gold"}
    forever = plan_retention(plans_of(short=30, long=365, archive=None), tenants, parts, NOW, default_plan="short")
    assert forever.drop_before is None and forever.drop == () and forever.blocked == ()
    assert [(d.tenant, d.cutoff) for d in forever.deletions] == [
        ("a", NOW - timedelta(days=30)),
        ("b", NOW - timedelta(days=365)),
    ]
    assert forever.unknown == {"x": "gold"}

    # A partition holding events of the tenant with an unknown plan is kept; the long plan's
    # events in it (past its retention) are deleted in batches instead.
    held = [Partition(p.name, p.lower, p.upper, holds_unknown=p.lower == month(2019, 6)) for p in parts]
    plan = plan_retention(plans_of(short=30, long=365), tenants, held, NOW, default_plan="short")
    assert [p.lower for p in plan.blocked] == [month(2019, 6)] and len(plan.drop) == 10
    by_tenant = {d.tenant: d for d in plan.deletions}
    assert set(by_tenant) == {"a", "b"}
    assert by_tenant["b"].cutoff == month(2019, 7) and [p.lower for p in by_tenant["b"].partitions] == [month(2019, 6)]


# -- a run against the database ------------------------------------------------------


def test_a_run_keeps_exactly_what_each_plan_keeps(trail: str) -> None:
    db = trail
    before = partitions(db)
    report = run_retention(db, settings(db), now=NOW)

    dropped = {f"events_{t:%Y_%m}" for t in TIMES if t < month(2020, 3)} - {"events_2019_06"}
    assert set(report.partitions_dropped) == dropped and len(dropped) == 10
    assert partitions(db) == before - dropped and not tables(db) & dropped
    # acme keeps 30 days; initech (the default plan, mid) 90; globex (the longest, 365) keeps
    # whole months: from March 2020, whose partition ends after its cutoff. umbrella's plan is
    # unknown: untouched, and so is June 2019, whose partition holds its events.
    expected = {
        "acme": sum(t >= NOW - timedelta(days=30) for t in TIMES),
        "initech": sum(t >= NOW - timedelta(days=90) for t in TIMES),
        "globex": sum(t >= month(2020, 3) for t in TIMES),
        "umbrella": 2,
    }
    assert expected == {"acme": 6, "initech": 18, "globex": 75, "umbrella": 2}
    assert kept(db) == expected
    assert rows(db, "SELECT min(occurred_at) AS t FROM events WHERE tenant = 'globex'")[0]["t"] == month(2020, 3)
    assert keys_match_events(db)  # every deleted event's dedup key went with it, no other

    assert report.untouched == {"umbrella": "gold"} and report.partitions_blocked == ["events_2019_06"]
    acme, globex = report.tenants["acme"], report.tenants["globex"]
    assert (acme.with_partitions, acme.in_batches) == (60, len(TIMES) - 60 - 6)
    assert (globex.with_partitions, globex.in_batches) == (60, 6)  # June 2019 went row by row
    assert report.rows_deleted == 3 * len(TIMES) - sum(expected.values()) + 2

    [run] = rows(db, "SELECT * FROM retention_runs")
    assert run["trigger"] == "command" and run["finished_at"] is not None and run["error"] is None
    assert set(run["partitions_dropped"]) == dropped and run["rows_deleted"] == report.rows_deleted

    again = run_retention(db, settings(db), now=NOW)  # nothing left to do
    assert again.partitions_dropped == [] and again.rows_deleted == 0 and kept(db) == expected


def test_a_kept_event_is_still_deduplicated_when_sent_again(trail: str) -> None:
    db = trail
    run_retention(db, settings(db), now=NOW)
    oldest = rows(db, "SELECT id FROM events WHERE tenant = 'globex' ORDER BY occurred_at LIMIT 1")[0]["id"]
    running = RunningCollector(settings(db, retention__enabled=False))
    try:
        attrs = good_attributes(**{"log.record.uid": oldest, "audit.tenant.id": "globex"})
        response = grpc_export(running.grpc_target, request([record(attrs=attrs, time_ns=int(month(2020, 3).timestamp() * 1e9))]))
    finally:
        running.stop()
    assert response.partial_success.rejected_log_records == 0
    assert kept(db)["globex"] == 75
    assert rows(db, "SELECT count(*) AS n FROM events WHERE id = %s", (oldest,))[0]["n"] == 1


def test_a_dry_run_changes_nothing_and_reports_what_a_run_does(trail: str) -> None:
    db = trail
    before = snapshot(db)
    dry = run_retention(db, settings(db), now=NOW, dry_run=True)
    assert snapshot(db) == before
    real = run_retention(db, settings(db), now=NOW)
    assert dry.rows_deleted > 0 and dry.as_json() == {**real.as_json(), "dry_run": True}


def test_a_plan_that_keeps_forever_prevents_dropping(trail: str) -> None:
    db = trail
    plans = {**PLANS, "archive": {"categories": ["*"], "retention_days": None}}
    before = partitions(db)
    report = run_retention(db, settings(db, plans), now=NOW)
    assert report.partitions_dropped == [] and report.drop_before is None and partitions(db) == before
    # Nothing is dropped, so the longest finite plan is deleted to the day too.
    assert kept(db) == {
        "acme": sum(t >= NOW - timedelta(days=30) for t in TIMES),
        "initech": sum(t >= NOW - timedelta(days=90) for t in TIMES),
        "globex": sum(t >= NOW - timedelta(days=365) for t in TIMES),
        "umbrella": 2,
    }
    assert keys_match_events(db)


def test_drops_an_earlier_run_left_half_done_are_finished(trail: str) -> None:
    """A run that died after detaching a partition, and one whose DETACH CONCURRENTLY was
    cancelled (the partition stays 'detach pending'): the next run drops both."""
    db = trail
    mark = "COMMENT ON TABLE {} IS 'otaudit retention: dropping'"
    with psycopg.connect(db, autocommit=True) as conn:
        for name, lower, upper in (
            ("events_2019_04", month(2019, 4), month(2019, 5)),
            ("events_2019_05", month(2019, 5), month(2019, 6)),
        ):
            conn.execute("DELETE FROM event_ids WHERE occurred_at >= %s AND occurred_at < %s", (lower, upper))
            conn.execute(mark.format(name))
        conn.execute("ALTER TABLE events DETACH PARTITION events_2019_04")
        with psycopg.connect(db) as reader:  # its open transaction makes the concurrent detach wait
            reader.execute("SELECT count(*) FROM events")
            failures: list[Exception] = []

            def detach() -> None:
                with psycopg.connect(db, autocommit=True) as other:
                    try:
                        other.execute("ALTER TABLE events DETACH PARTITION events_2019_05 CONCURRENTLY")
                    except psycopg.errors.QueryCanceled as exc:
                        failures.append(exc)

            detaching = threading.Thread(target=detach)
            detaching.start()
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE events DETACH%' AND wait_event_type = 'Lock'"
            )
            wait_until(lambda: rows(db, waiting), what="the detach to wait")
            conn.execute(f"SELECT pg_cancel_backend(pid) FROM ({waiting}) w")
            detaching.join(30)
        assert failures
    pending = rows(db, "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'events_2019_05'::regclass")
    assert pending == [{"inhdetachpending": True}] and "events_2019_04" in tables(db)

    report = run_retention(db, settings(db), now=NOW)
    assert {"events_2019_04", "events_2019_05"} <= set(report.partitions_dropped)
    assert not tables(db) & {"events_2019_04", "events_2019_05"}
    assert kept(db) == {"acme": 6, "initech": 18, "globex": 75, "umbrella": 2} and keys_match_events(db)


def test_only_one_run_at_a_time_does_the_work(trail: str) -> None:
    db = trail
    results: list[Any] = []
    with psycopg.connect(db) as blocker:
        # The first run takes the lock, then waits on this table lock to record itself.
        blocker.execute("LOCK TABLE retention_runs IN EXCLUSIVE MODE")
        first = threading.Thread(target=lambda: results.append(run_retention(db, settings(db), now=NOW)))
        first.start()
        wait_until(
            lambda: rows(
                db,
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ),
            what="the first run's lock",
        )
        second = run_retention(db, settings(db), now=NOW)
        assert second.skipped and second.rows_deleted == 0 and second.lines()[0].startswith("another retention run")
        assert kept(db)["acme"] == len(TIMES)
    first.join(60)
    [report] = results
    assert not report.skipped and kept(db)["acme"] == 6
    assert len(rows(db, "SELECT * FROM retention_runs")) == 1


def test_the_command_prints_per_tenant_what_it_deletes(db: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old, mid, recent = now - timedelta(days=800), now - timedelta(days=200), now - timedelta(days=10)
    store(db, "acme", [old, mid, recent], plan="short")
    store(db, "globex", [old, mid, recent], plan="long")
    config = tmp_path / "otaudit.yaml"
    config.write_text(json.dumps({"plans": PLANS, "default_plan": "long", "ingest": {"clock_skew": {"max_past_days": 100}}}))
    args = ("retention", "run", "--config", str(config), "--database-url", db)
    part = f"events_{old:%Y_%m}"

    done = otaudit(*args, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "dry run: nothing is changed",
        f"partitions would be dropped: {part}",
        "acme\tplan short (30 days)\t2 event(s) would be deleted (1 with partitions, 1 in batches)",
        "globex\tplan long (365 days)\t1 event(s) would be deleted (1 with partitions, 0 in batches)",
        "3 event(s) would be deleted",
    ]
    assert kept(db) == {"acme": 3, "globex": 3}

    done = otaudit(*args, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["dry_run"], report["partitions_dropped"], report["rows_deleted"]) == (False, [part], 3)
    assert [(t["tenant"], t["rows_deleted"], t["in_batches"]) for t in report["tenants"]] == [("acme", 2, 1), ("globex", 1, 0)]
    assert kept(db) == {"acme": 1, "globex": 2}
    assert [r["trigger"] for r in rows(db, "SELECT trigger FROM retention_runs")] == ["command"]


def test_the_collector_runs_retention_on_schedule_and_survives_a_failure(db: str, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.now(UTC)
    store(db, "acme", [now - timedelta(days=800), now - timedelta(days=200), now - timedelta(days=10)], plan="short")
    with psycopg.connect(db) as conn:  # every run fails until the table is back
        conn.execute("ALTER TABLE retention_runs RENAME TO retention_runs_away")
    caplog.set_level(logging.ERROR, logger="otaudit")
    running = RunningCollector(settings(db, retention__interval_seconds=0.05))
    try:
        wait_until(lambda: "retention run failed; will try again next interval" in caplog.text, what="a failed run")
        assert kept(db) == {"acme": 3} and running.collector.not_ready() == []
        with psycopg.connect(db) as conn:
            conn.execute("ALTER TABLE retention_runs_away RENAME TO retention_runs")
        wait_until(
            lambda: rows(db, "SELECT 1 FROM retention_runs WHERE finished_at IS NOT NULL AND error IS NULL"),
            what="a scheduled run",
        )
        assert kept(db) == {"acme": 1}
        assert {r["trigger"] for r in rows(db, "SELECT trigger FROM retention_runs")} == {"schedule"}
    finally:
        running.stop()


def test_retention_can_be_switched_off(db: str) -> None:
    running = RunningCollector(settings(db, retention__enabled=False))
    try:
        names = {task.get_name() for task in running.collector._tasks}
        assert "otaudit-partitions" in names and "otaudit-retention" not in names
    finally:
        running.stop()
