"""Retention: delete what each tenant's plan no longer keeps (architecture.md, "Storage").

Events go in two ways:

- **Whole partitions**, once their month is past the longest retention of any plan: the
  month's dedup keys (``event_ids``) are deleted in batches, then the partition is
  detached (``CONCURRENTLY``: ingest and reads go on) and dropped.
- **Batched deletes** for tenants whose plan keeps less: each batch is one short
  transaction that deletes up to ``batch_size`` of the tenant's events older than its
  cutoff, with their dedup keys; the next partition comes when a batch deletes fewer.

``plan_retention`` decides, purely; ``run_retention`` gathers its inputs from the
database, executes the plan, and records the run in ``retention_runs``. One collector
replica at a time does the work (a session advisory lock); the others skip.

Never on a guess:

- A tenant whose plan is not configured is left untouched, and so is every partition
  holding any of its events (a warning says so).
- If any plan keeps forever, no partition is dropped.
- A partition is dropped only once no event can be filed in it any more: its month must
  also be older than ``ingest.clock_skew.max_past_days`` (an event claiming an older time
  is stored under its received time), so a late event never meets a dropped month.
- Tenants on the longest retention keep their events until their whole month is dropped
  (up to a month longer than the plan says): deleting them row by row would cost all that
  dropping partitions saves. Retention is a minimum, reached within a month.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from otaudit_collector.config import Settings
from otaudit_collector.core.plans import Plan, plans_from
from otaudit_collector.storage.access import list_tenants

__all__ = ["Partition", "TenantDeletion", "RetentionPlan", "plan_retention", "RetentionReport", "TenantReport", "run_retention"]

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6F7461756472  # "otaudr"; the migrations lock on "otaudi"
_MARK = "otaudit retention: dropping"  # comment on a partition whose drop has begun


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: dt.datetime  # inclusive
    upper: dt.datetime  # exclusive
    holds_unknown: bool = False  # holds events of a tenant whose plan is not configured


@dataclass(frozen=True, slots=True)
class TenantDeletion:
    tenant: str
    plan: str
    cutoff: dt.datetime  # events before it go
    partitions: tuple[Partition, ...]  # the kept partitions that may hold them, oldest first


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    now: dt.datetime
    drop_before: dt.datetime | None  # partitions ending at or before it are dropped; None: none ever
    drop: tuple[Partition, ...]
    blocked: tuple[Partition, ...]  # past drop_before, but holding events of a tenant with an unknown plan
    deletions: tuple[TenantDeletion, ...]
    tenants: Mapping[str, str]  # every tenant and its plan
    unknown: Mapping[str, str]  # tenants whose plan is not configured: left untouched


def plan_retention(
    plans: Mapping[str, Plan],
    tenants: Mapping[str, str | None],
    partitions: Iterable[Partition],
    now: dt.datetime,
    *,
    default_plan: str,
    min_age_days: int = 0,
) -> RetentionPlan:
    """What to drop and delete at ``now``. ``tenants`` maps each tenant to its plan (None:
    ``default_plan``); no partition younger than ``min_age_days`` is dropped."""
    effective = {tenant: plan or default_plan for tenant, plan in tenants.items()}
    unknown = {tenant: plan for tenant, plan in effective.items() if plan not in plans}
    days = [p.retention_days for p in plans.values()]
    longest = None if not days or None in days else max(d for d in days if d is not None)
    drop_before = None if longest is None else now - dt.timedelta(days=max(longest, min_age_days))
    ordered = sorted(partitions, key=lambda p: p.lower)
    past = [p for p in ordered if drop_before is not None and p.upper <= drop_before]
    drop = tuple(p for p in past if not p.holds_unknown)
    blocked = tuple(p for p in past if p.holds_unknown)
    kept = [p for p in ordered if p not in drop]
    deletions = []
    for tenant, name in sorted(effective.items()):
        plan = plans.get(name)
        if plan is None or plan.retention_days is None:
            continue
        if longest is not None and plan.retention_days >= longest:
            # Their events go with the partitions, but for those in partitions kept for a
            # tenant with an unknown plan: past the longest retention, deleted row by row.
            if not blocked:
                continue
            cutoff = max(p.upper for p in blocked)
        else:
            cutoff = now - dt.timedelta(days=plan.retention_days)
        holding = tuple(p for p in kept if p.lower < cutoff)
        if holding:
            deletions.append(TenantDeletion(tenant, name, cutoff, holding))
    return RetentionPlan(now, drop_before, drop, blocked, tuple(deletions), effective, unknown)


# -- the report ----------------------------------------------------------------------


@dataclass(slots=True)
class TenantReport:
    tenant: str
    plan: str
    retention_days: int | None
    in_batches: int = 0  # events deleted (or that would be) in batches
    with_partitions: int = 0  # events in the dropped partitions

    @property
    def rows_deleted(self) -> int:
        return self.in_batches + self.with_partitions


@dataclass(slots=True)
class RetentionReport:
    dry_run: bool
    skipped: bool = False  # another run held the lock: nothing was done
    now: dt.datetime | None = None
    drop_before: dt.datetime | None = None
    partitions_dropped: list[str] = field(default_factory=list)
    partitions_blocked: list[str] = field(default_factory=list)
    tenants: dict[str, TenantReport] = field(default_factory=dict)
    untouched: dict[str, str] = field(default_factory=dict)  # tenant -> its unknown plan
    stopped: bool = False  # asked to stop before the end (the collector is shutting down)

    @property
    def rows_deleted(self) -> int:
        return sum(t.rows_deleted for t in self.tenants.values())

    @property
    def outcome(self) -> str:
        """How the run ended, in a word: ``skipped``, ``stopped`` or ``done``."""
        return "skipped" if self.skipped else "stopped" if self.stopped else "done"

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "stopped": self.stopped,
            "now": self.now.isoformat() if self.now else None,
            "drop_before": self.drop_before.isoformat() if self.drop_before else None,
            "partitions_dropped": self.partitions_dropped,
            "partitions_kept_for_unknown_plans": self.partitions_blocked,
            "rows_deleted": self.rows_deleted,
            "tenants": [
                {
                    "tenant": t.tenant,
                    "plan": t.plan,
                    "retention_days": t.retention_days,
                    "rows_deleted": t.rows_deleted,
                    "in_batches": t.in_batches,
                    "with_partitions": t.with_partitions,
                }
                for t in sorted(self.tenants.values(), key=lambda t: t.tenant)
            ],
            "untouched": [{"tenant": t, "plan": p} for t, p in sorted(self.untouched.items())],
        }

    def lines(self) -> list[str]:
        """The report as ``otaudit retention run`` prints it."""
        if self.skipped:
            return ["another retention run is in progress (on another collector?): nothing done"]
        would = "would be " if self.dry_run else ""
        out = ["dry run: nothing is changed"] if self.dry_run else []
        out.append(f"partitions {would}dropped: {', '.join(self.partitions_dropped) or 'none'}")
        if self.partitions_blocked:
            out.append(f"partitions kept for tenants with an unknown plan: {', '.join(self.partitions_blocked)}")
        for t in sorted(self.tenants.values(), key=lambda t: t.tenant):
            keeps = "forever" if t.retention_days is None else f"{t.retention_days} days"
            split = f" ({t.with_partitions} with partitions, {t.in_batches} in batches)" if t.rows_deleted else ""
            out.append(f"{t.tenant}\tplan {t.plan} ({keeps})\t{t.rows_deleted} event(s) {would}deleted{split}")
        for tenant, plan in sorted(self.untouched.items()):
            out.append(f"{tenant}\tplan {plan} (not configured)\tleft untouched")
        out.append(f"{self.rows_deleted} event(s) {would}deleted")
        if self.stopped:
            out.append("stopped early: run it again to finish")
        return out


# -- gathering and executing ---------------------------------------------------------

_PARTITIONS_SQL = r"""
SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz, i.inhdetachpending, obj_description(c.oid, 'pg_class')
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
     LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS b
WHERE i.inhparent = 'events'::regclass
"""
# Tables whose drop began (marked) but that are no longer partitions: detached, not dropped.
_DETACHED_SQL = """
SELECT c.relname FROM pg_class c
WHERE c.relkind = 'r' AND NOT c.relispartition AND obj_description(c.oid, 'pg_class') = %s
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
"""
_KEYS_IN_RANGE_SQL = """
WITH gone AS (
    DELETE FROM event_ids WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM event_ids WHERE occurred_at >= %s AND occurred_at < %s LIMIT %s))
    RETURNING tenant)
SELECT tenant, count(*) FROM gone GROUP BY tenant
"""
# One batch of a tenant's events in one partition, with their dedup keys, in one statement
# (one transaction). A tenant moved to another plan meanwhile is left alone.
_EVENTS_BATCH_SQL = """
WITH gone AS (
    DELETE FROM {part} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {part} WHERE tenant = %(tenant)s AND occurred_at < %(cutoff)s
          AND coalesce((SELECT plan FROM tenants WHERE tenant = %(tenant)s), %(default)s) = %(plan)s
        LIMIT %(n)s))
    RETURNING id, seq),
keys AS (DELETE FROM event_ids k USING gone WHERE k.tenant = %(tenant)s AND k.id = gone.id),
pruned AS (
    INSERT INTO log_pruned (run_id, tenant, seqs)
    SELECT %(run)s, %(tenant)s, range_agg(int8range(seq, seq + 1)) FROM gone HAVING count(*) > 0
    ON CONFLICT (tenant, run_id) DO UPDATE SET seqs = log_pruned.seqs + excluded.seqs)
SELECT count(*) FROM gone
"""
# The seqs of a partition about to be dropped, recorded as pruned (their leaves stay in the log).
_PRUNED_PARTITION_SQL = """
INSERT INTO log_pruned (run_id, tenant, seqs)
SELECT %(run)s, tenant, range_agg(int8range(seq, seq + 1)) FROM {part} GROUP BY tenant
ON CONFLICT (tenant, run_id) DO UPDATE SET seqs = log_pruned.seqs + excluded.seqs
"""


@dataclass(frozen=True, slots=True)
class _Policy:
    plans: Mapping[str, Plan]
    default_plan: str
    batch_size: int
    min_age_days: int

    @classmethod
    def of(cls, settings: Settings) -> _Policy:
        return cls(
            plans_from(settings.raw["plans"]),
            str(settings.raw["default_plan"]),
            int(settings.get("retention", "batch_size")),
            int(settings.get("ingest", "clock_skew", "max_past_days")),
        )

    def tenant(self, tenant: str, plan: str | None = None) -> TenantReport:
        name = plan or self.default_plan
        known = self.plans.get(name)
        return TenantReport(tenant, name, known.retention_days if known else None)


def run_retention(
    conninfo: str,
    settings: Settings,
    *,
    dry_run: bool = False,
    trigger: str = "command",
    now: dt.datetime | None = None,
    stop: threading.Event | None = None,
) -> RetentionReport:
    """Apply retention once (``trigger``: "schedule" or "command"); a dry run only counts.

    ``now`` defaults to the database's clock. ``stop``, when set, ends the run after the
    batch in progress. Raises on database errors, after recording them in ``retention_runs``.
    """
    policy = _Policy.of(settings)
    with psycopg.connect(conninfo, autocommit=True, application_name="otaudit-retention") as conn:
        if not dry_run:
            locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()
            if not (locked and locked[0]):
                log.info("retention: another run is in progress; skipping this one")
                return RetentionReport(dry_run, skipped=True)
        if now is None:
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            now = row[0]
        if dry_run:
            plan, unfinished = _plan(conn, policy, now)
            report = _report(plan, policy, dry_run, unfinished)
            _count(conn, plan, policy, report)
            return report
        run = conn.execute("INSERT INTO retention_runs (trigger) VALUES (%s) RETURNING id", (trigger,)).fetchone()
        assert run is not None
        report = RetentionReport(dry_run)
        try:
            plan, unfinished = _plan(conn, policy, now)
            report = _report(plan, policy, dry_run, unfinished)
            _execute(conn, plan, policy, report, unfinished, stop or threading.Event(), int(run[0]))
        except Exception as exc:
            try:
                _record(conn, run[0], report, f"{type(exc).__name__}: {exc}".strip())
            except psycopg.Error:
                pass  # the connection is gone: the run stays unfinished in the table
            raise
        _record(conn, run[0], report, "stopped before the end: the collector was shutting down" if report.stopped else None)
    log.info(
        "retention run finished",
        extra={"partitions_dropped": report.partitions_dropped, "rows_deleted": report.rows_deleted, "stopped": report.stopped},
    )
    return report


def _plan(conn: psycopg.Connection[Any], policy: _Policy, now: dt.datetime) -> tuple[RetentionPlan, list[str]]:
    """The plan at ``now``, and the tables whose drop an earlier run began but did not finish."""
    tenants = {row.tenant: row.plan or None for row in list_tenants(conn)}
    unknown = sorted(t for t, p in tenants.items() if (p or policy.default_plan) not in policy.plans)
    partitions, unfinished = [], [str(r[0]) for r in conn.execute(_DETACHED_SQL, (_MARK,))]
    for name, lower, upper, pending, comment in conn.execute(_PARTITIONS_SQL).fetchall():
        if pending:  # an interrupted DETACH CONCURRENTLY: ours (marked) is finished, another's left alone
            if comment == _MARK:
                unfinished.append(name)
            continue
        if lower is None or upper is None:
            continue  # bounds otaudit does not make (MINVALUE, MAXVALUE): never touched
        holds = bool(unknown) and _holds_any(conn, name, unknown)
        partitions.append(Partition(name, lower, upper, holds))
    plan = plan_retention(
        policy.plans, tenants, partitions, now, default_plan=policy.default_plan, min_age_days=policy.min_age_days
    )
    if plan.unknown:
        log.warning(
            "retention: tenants whose plan is not configured are left untouched, with every partition holding their events",
            extra={"tenants": dict(plan.unknown), "partitions_kept": [p.name for p in plan.blocked]},
        )
    return plan, unfinished


def _holds_any(conn: psycopg.Connection[Any], partition: str, tenants: list[str]) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE tenant = ANY(%s))").format(sql.Identifier(partition))
    row = conn.execute(query, (tenants,)).fetchone()
    return bool(row and row[0])


def _report(plan: RetentionPlan, policy: _Policy, dry_run: bool, unfinished: list[str]) -> RetentionReport:
    return RetentionReport(
        dry_run,
        now=plan.now,
        drop_before=plan.drop_before,
        partitions_dropped=[*unfinished, *(p.name for p in plan.drop)] if dry_run else [],
        partitions_blocked=[p.name for p in plan.blocked],
        tenants={t: policy.tenant(t, p) for t, p in plan.tenants.items() if t not in plan.unknown},
        untouched=dict(plan.unknown),
    )


def _count(conn: psycopg.Connection[Any], plan: RetentionPlan, policy: _Policy, report: RetentionReport) -> None:
    """What a run would delete, counted; nothing is changed."""
    for part in plan.drop:
        query = sql.SQL("SELECT tenant, count(*) FROM {} GROUP BY tenant").format(sql.Identifier(part.name))
        for tenant, n in conn.execute(query):
            report.tenants.setdefault(tenant, policy.tenant(tenant, plan.tenants.get(tenant))).with_partitions += n
    for deletion in plan.deletions:
        for part in deletion.partitions:
            query = sql.SQL("SELECT count(*) FROM {} WHERE tenant = %s AND occurred_at < %s").format(sql.Identifier(part.name))
            row = conn.execute(query, (deletion.tenant, deletion.cutoff)).fetchone()
            report.tenants[deletion.tenant].in_batches += int(row[0]) if row else 0


def _execute(
    conn: psycopg.Connection[Any],
    plan: RetentionPlan,
    policy: _Policy,
    report: RetentionReport,
    unfinished: list[str],
    stop: threading.Event,
    run_id: int = 0,
) -> None:
    for name in unfinished:
        _drop(conn, name)
        report.partitions_dropped.append(name)
    for part in plan.drop:
        # The dedup keys first: if the run stops here, the partition is still there and the
        # next run starts it again. Then the mark, so that an interrupted detach is finished.
        while not stop.is_set():
            gone = conn.execute(_KEYS_IN_RANGE_SQL, (part.lower, part.upper, policy.batch_size)).fetchall()
            for tenant, n in gone:
                report.tenants.setdefault(tenant, policy.tenant(tenant, plan.tenants.get(tenant))).with_partitions += n
            if sum(n for _, n in gone) < policy.batch_size:
                break
        if stop.is_set():
            report.stopped = True
            return
        # The log keeps these events' leaves: say which seqs retention removed, for 'otaudit verify'.
        conn.execute(sql.SQL(_PRUNED_PARTITION_SQL).format(part=sql.Identifier(part.name)), {"run": run_id})
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(part.name), sql.Literal(_MARK)))
        conn.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {} CONCURRENTLY").format(sql.Identifier(part.name)))
        _drop(conn, part.name)
        report.partitions_dropped.append(part.name)
        log.info("retention: partition dropped", extra={"partition": part.name})
    for deletion in plan.deletions:
        first = conn.execute(
            "SELECT min(occurred_at) FROM events WHERE tenant = %s AND occurred_at < %s", (deletion.tenant, deletion.cutoff)
        ).fetchone()
        if first is None or first[0] is None:
            continue  # nothing to delete: one index probe, not one per partition
        for part in deletion.partitions:
            if part.upper <= first[0]:
                continue
            query = sql.SQL(_EVENTS_BATCH_SQL).format(part=sql.Identifier(part.name))
            params = {
                "tenant": deletion.tenant,
                "cutoff": deletion.cutoff,
                "plan": deletion.plan,
                "default": policy.default_plan,
                "n": policy.batch_size,
                "run": run_id,
            }
            while True:
                if stop.is_set():
                    report.stopped = True
                    return
                row = conn.execute(query, params).fetchone()
                deleted = int(row[0]) if row else 0
                report.tenants[deletion.tenant].in_batches += deleted
                if deleted < policy.batch_size:
                    break


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    """Drop a marked partition: finish its detach if one was interrupted, then the table."""
    pending = conn.execute(
        "SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) AND inhparent = 'events'::regclass", (name,)
    ).fetchone()
    if pending:
        conn.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {} FINALIZE").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def _record(conn: psycopg.Connection[Any], run_id: int, report: RetentionReport, error: str | None) -> None:
    conn.execute(
        "UPDATE retention_runs SET finished_at = clock_timestamp(), partitions_dropped = %s, rows_deleted = %s, error = %s"
        " WHERE id = %s",
        (report.partitions_dropped, report.rows_deleted, error, run_id),
    )
