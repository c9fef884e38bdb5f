"""Every table keyed and unique by tenant first, so that Citus can distribute by tenant (issue 16).

The migrated schema is read from pg_catalog and held to ``storage/distribution.py``: every table
(a partitioned table's partitions too) is in exactly one of ``DISTRIBUTED`` and ``REFERENCE``; a
distributed table has a NOT NULL text ``tenant`` column leading its primary key and every unique
index, and its foreign keys to other distributed tables include it; a reference table has no
foreign key to a distributed one. A new table, key or index that breaks this fails here with what
to do. The same check is run on the schema before migration 0016, where it must find the four
tables that were not tenant-first; and 0016 is applied to a database with rows, which it keeps.

Only the schema's property is tested: Citus itself is not installed here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support import rows

from otaudit_collector.storage import migrate
from otaudit_collector.storage.distribution import DISTRIBUTED, DISTRIBUTION_COLUMN, REFERENCE

MODULE = "collector/otaudit_collector/storage/distribution.py"
COLUMN = DISTRIBUTION_COLUMN
RULE = (
    f"a table holding tenants' rows needs a NOT NULL text column '{COLUMN}' that is the first column of its primary key"
    f" and of every unique index, and that every foreign key to another distributed table includes"
)


@dataclass(frozen=True, slots=True)
class _Table:
    oid: int
    name: str
    schema: str
    kind: str  # 'r' a table, 'p' a partitioned table
    root: str  # the partitioned table a partition belongs to, else its own name
    is_partition: bool


def _tables(conn: psycopg.Connection[Any]) -> list[_Table]:
    found = conn.execute(
        """
        SELECT c.oid, c.relname, n.nspname, c.relkind, r.relname, c.relispartition
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class r ON r.oid = coalesce(pg_partition_root(c.oid), c.oid)
        WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
        ORDER BY c.relname
        """
    ).fetchall()
    return [_Table(int(r[0]), r[1], r[2], r[3], r[4], bool(r[5])) for r in found]


def _tenant_column(conn: psycopg.Connection[Any], oid: int) -> tuple[int, str, bool] | None:
    """(attnum, type, NOT NULL) of the table's tenant column, or None."""
    row = conn.execute(
        "SELECT attnum, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
        " WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (oid, COLUMN),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), bool(row[2]))


def key_problems(conninfo: str) -> list[str]:
    """Every way the schema at ``conninfo`` breaks the rule, each as a sentence saying what to do."""
    problems: list[str] = []
    with psycopg.connect(conninfo) as conn:
        tables = _tables(conn)
        by_oid = {t.oid: t for t in tables}
        names = {t.name for t in tables if not t.is_partition}
        partitions = {t.name for t in tables if t.is_partition}

        for both in sorted(DISTRIBUTED & REFERENCE.keys()):
            problems.append(f"table {both} is in both DISTRIBUTED and REFERENCE of {MODULE}: keep it in one")
        for listed in sorted((DISTRIBUTED | REFERENCE.keys()) & partitions):
            problems.append(
                f"{listed} is a partition: remove it from {MODULE}, partitions follow their partitioned table's classification"
            )
        for stale in sorted((DISTRIBUTED | REFERENCE.keys()) - names - partitions):
            problems.append(f"{MODULE} classifies {stale}, which the migrations do not create: remove it there")
        for table in tables:
            if table.schema != "public":
                problems.append(f"table {table.schema}.{table.name} is outside the public schema, where otaudit keeps its tables")
            if table.root not in DISTRIBUTED and table.root not in REFERENCE:
                problems.append(
                    f"table {table.name} is classified in neither DISTRIBUTED nor REFERENCE of {MODULE}. If it holds a"
                    f" tenant's rows, add it to DISTRIBUTED ({RULE}); if it is small and global (the same rows whatever"
                    " the tenant, copied to every node), add it to REFERENCE with a one-line reason."
                )
        distributed = {oid for oid, t in by_oid.items() if t.root in DISTRIBUTED}
        reference = {oid for oid, t in by_oid.items() if t.root in REFERENCE}

        tenant_at: dict[int, int] = {}
        for oid in sorted(distributed, key=lambda o: by_oid[o].name):
            table = by_oid[oid]
            column = _tenant_column(conn, oid)
            if column is None:
                problems.append(f"distributed table {table.name} has no '{COLUMN}' column: {RULE}")
                continue
            attnum, type_name, not_null = column
            tenant_at[oid] = attnum
            if type_name != "text" or not not_null:
                problems.append(
                    f"distributed table {table.name}: '{COLUMN}' is {type_name}{'' if not_null else ', nullable'};"
                    " it must be text NOT NULL, like every other distributed table's (colocated tables share the column's type)"
                )
            key = conn.execute(
                "SELECT conkey, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s AND contype = 'p'", (oid,)
            ).fetchone()
            if key is None:
                if table.kind != "p" and not table.is_partition:
                    problems.append(f"distributed table {table.name} has no primary key: give it one led by '{COLUMN}'")
                # A partitioned table's key would have to hold its partition column (events: occurred_at);
                # events has none, its uniqueness lives in event_ids (tenant, id).
            elif key[0][0] != attnum:
                problems.append(f"distributed table {table.name}: its {key[1]} does not start with '{COLUMN}': {RULE}")
            for indkey, indexdef in conn.execute(
                "SELECT string_to_array(i.indkey::text, ' ')::int[], pg_get_indexdef(i.indexrelid) FROM pg_index i"
                " WHERE i.indrelid = %s AND (i.indisunique OR i.indisexclusion) AND NOT i.indisprimary",
                (oid,),
            ):
                if indkey[0] != attnum:
                    problems.append(
                        f"distributed table {table.name}: unique index `{indexdef}` does not start with '{COLUMN}': {RULE}"
                        " (a unique index that cannot lead with it is not unique per node: make it a plain index, or"
                        " reconsider the table's classification)"
                    )

        for conrelid, confrelid, conkey, confkey, definition, name in conn.execute(
            "SELECT conrelid, confrelid, conkey, confkey, pg_get_constraintdef(oid), conname FROM pg_constraint WHERE contype = 'f'"
        ):
            source, target = by_oid.get(conrelid), by_oid.get(confrelid)
            if source is None or target is None:
                continue
            if conrelid in reference and confrelid in distributed:
                problems.append(
                    f"reference table {source.name} has foreign key {name} to distributed table {target.name}: Citus cannot"
                    " keep it (a reference table's rows are on every node); drop it, or distribute the table by tenant"
                )
            elif conrelid in distributed and confrelid in distributed:
                pair = (tenant_at.get(conrelid), tenant_at.get(confrelid))
                if None in pair or pair not in zip(conkey, confkey, strict=True):
                    problems.append(
                        f"foreign key {name} of {source.name} ({definition}) does not pair {source.name}.{COLUMN} with"
                        f" {target.name}.{COLUMN}: a key between distributed tables must include the tenant on both sides"
                    )
    return problems


def _fail_message(problems: list[str]) -> str:
    return "the schema is not tenant-first where Citus needs it to be:\n  - " + "\n  - ".join(problems)


def test_every_table_is_classified_and_distributed_ones_are_keyed_by_tenant_first(db: str) -> None:
    migrate.apply_migrations(db)  # the fixture's template has them: nothing pending
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT otaudit_ensure_partition(now())")
        conn.execute("SELECT otaudit_ensure_partition('2001-01-15T00:00:00Z')")
        partitions = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass").fetchone()
    assert partitions is not None and partitions[0] >= 2, "the check must see events' partitions too"
    problems = key_problems(db)
    assert not problems, _fail_message(problems)


def test_a_new_unclassified_table_fails_with_what_to_do(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE widgets (id text PRIMARY KEY, tenant text NOT NULL)")
        conn.execute("CREATE UNIQUE INDEX tenant_seq_last ON tenant_seq (last_seq)")
    problems = key_problems(db)
    assert len(problems) == 2, _fail_message(problems)
    assert "table widgets is classified in neither DISTRIBUTED nor REFERENCE" in problems[0]
    assert "add it to DISTRIBUTED" in problems[0] and "add it to REFERENCE with a one-line reason" in problems[0]
    assert "tenant_seq: unique index `CREATE UNIQUE INDEX tenant_seq_last" in problems[1]


# -- the schema before 0016, and 0016 on a database with rows ---------------------------------


@pytest.fixture
def before_0016(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database migrated up to 0015 only, as an installation had it before 0016."""
    name = f"otaudit_keys_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    conninfo = make_conninfo(pg_server, dbname=name)
    everything = migrate.available_migrations()
    assert [m.name for m in everything if m.version == 16] == ["tenant_first_keys"]
    monkeypatch.setattr(migrate, "available_migrations", lambda: [m for m in everything if m.version < 16])
    migrate.apply_migrations(conninfo)
    monkeypatch.undo()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT otaudit_ensure_partition(now())")
    yield conninfo
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_check_finds_what_was_not_tenant_first_before_0016(before_0016: str) -> None:
    problems = key_problems(before_0016)
    text = "\n".join(problems)
    for expected in (
        "distributed table export_chunks has no 'tenant' column",
        "distributed table export_jobs: its PRIMARY KEY (id) does not start with 'tenant'",
        "distributed table log_pruned: its PRIMARY KEY (run_id, tenant) does not start with 'tenant'",
        "distributed table rejects: 'tenant' is text, nullable",
        "distributed table rejects: its PRIMARY KEY (id) does not start with 'tenant'",
        "unique index `CREATE UNIQUE INDEX rejects_fingerprint_key ON public.rejects USING btree (fingerprint)`",
        "foreign key export_chunks_job_id_fkey of export_chunks (FOREIGN KEY (job_id) REFERENCES export_jobs(id) ON DELETE"
        " CASCADE) does not pair export_chunks.tenant with export_jobs.tenant",
    ):
        assert expected in text, f"{expected!r} not found in:\n{text}"
    assert len(problems) == 7, text


def _bytes(n: int) -> bytes:
    return bytes([n]) * 32


def test_0016_keeps_every_row_and_the_keys_work_per_tenant(before_0016: str) -> None:
    db = before_0016
    with psycopg.connect(db, autocommit=True) as conn:
        for tenant, fingerprint in ((None, 1), ("acme", 2), ("globex", 3)):
            conn.execute(
                "INSERT INTO rejects (tenant, reasons, resource, record, fingerprint) VALUES (%s, '{bad}', '', 'r', %s)",
                (tenant, _bytes(fingerprint)),
            )
        for job, tenant in (("exp_a", "acme"), ("exp_g", "globex")):
            conn.execute(
                "INSERT INTO export_jobs (id, tenant, token_id, format, filters, state) VALUES (%s, %s, 't', 'csv', '{}', 'done')",
                (job, tenant),
            )
            for n in range(3):
                conn.execute("INSERT INTO export_chunks (job_id, n, data) VALUES (%s, %s, %s)", (job, n, f"{job}-{n}".encode()))
        (run,) = conn.execute("INSERT INTO retention_runs (trigger) VALUES ('command') RETURNING id").fetchone()  # type: ignore[misc]
        for tenant in ("acme", "globex"):
            conn.execute("INSERT INTO log_pruned (run_id, tenant, seqs) VALUES (%s, %s, '{[1,5)}')", (run, tenant))
        before = {t: rows(db, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("rejects", "export_jobs", "log_pruned")}
        chunks_before = rows(db, "SELECT job_id, n, data FROM export_chunks ORDER BY 1, 2")

    assert [m.version for m in migrate.apply_migrations(db)] == [16]
    assert key_problems(db) == []

    before["rejects"] = [{**r, "tenant": r["tenant"] or ""} for r in before["rejects"]]  # naming none: filed under ''
    for table, kept in before.items():
        assert rows(db, f"SELECT * FROM {table} ORDER BY 1, 2") == kept, table
    assert rows(db, "SELECT job_id, n, data, tenant FROM export_chunks ORDER BY 1, 2") == [
        {**c, "tenant": "acme" if c["job_id"] == "exp_a" else "globex"} for c in chunks_before
    ]

    with psycopg.connect(db, autocommit=True) as conn:
        insert = (
            "INSERT INTO rejects (tenant, reasons, resource, record, fingerprint) VALUES (%s, '{bad}', '', 'r', %s)"
            " ON CONFLICT (tenant, fingerprint) DO NOTHING RETURNING id"
        )
        assert conn.execute(insert, ("acme", _bytes(2))).fetchone() is None  # quarantined once per tenant
        assert conn.execute(insert, ("", _bytes(1))).fetchone() is None
        assert conn.execute(insert, ("globex", _bytes(2))).fetchone() is not None
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute(insert, (None, _bytes(9)))
        # A job's chunks belong to the job of their own tenant, and go with it.
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO export_chunks (tenant, job_id, n, data) VALUES ('globex', 'exp_a', 9, 'x')")
        conn.execute("DELETE FROM export_jobs WHERE tenant = 'acme' AND id = 'exp_a'")
        assert conn.execute("SELECT DISTINCT job_id FROM export_chunks").fetchall() == [("exp_g",)]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO log_pruned (run_id, tenant, seqs) VALUES (%s, 'acme', '{[7,8)}')", (run,))
